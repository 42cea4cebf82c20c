"""Text folding's shortcuts give what the plain definitions give (oracle
tests on generated text, pure): the near-duplicate key of ASCII text by
byte operations, and the kept NFKC folds of routing.text."""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata

from routing import text
from routing.dedupe import text_hash

_NOISE = re.compile(r"[\s\W_]+", re.UNICODE)
#: ASCII, full-width forms, CJK punctuation, ligatures, combining marks, ß/İ (casefold ≠ lower)
ALPHABET = [chr(c) for c in range(128)] + list("好的订单，。！？：ＡＢｃ１２\u3000\u00e9\u0301ßİﬁ①")


def plain_text_hash(s: str | None) -> str | None:
    """The near-duplicate key as first defined: NFKC, casefold, no noise, blake2b."""
    if not s:
        return None
    norm = _NOISE.sub("", unicodedata.normalize("NFKC", s).casefold())
    if len(norm) < 4:
        return None
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=12).hexdigest()


def _texts(seed: int, n: int):
    rng = random.Random(seed)
    for i in range(n):
        pool = ALPHABET[:128] if i % 2 else ALPHABET
        yield "".join(rng.choice(pool) for _ in range(rng.randint(0, 14)))


def test_text_hash_is_the_plain_key():
    for s in _texts(1, 30_000):
        assert text_hash(s) == plain_text_hash(s), repr(s)
    assert text_hash(None) is None


def test_width_fold_is_nfkc_and_its_memo_stays_bounded():
    for s in _texts(2, 3 * text.MEMO_ENTRIES):
        assert text.width_fold(s) == unicodedata.normalize("NFKC", s), repr(s)
        assert text.width_fold(s) == unicodedata.normalize("NFKC", s), repr(s)  # a second read: from the memo
        assert len(text._memo) <= text.MEMO_ENTRIES
    long = "，" * (text.MEMO_MAX_CHARS + 1)
    assert text.width_fold(long) == "," * len(long) and long not in text._memo


def test_nfkc_swaps_only_characters_whose_decomposition_is_their_swap():
    """The premise of text.nfkc: each swapped character decomposes (NFKD) to
    exactly its one replacement, itself already decomposed."""
    for wide, narrow in text._WIDE.items():
        assert len(narrow) == 1 and unicodedata.normalize("NFKD", wide) == narrow == unicodedata.normalize("NFKD", narrow)


def test_nfkc_is_unicodedata_nfkc():
    # every BMP character alone, after a full-width letter and before a
    # full-width comma (composition across the swapped characters)
    for c in range(0x10000):
        if 0xD800 <= c < 0xE000:
            continue
        for s in (chr(c), f"Ａ{chr(c)}", f"{chr(c)}，好"):
            assert text.nfkc(s) == unicodedata.normalize("NFKC", s), repr(s)
    # generated text: full-width forms next to combining marks, Hangul jamo, ligatures
    pool = ALPHABET + list("\uff21\uff41\uff10\uff5e\u0300\u0308\u0327\u1100\u1161\u11a8가ｶﾞ\u3099㍿ＡＬ")
    rng = random.Random(3)
    for _ in range(30_000):
        s = "".join(rng.choice(pool) for _ in range(rng.randint(0, 12)))
        assert text.nfkc(s) == unicodedata.normalize("NFKC", s), repr(s)


def test_int64_takes_ascii_digits_a_64_bit_integer_holds():
    assert text.int64("0") == 0 and text.int64("42") == 42 and text.int64("9" * 18) == 10**18 - 1
    # "²" and "٣" are digits to str.isdigit(), not numbers the store takes; 19 digits overflow it
    assert [text.int64(t) for t in ("", "²", "٣", "9" * 19, "-1", "1.5", " 7")] == [None] * 7
