"""The journal idempotency key of a raw email, shared by SMTP and IMAP intake.

The key is the Message-ID when the message has one, so the same mail seen
twice — an SMTP retry after a ``451``, an IMAP re-sync after a UIDVALIDITY
change, or one message arriving both by SMTP and IMAP — is one journal
entry. Without a usable Message-ID it is the SHA-256 of the bytes, which
still dedupes byte-identical redeliveries. Only the header block is read:
this runs before the ``250`` reply, the full parse happens later.
"""

from __future__ import annotations

import hashlib
import re

# Folded headers continue on lines starting with a space or tab.
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:(?P<value>.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_MSG_ID_TOKEN = re.compile(rb"<[^<>\s]+>")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _header_block(raw: bytes) -> bytes:
    end = _HEADER_END.search(raw)
    return raw[: end.start()] if end else raw


def message_key(raw: bytes) -> str:
    """``mid:<id@host>`` from the first Message-ID header, else ``sha256:<hex>``."""
    found = _MESSAGE_ID.search(_header_block(raw))
    if found:
        token = _MSG_ID_TOKEN.search(found.group("value"))
        if token:
            return "mid:" + token.group().decode("ascii", "replace")
    return "sha256:" + hashlib.sha256(raw).hexdigest()
