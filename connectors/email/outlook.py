"""Outlook ``.msg`` files (OLE2 compound documents) that arrive instead of MIME.

Some mail stores and export tools hand over the ``.msg`` blob itself. It is
still a mail, so it is not refused: its transport headers (the
``PR_TRANSPORT_MESSAGE_HEADERS`` property, stored as UTF-16LE text) are found
by their first header name and read up to the property's terminating NUL,
which gives sender, subject and ids without a full compound-file reader. The
blob itself is kept as an attachment.
"""

from __future__ import annotations

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_STARTS = tuple(name.encode("utf-16-le") for name in ("Received:", "Return-Path:", "Delivered-To:"))
_MAX_HEADER_CHARS = 256 * 1024


def is_msg(raw: bytes) -> bool:
    return raw.startswith(OLE2_MAGIC)


def transport_headers(raw: bytes) -> bytes | None:
    """The transport header block as bytes ending in a blank line, or None when absent."""
    found = [i for i in (raw.find(start) for start in _STARTS) if i >= 0 and i % 2 == 0]
    if not found:
        return None
    start = min(found)
    end = start
    limit = min(len(raw) - 1, start + 2 * _MAX_HEADER_CHARS)
    while end < limit and raw[end : end + 2] != b"\x00\x00":
        end += 2
    text = raw[start:end].decode("utf-16-le", "replace")
    if "\n" not in text:
        return None
    return text.rstrip().encode("utf-8", "surrogateescape") + b"\r\n\r\n"
