"""Text shared by the stages: NFKC (width) and case folding, and numbers written in text (:func:`int64`).

Dedupe's near-duplicate key and the routing rules both compare a message's
text NFKC-normalized (full-width ``ＲＥＦＵＮＤ`` and ``，`` fold to ASCII).
Chinese customer text is rarely already NFKC (its punctuation is
full-width), and normalizing it is the costliest step of either, so
:func:`width_fold` keeps its last results: the rules read the fold that
``lookup()`` made for the text hash a moment before. A memo of a pure
function, bounded in entries and in the length of what it keeps.

What is not in the memo is folded by :func:`nfkc`: the full-width forms
swapped for their ASCII letters first (Chinese text's only non-NFKC
characters, most of the time), then the quick check; only text that still
fails it goes through ``unicodedata.normalize``.
"""

from __future__ import annotations

import re
import unicodedata

#: How many folded texts are kept (more than the messages decided at once).
MEMO_ENTRIES = 256
#: Longer texts are folded each time (the memo stays small whatever comes in).
MEMO_MAX_CHARS = 16 * 1024

_memo: dict[str, str] = {}

#: The full-width forms of ASCII (U+FF01–U+FF5E: ``，？：（Ａ１``) and the
#: ideographic space, each → its NFKC form (one ASCII character).
_WIDE = {chr(c): unicodedata.normalize("NFKC", chr(c)) for c in [*range(0xFF01, 0xFF5F), 0x3000]}
_WIDE_RE = re.compile("[\uff01-\uff5e\u3000]")


def int64(text: str) -> int | None:
    """The number ``text`` spells in ASCII digits, when a 64-bit integer (SQLite's,
    Redis's) holds it; else None. ``str.isdigit()`` alone is not enough: ``"²"`` is
    a digit to it but not to ``int()``, and 19 digits or more overflow the store —
    both were 500s or failed messages, from a path, a header or a payload."""
    return int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None


def _narrow(match: re.Match[str]) -> str:
    return _WIDE[match[0]]


def nfkc(s: str) -> str:
    """``unicodedata.normalize("NFKC", s)``, about 3× cheaper on Chinese text.

    Why it is the same: each swapped character's compatibility decomposition
    is exactly the one ASCII character it is swapped for, so the swapped text
    ``t`` has the same NFKD as ``s``, hence the same NFKC; and when ``t``
    passes the NFKC quick check, ``t`` is its own NFKC. Otherwise (a
    combining mark after a full-width letter, Hangul jamo, ligatures…) the
    plain normalization runs. ``tests/routing/test_text_fast_paths.py``
    compares the two on every BMP character and on generated text."""
    t = _WIDE_RE.sub(_narrow, s)
    return t if unicodedata.is_normalized("NFKC", t) else unicodedata.normalize("NFKC", s)


def width_fold(s: str) -> str:
    """NFKC: full-width → ASCII, compatibility forms unified. The quick check
    first, because most text is already normalized and it is 20× cheaper."""
    if unicodedata.is_normalized("NFKC", s):
        return s
    folded = _memo.get(s)
    if folded is None:
        folded = nfkc(s)
        if len(s) <= MEMO_MAX_CHARS:
            if len(_memo) >= MEMO_ENTRIES:
                _memo.clear()
            _memo[s] = folded
    return folded


def fold(s: str) -> str:
    """The comparison form of text: NFKC, then casefold."""
    return width_fold(s).casefold()
