"""The journal idempotency key of a raw email, shared by SMTP and IMAP intake.

The key is the Message-ID when the message has one, so the same mail seen
twice — an SMTP retry after a ``451``, an IMAP re-sync after a UIDVALIDITY
change, or one message arriving both by SMTP and IMAP — is one journal
entry. Without a usable Message-ID it is the SHA-256 of the bytes, which
still dedupes byte-identical redeliveries.

A Message-ID is chosen by the sender, so two different mails can carry the
same one (a broken mailer, or someone replaying a known id): the key ends in
a digest of the body (``mid:<id>#<16 hex>``, line endings and trailing
blanks normalized, so the SMTP and the IMAP copy of one mail still agree),
and a different body is a different entry, never a silent redelivery. The
parser puts the same digest in ``meta["content_sha"]`` so the pipeline can
flag the reuse.
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


_TRAILING_WS = re.compile(rb"[ \t\r]+$", re.MULTILINE)


def content_digest(raw: bytes) -> str:
    """16 hex digits of the body's SHA-256, transport differences normalized."""
    end = _HEADER_END.search(raw)
    body = raw[end.end():] if end else b""
    body = _TRAILING_WS.sub(b"", body.replace(b"\r\n", b"\n")).rstrip(b"\n")
    return hashlib.sha256(body).hexdigest()[:16]


def message_key(raw: bytes) -> str:
    """``mid:<id@host>#<body digest>`` from the first Message-ID header, else ``sha256:<hex>``."""
    found = _MESSAGE_ID.search(_header_block(raw))
    if found:
        token = _MSG_ID_TOKEN.search(found.group("value"))
        if token:
            return "mid:" + token.group().decode("ascii", "replace") + "#" + content_digest(raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()
