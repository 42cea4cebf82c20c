"""Dedupe: the same message twice is one message.

- **Exact redelivery**: the same ``(channel, account, external_id)`` — a
  webhook retried, an IMAP message fetched again, a replayed journal entry.
  It is dropped and counted; the journal entry becomes ``duplicate`` (or
  stays ``processed`` when it is the very entry that committed the message,
  which is what makes a replay change nothing).
- **Near duplicate**: the same contact sends the same text again within a
  short window, on any channel (the customer who emails and then WeChats the
  same complaint). It is recorded as a ``duplicate`` timeline entry linked to
  the first message, on the first message's ticket, instead of opening a
  second ticket.
"""

from __future__ import annotations

import hashlib
import re

from routing.text import width_fold

_NOISE = re.compile(r"[\s\W_]+", re.UNICODE)
#: What :data:`_NOISE` removes from ASCII text: everything but letters and digits.
_ASCII_NOISE = bytes(c for c in range(128) if not chr(c).isalnum())


def normalized_text(text: str) -> str:
    """Width- and case-insensitive text with whitespace and punctuation removed."""
    return _NOISE.sub("", width_fold(text).casefold())


def text_hash(text: str | None) -> str | None:
    """The near-duplicate key of a text, or None when there is nothing to compare
    (empty, or too short to mean the same thing twice: "ok", "好的")."""
    if not text:
        return None
    if text.isascii():  # the same key by byte operations: ASCII is NFKC already, and casefolds to lower case
        key = text.lower().encode("ascii").translate(None, _ASCII_NOISE)
        chars = len(key)
    else:
        norm = normalized_text(text)
        key, chars = norm.encode("utf-8"), len(norm)
    if chars < 4:
        return None
    return hashlib.blake2b(key, digest_size=12).hexdigest()


def reused_id(hit_journal_key: str | None, content_sha: str | None) -> bool:
    """The message committed under this id had another body: its journal key
    ends in another digest (email keys are ``mid:<id>#<body digest>``), so
    this is a message of its own that reuses the id, not a redelivery."""
    key = hit_journal_key or ""
    return bool(content_sha) and "#" in key and key.rsplit("#", 1)[1] != content_sha
