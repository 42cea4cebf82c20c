"""Text folding shared by the stages: NFKC (width) and case.

Dedupe's near-duplicate key and the routing rules both compare a message's
text NFKC-normalized (full-width ``ＲＥＦＵＮＤ`` and ``，`` fold to ASCII).
Chinese customer text is rarely already NFKC (its punctuation is
full-width), and normalizing it is the costliest step of either, so
:func:`width_fold` keeps its last results: the rules read the fold that
``lookup()`` made for the text hash a moment before. A memo of a pure
function, bounded in entries and in the length of what it keeps.
"""

from __future__ import annotations

import unicodedata

#: How many folded texts are kept (more than the messages decided at once).
MEMO_ENTRIES = 256
#: Longer texts are folded each time (the memo stays small whatever comes in).
MEMO_MAX_CHARS = 16 * 1024

_memo: dict[str, str] = {}


def width_fold(s: str) -> str:
    """NFKC: full-width → ASCII, compatibility forms unified. The quick check
    first, because most text is already normalized and it is 20× cheaper."""
    if unicodedata.is_normalized("NFKC", s):
        return s
    folded = _memo.get(s)
    if folded is None:
        folded = unicodedata.normalize("NFKC", s)
        if len(s) <= MEMO_MAX_CHARS:
            if len(_memo) >= MEMO_ENTRIES:
                _memo.clear()
            _memo[s] = folded
    return folded


def fold(s: str) -> str:
    """The comparison form of text: NFKC, then casefold."""
    return width_fold(s).casefold()
