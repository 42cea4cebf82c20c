"""Attachments of a MIME part: names in any encoding, content hashes, TNEF.

A file name can come as an RFC 2231 parameter (``filename*=utf-8''…``), an
RFC 2047 encoded word inside the quotes (Outlook, Foxmail), or raw GBK/Big5
bytes; all three are decoded here. Outlook's ``winmail.dat``
(application/ms-tnef) is opened with tnefparse and replaced by the files it
carries; when it cannot be read it stays as it is, with a defect.
"""

from __future__ import annotations

import hashlib
import mimetypes
from email.message import Message

from connectors.email import headers
from routing.model import Attachment

_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


def raw_header(part: Message, name: str) -> str | None:
    """A part's header value as stored: raw 8-bit bytes still surrogate-escaped."""
    return next((str(v) for k, v in part.raw_items() if k.lower() == name), None)


def filename(part: Message, hints: tuple[str, ...], defects: list[str]) -> str | None:
    """The part's file name (Content-Disposition ``filename``, else Content-Type ``name``)."""
    return headers.param(raw_header(part, "content-disposition"), "filename", hints, defects) or headers.param(
        raw_header(part, "content-type"), "name", hints, defects
    )


def make(
    data: bytes, name: str | None, content_type: str, *, inline: bool = False, content_id: str | None = None
) -> Attachment:
    return Attachment(
        name=name,
        content_type=content_type,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        inline=inline,
        content_id=content_id,
        data=data,
    )


def is_tnef(content_type: str, name: str | None) -> bool:
    return content_type in _TNEF_TYPES or (name or "").lower() == "winmail.dat"


def expand_tnef(data: bytes, defects: list[str]) -> list[Attachment] | None:
    """The files inside a TNEF blob, or None when it cannot be read (or holds none)."""
    from tnefparse import TNEF  # only Outlook mail needs it

    try:
        tnef = TNEF(data, do_checksum=False)
    except Exception:  # noqa: BLE001 - tnefparse raises anything on garbage; the blob is kept instead
        defects.append("TnefUnreadable")
        return None
    out = []
    for item in tnef.attachments:
        try:
            name = item.long_filename()
        except (UnicodeDecodeError, AttributeError):
            name = None
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        name = (name or "").strip("\x00 ") or None
        guessed = mimetypes.guess_type(name or "")[0] or "application/octet-stream"
        out.append(make(item.data or b"", name, guessed))
    return out or None
