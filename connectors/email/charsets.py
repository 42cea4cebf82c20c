"""Charset handling for mail: declared names → Python codecs, and detection.

Mail in the wild lies about its charset. The rules here follow what Chinese,
Japanese and Western mail actually needs:

- ``GB2312`` (and ``iso-gb2312``, ``x-gbk``, ``gb_2312-80``, ``cp936`` …) is
  decoded as GB18030, its superset: senders declare GB2312 and write GBK
  characters (祐, 內) all the time.
- ``Big5`` is decoded as Big5-HKSCS (then cp950), ``Shift_JIS`` as cp932,
  ``ks_c_5601-1987``/``euc-kr`` as cp949, ``unicode-1-1-utf-7`` as UTF-7.
- ``iso-8859-1``/``us-ascii`` are the usual lies of misconfigured mailers:
  bytes that are valid UTF-8 win over them.
- UTF-16/32 bytes with a code unit cut off (an odd count) are decoded
  without the stray bytes, not handed to detection; UTF-16 of ASCII text
  under a missing, unknown or wrong declaration is told by its NULs.
- ISO-2022-JP with Windows' extensions (NEC's ①, IBM kanji) is read as
  Windows and browsers read it (cp932 for the pairs plain JIS lacks).
- A Japanese declaration the bytes fail (8-bit bytes labelled ISO-2022-JP)
  tries UTF-8, then the other Japanese encodings (Shift_JIS/cp932, EUC-JP)
  where their text is plausible (:func:`plausibility`).
- A missing, unknown (``NONE``, ``unknown-8bit``) or wrong declaration falls
  back to detection: UTF-8, then charset-normalizer for text with enough
  8-bit bytes to judge, the most plausible reading (:func:`plausibility`)
  for longer text with only a few, then a cheap trial order GB18030 →
  Big5-HKSCS → cp1252 → Latin-1.

Everything is pure; decoding never raises, and says which codec it used so
the caller can record a defect when the declaration was not honoured.
"""

from __future__ import annotations

import codecs
import re
from functools import lru_cache

#: Declared charset name (lower-cased) → codecs to try, in order.
_ALIASES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            "gb2312", "gbk", "x-gbk", "iso-gb2312", "gb_2312-80", "gb_2312", "gb2312-80", "csgb2312",
            "cn-gb", "euc-cn", "x-euc-cn", "chinese", "cp936", "ms936", "windows-936", "gb18030",
            "x-gb18030", "gb",
        ),
        ("gb18030",),
    ),
    **dict.fromkeys(("big5", "big-5", "cn-big5", "x-x-big5", "csbig5", "big5-hkscs", "big5hkscs"),
                    ("big5hkscs", "cp950")),
    **dict.fromkeys(("cp950", "ms950", "x-windows-950", "windows-950"), ("cp950", "big5hkscs")),
    **dict.fromkeys(("shift_jis", "shift-jis", "sjis", "x-sjis", "ms_kanji", "csshiftjis", "windows-31j",
                     "cp932", "ms932"), ("cp932", "shift_jis_2004")),
    **dict.fromkeys(("iso-2022-jp", "csiso2022jp", "iso-2022-jp-1", "iso-2022-jp-2", "iso-2022-jp-3"),
                    ("iso2022_jp", "iso2022_jp_2004", "iso2022_jp_ext", "iso2022_jp_2")),
    **dict.fromkeys(("euc-jp", "x-euc-jp", "cseucpkdfmtjapanese"), ("euc_jp", "euc_jis_2004")),
    **dict.fromkeys(("ks_c_5601-1987", "ks_c_5601", "euc-kr", "x-euc-kr", "korean", "cp949", "uhc",
                     "ks_c_5601-1989", "ksc5601"), ("cp949",)),
    **dict.fromkeys(("utf-7", "utf7", "unicode-1-1-utf-7", "x-unicode-1-1-utf-7", "x-unicode-2-0-utf-7",
                     "csunicode11utf7"), ("utf-7",)),
    **dict.fromkeys(("utf-8", "utf8", "x-utf-8", "unicode-1-1-utf-8", "unicode-2-0-utf-8"), ("utf-8",)),
    # Microsoft's names of UTF-16 (.NET Encoding.WebName / Outlook): "unicode" is little-endian
    **dict.fromkeys(("unicodebig", "unicodefffe", "unicode-big", "unicode-1-1-big"), ("utf-16-be",)),
    **dict.fromkeys(("unicode", "unicodelittle", "unicode-little", "unicodefeff"), ("utf-16-le",)),
    # Single-byte "catch-alls": windows-1252 is what iso-8859-1 senders write.
    **dict.fromkeys(("iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "iso_8859-1", "cp819",
                     "windows-1252", "cp1252", "x-cp1252"), ("cp1252", "latin-1")),
    **dict.fromkeys(("us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "us", "ibm367", "cp367", "7bit",
                     "8bit"), ("ascii",)),
}
_GLUED_CHARSET = re.compile(
    r"windows-125\d|iso-8859-\d{1,2}|utf-8|gb2312|gbk|gb18030|big5|shift_jis|euc-(?:jp|kr|cn)|koi8-[ru]|iso-2022-jp")
#: Declarations that mean "nobody knows": straight to detection.
_UNKNOWN = frozenset({"", "none", "unknown", "unknown-8bit", "x-unknown", "default", "x-user-defined", "charset"})
#: Declarations so permissive that any byte string decodes: valid UTF-8 wins over them.
_PERMISSIVE = frozenset({"ascii", "cp1252", "iso8859-1", "iso8859-15", "iso8859-2", "cp1250", "cp1251"})
#: Trial order when nothing is declared and the text is too short to judge.
_TRIAL = ("gb18030", "big5hkscs", "cp932", "cp1252")
_DETECT_MIN_BYTES = 48
#: What charset-normalizer may answer: the charsets mail is really written in.
_PLAUSIBLE = (
    "utf_8", "gb18030", "big5hkscs", "cp950", "cp932", "euc_jp", "iso2022_jp", "cp949", "cp1252", "cp1250",
    "cp1251", "koi8_r", "iso8859_2", "iso8859_5", "iso8859_7", "cp1253", "cp1254", "cp1255", "cp1256", "cp874",
)
#: A declaration's language's other encodings, tried (after UTF-8) when its own
#: codecs fail and before detection guesses across languages: Japanese mailers
#: label Shift_JIS or EUC-JP bytes "ISO-2022-JP", whose text is 7-bit.
_SIBLINGS = {"iso2022_jp": ("cp932", "euc_jp"), "euc_jp": ("cp932",), "cp932": ("euc_jp",)}
#: Codecs whose text is pure 7-bit ASCII bytes.
_SEVEN_BIT = ("iso2022", "utf-7", "utf_7", "hz")
_CJK = re.compile(r"[\u3000-\u30ff\u3400-\u9fff\uac00-\ud7af\uff00-\uffef]")
_PRIVATE_USE = re.compile(r"[\ue000-\uf8ff]")


@lru_cache(maxsize=256)
def codecs_for(declared: str | None) -> tuple[str, ...]:
    """The codecs to try for a declared charset name; () when unknown or unusable."""
    if declared is None:
        return ()
    name = declared.strip().strip("\"'").lower()
    name = name.split("*", 1)[0]  # RFC 2231 language suffix: utf-8*en
    if name in _UNKNOWN:
        return ()
    if name in _ALIASES:
        return _ALIASES[name]
    try:
        info = codecs.lookup(name)
    except (LookupError, UnicodeError, ValueError):  # 8-bit garbage or NUL in the name
        # Microsoft's and Apple's spellings Python lacks: windows-874, cp-850, x-mac-roman
        m = re.fullmatch(r"(?:windows|cp|ibm|x-cp)[-_]?(\d{3,5})|x-mac-([a-z]+)", name)
        if not m:
            # a known name with junk glued on, from a broken HTML meta copied into the header
            # ("windows-1252http-equivContent-Type")
            glued = _GLUED_CHARSET.match(name)
            return codecs_for(glued.group(0)) if glued and glued.group(0) != name else ()
        try:
            info = codecs.lookup(f"cp{m.group(1)}" if m.group(1) else f"mac_{m.group(2)}")
        except (LookupError, UnicodeError, ValueError):
            return ()
    if not getattr(info, "_is_text_encoding", True):  # base64, zlib, rot13 …
        return ()
    return (info.name,)


def _is_permissive(codec: str) -> bool:
    return codecs.lookup(codec).name in _PERMISSIVE


def _try(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None


def _latin1_for_bad_bytes(err: UnicodeError) -> tuple[str, int]:
    assert isinstance(err, UnicodeDecodeError)
    return bytes(err.object[err.start : err.end]).decode("latin-1"), err.end


codecs.register_error("omnigate-email-latin1", _latin1_for_bad_bytes)


def _mostly_utf8(data: bytes) -> str | None:
    """UTF-8 text with a few stray Latin-1 bytes (mail edited by two programs), or None.

    Taken only when valid multi-byte sequences outnumber the stray bytes and
    the stray bytes are few: otherwise the text is in another charset.
    """
    replaced = data.decode("utf-8", "replace")
    bad = replaced.count("\ufffd")
    multibyte = sum(1 for c in replaced if c > "\x7f") - bad
    if bad > max(4, multibyte // 50) or multibyte <= bad:
        return None
    return data.decode("utf-8", "omnigate-email-latin1")


def _normalizer(data: bytes) -> tuple[str, str] | None:
    from charset_normalizer import from_bytes  # imported lazily: only wrong/undeclared bodies need it

    best = from_bytes(data, cp_isolation=list(_PLAUSIBLE)).best()
    return (str(best), best.encoding) if best is not None else None


def detect(data: bytes, hints: tuple[str, ...] = ()) -> tuple[str, str]:
    """Decode undeclared bytes: ``(text, codec)``; never raises.

    ``hints`` (codecs of a sibling declaration, e.g. the body charset for raw
    8-bit header bytes) are tried right after UTF-8.
    """
    if data.isascii():
        if b"\x1b$" in data:  # ISO-2022-JP is 7-bit: its escapes give it away
            text = _try(data, "iso2022_jp")
            if text is not None:
                return text, "iso2022_jp"
            text = _iso2022jp_ms(data)
            if text is not None:
                return text, "iso2022_jp_ms"
        wide = _utf16_of_ascii(data) if b"\x00" in data else None
        if wide is not None:
            return wide
        return data.decode("ascii"), "ascii"
    for codec in ("utf-8", *hints):
        text = _try(data, codec)
        if text is not None:
            return text, codec
    text = _mostly_utf8(data)
    if text is not None:
        return text, "utf-8+latin-1"
    if len(data) >= _DETECT_MIN_BYTES and _non_ascii(data) >= _DETECT_MIN_BYTES:
        found = _normalizer(data)
        if found is not None:
            return found
    if len(data) >= _DETECT_MIN_BYTES:
        # long text with a few 8-bit bytes (one undeclared Chinese line in a
        # mostly-ASCII body): too little for the normalizer, whose answer was
        # a Central-European code page; the most plausible reading instead
        best = _most_plausible(data, hints)
        if best is not None:
            return best
    for codec in _TRIAL:
        text = _try(data, codec)
        if text is not None:
            return text, codec
    return data.decode("latin-1"), "latin-1"


def _utf16_of_ascii(data: bytes) -> tuple[str, str] | None:
    """Undeclared UTF-16 of ASCII text, told by its NULs: every high byte NUL
    and no low byte NUL (``\\x00a\\x00b`` is big-endian); None otherwise. A
    last odd byte (a line break added after the text) is left out."""
    even = data[: len(data) - len(data) % 2]
    if len(even) < 4:
        return None
    high, low = even[0::2], even[1::2]
    if high.count(0) == len(high) and 0 not in low:
        return even.decode("utf-16-be"), "utf-16-be"
    if low.count(0) == len(low) and 0 not in high:
        return even.decode("utf-16-le"), "utf-16-le"
    return None


_JIS_ESCAPE = re.compile(rb"(\x1b(?:\$[@B]|\([BJI]))")


def _iso2022jp_ms(data: bytes) -> str | None:
    """ISO-2022-JP as Windows writes it (CP50220/CP50221, WHATWG's decoder): JIS
    X 0208 with NEC's row 13 (①, ㈱, №) and the IBM extensions of rows 89-92,
    which Python's ISO-2022-JP codecs refuse. A double-byte pair plain
    ISO-2022-JP lacks is read through its Shift_JIS form by cp932; one cp932
    lacks too (a carrier's pictogram) is U+FFFD. None when the bytes are no
    such ISO-2022-JP (another escape, a double-byte run of odd length or with
    bytes outside 0x21-0x7E)."""
    out: list[str] = []
    chunks = _JIS_ESCAPE.split(data)
    if any(b"\x1b" in chunk for chunk in chunks[::2]):
        return None
    out.append(chunks[0].decode("ascii"))
    for escape, chunk in zip(chunks[1::2], chunks[2::2]):
        if escape[1:2] != b"$":
            if escape == b"\x1b(I":  # JIS X 0201 katakana: the 0xA1-0xDF bytes of cp932
                if any(not 0x21 <= b <= 0x5F for b in chunk):
                    return None
                out.append(bytes(b | 0x80 for b in chunk).decode("cp932"))
            else:
                out.append(chunk.decode("ascii"))
            continue
        if len(chunk) % 2 or any(not 0x21 <= b <= 0x7E for b in chunk):
            return None
        for j1, j2 in zip(chunk[::2], chunk[1::2]):
            plain = _try(b"\x1b$B" + bytes((j1, j2)), "iso2022_jp")  # 〜 stays U+301C, not cp932's ～
            if plain is not None:
                out.append(plain)
                continue
            s1 = ((j1 - 0x21) >> 1) + 0x81
            s1 += 0x40 if s1 > 0x9F else 0
            s2 = j2 + (0x1F + (j2 >= 0x60) if j1 % 2 else 0x7E)
            out.append(bytes((s1, s2)).decode("cp932", "replace")[:1])
    return "".join(out)


_NON_ASCII_RUN = re.compile(rb"[\x80-\xff]+")


def _non_ascii(data: bytes) -> int:
    return sum(len(m) for m in _NON_ASCII_RUN.findall(data))


def decode(data: bytes, declared: str | None, hints: tuple[str, ...] = (), *,
           header: bool = False) -> tuple[str, str, bool]:
    """Decode bytes declared as ``declared``: ``(text, codec, honoured)``.

    ``honoured`` is False when the declaration was missing, unknown or wrong
    and detection chose the codec (the caller records a defect then).
    ``header``: the bytes are a header's few words (an encoded word, an RFC
    2231 file name), too short for charset-normalizer; detection then picks
    the most plausible reading (:func:`detect_header`) instead of the first
    codec of a fixed trial order that decodes them, which read a us-ascii
    file name's one Latin-1 letter (``W%F6lbung``) as a GB18030 pair.
    """
    candidates = codecs_for(declared)
    if data.isascii():
        # 7-bit charsets (ISO-2022-JP, UTF-7) need their codec, and so does UTF-16 of
        # ASCII text (every other byte NUL); plain ASCII does not.
        for codec in candidates:
            if codec.startswith(_SEVEN_BIT) or (codec.startswith(("utf-16", "utf-32")) and b"\x00" in data):
                text = _try(data, codec)
                if text is not None:
                    return text, codec, True
        text, codec = detect(data)
        return text, codec, not codec.startswith("utf-16")  # UTF-16 found by its NULs: not what was declared
    if candidates and _is_permissive(candidates[0]):
        # Valid multi-byte UTF-8 is never an accident in Latin text.
        text = _try(data, "utf-8")
        if text is not None:
            return text, "utf-8", False
    for codec in candidates:
        text = _try(data, codec)
        if text is not None:
            return text, codec, True
    wide = next((c for c in candidates if c.startswith(("utf-16", "utf-32"))), None)
    if wide is not None and b"\x00" in data:
        # UTF-16/32 text (its NULs give it away) with a code unit cut off (an encoded
        # word split or truncated by bytes): what decodes, without the stray bytes;
        # detection would read it as single bytes, NULs and all
        return data.decode(wide, "ignore"), wide, False
    siblings = _SIBLINGS.get(candidates[0], ()) if candidates else ()
    for codec in ("utf-8", *siblings) if siblings else ():
        text = _try(data, codec)
        # plausible only: one Latin-1 byte inside a Latin word also decodes as a kanji pair
        if text is not None and (codec == "utf-8" or plausibility(text, codec) > 0):
            return text, codec, False
    text, codec = detect_header(data, hints) if header else detect(data, hints)
    if codec == "utf-8" and candidates:
        # Declared CJK, written as UTF-8 of Latin-1 code points: the double-encoded mojibake.
        fixed = recover_double_encoding(text, candidates, declared=True)
        if fixed is not None:
            return fixed, f"utf-8>latin-1>{candidates[0]}", False
    return text, codec, False


def recover_double_encoding(text: str, hints: tuple[str, ...], declared: bool = False) -> str | None:
    """Undo UTF-8 → Latin-1 → CJK mojibake: ``大補`` stored as UTF-8 of its Big5 bytes read as Latin-1.

    Returns the recovered text, or None when ``text`` does not look like that:
    all its non-ASCII characters must be U+0080–U+00FF, dense (CJK mojibake
    turns every character into two such code points) or containing C1
    controls (which real text never has) — or ``declared``: the hints come
    from a CJK declaration the bytes failed — and the Latin-1 bytes must
    decode strictly into plausible text (:func:`plausibility`) with CJK
    characters.
    """
    non_ascii = [c for c in text if c > "\x7f"]
    if len(non_ascii) < 4 or max(non_ascii) > "\xff":
        return None
    has_c1 = any(c < "\xa0" for c in non_ascii)
    dense = len(non_ascii) * 10 >= 3 * len(text.replace(" ", ""))
    if not (has_c1 or dense or declared):
        return None
    raw = text.encode("latin-1")
    for codec in (*hints, "utf-8", "gb18030", "big5hkscs"):
        fixed = _try(raw, codec)
        # plausible only: accented Latin letters in a row ("éèàöüä") also decode as
        # GB18030 pairs, rare ideographs and private-use characters ("殍圉\ue3ef")
        if fixed is not None and _CJK.search(fixed) and not _PRIVATE_USE.search(fixed) \
                and plausibility(fixed, codec) > 0:
            return fixed
    return None


# ---------------------------------------------------------------- raw 8-bit headers

#: Tried after the message's own declarations for raw 8-bit header bytes.
_HEADER_TRIAL = ("gb18030", "big5hkscs", "cp932", "cp949", "cp1252")
_ASCII_LOWER = frozenset("abcdefghijklmnopqrstuvwxyz")
_ASCII_LETTER = _ASCII_LOWER | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_JAPANESE = ("cp932", "shift_jis", "euc_jp", "iso2022_jp")
_KOREAN = ("cp949", "euc_kr")


#: Letters windows-1252 puts at 0x80–0x9F (Š, š, Ž, ž, Œ, œ, Ÿ).
_CP1252_LETTERS = frozenset("\u0160\u0161\u017d\u017e\u0152\u0153\u0178")


def _latin_letter(ch: str) -> bool:
    return (0xC0 <= ord(ch) <= 0xFF and ch not in "\xd7\xf7") or ch in _CP1252_LETTERS


def _inside_latin_word(text: str, n: int) -> bool:
    """``text[n]`` stands alone between ASCII letters, the second lower-case
    ("Forma玢o", "W鰈bung"): one Latin-1 byte and the next letter read as a
    double-byte character."""
    return 0 < n < len(text) - 1 and text[n - 1] in _ASCII_LETTER and text[n + 1] in _ASCII_LOWER


@lru_cache(maxsize=8192)
def _hanzi_weight(ch: str) -> int:
    """2 for a level-1 (common) character of GB2312 or Big5, 1 for level 2,
    0 for a character only the big extensions (GBK, HKSCS) have."""
    best = 0
    for codec, level1, level2 in (("gb2312", (0xB0, 0xD7), (0xD8, 0xF7)), ("big5", (0xA4, 0xC6), (0xC9, 0xF9))):
        try:
            lead = ch.encode(codec)[0]
        except UnicodeEncodeError:
            continue
        if level1[0] <= lead <= level1[1]:
            return 2
        if level2[0] <= lead <= level2[1]:
            best = 1
    return best


def plausibility(text: str, codec: str) -> int:
    """How much ``text`` looks like what a person wrote, decoded as ``codec``.

    Common ideographs, CJK punctuation, kana in a Japanese decoding, Hangul
    in a Korean one, and an accented letter between ASCII letters in a
    single-byte decoding count for it; symbols, box drawing, Greek or
    Cyrillic inside CJK, private-use and C1 characters, runs of Latin-1
    letters (the look of CJK bytes read as Latin-1), and one ideograph or
    Hangul syllable alone inside a Latin word (a Latin-1 byte read as a
    double-byte character) count against it."""
    name = codecs.lookup(codec).name
    single = _is_permissive(codec) or name.startswith(("cp125", "iso8859", "latin"))
    score = 0
    for n, ch in enumerate(text):
        o = ord(ch)
        if o < 0x80:
            continue
        if 0x4E00 <= o <= 0x9FFF:
            score += _hanzi_weight(ch)
            if _inside_latin_word(text, n):
                score -= 3  # one ideograph inside a Latin word: Latin-1 bytes read as CJK
        elif 0x3000 <= o <= 0x303F or 0xFF01 <= o <= 0xFF5E or 0x2010 <= o <= 0x201F:
            score += 1
        elif 0x3040 <= o <= 0x30FF:
            score += 1 if name in _JAPANESE else -1
        elif 0xAC00 <= o <= 0xD7AF:
            score += -3 if _inside_latin_word(text, n) else 1 if name in _KOREAN else -1
        elif single and _latin_letter(ch):
            # an accented letter inside a word, alone or as a pair ("Niño",
            # "Formação", "Grüße"), is Latin; longer runs are CJK bytes read as Latin-1
            start = n
            while start and _latin_letter(text[start - 1]):
                start -= 1
            end = n
            while end + 1 < len(text) and _latin_letter(text[end + 1]):
                end += 1
            before = text[start - 1] if start else " "
            after = text[end + 1] if end + 1 < len(text) else " "
            inside_word = before in _ASCII_LETTER or after in _ASCII_LETTER
            score += 1 if end - start < 2 and before < "\x80" and after < "\x80" and inside_word else -1
        else:
            score -= 2
    return score


def detect_header(data: bytes, declared: tuple[str, ...] = ()) -> tuple[str, str]:
    """Decode raw 8-bit header bytes: ``(text, codec)``; never raises.

    Valid UTF-8 wins outright. Otherwise every codec the message declares
    anywhere (``declared``, in order) and then GB18030, Big5-HKSCS,
    Shift_JIS, EUC-KR and Windows-1252 are tried strictly, and the most
    plausible text wins (the earliest on a tie): a Latin-1 declaration
    elsewhere in the message — a report wrapper, another part — no longer
    turns a GB2312 or Big5 subject into mojibake just because any byte
    decodes as Latin-1, and an undeclared Latin-1 subject ("Formação",
    "Grüße") is no longer read as CJK: one ideograph inside a Latin word
    counts against a CJK reading, an accented letter or pair inside a word
    for a Latin one. A mail that declares a Japanese charset first has its
    Japanese readings tried before that contest (:func:`_declared_japanese`)."""
    if data.isascii():
        return detect(data)
    text = _try(data, "utf-8")
    if text is not None:
        return text, "utf-8"
    return _declared_japanese(data, declared) or _most_plausible(data, declared) or detect(data, declared)


_KANA = re.compile(r"[\u3041-\u30fa]")


def _declared_japanese(data: bytes, declared: tuple[str, ...]) -> tuple[str, str] | None:
    """A mail that declares a Japanese charset first: the first of its codec
    and that codec's siblings (raw Shift_JIS or EUC-JP under an ISO-2022-JP
    mail) that reads the bytes as plausible text with kana in it; else None.
    Kana weigh less than ideographs in :func:`plausibility`, so a kana-only
    subject (テスト) lost to its GB18030 or Big5 reading (嘆嘇嘊, 氾旦玄)."""
    first = declared[0] if declared else ""
    if first not in _SIBLINGS:
        return None
    for codec in (first, *_SIBLINGS[first]):
        text = _try(data, codec)
        if text is not None and _KANA.search(text) and plausibility(text, codec) > 0:
            return text, codec
    return None


def _most_plausible(data: bytes, declared: tuple[str, ...]) -> tuple[str, str] | None:
    """The declared codecs and the header trial's, strictly: the reading with
    the best :func:`plausibility` above 0 (the earliest on a tie), or None."""
    best: tuple[int, str, str] | None = None
    for codec in dict.fromkeys((*declared, *_HEADER_TRIAL)):
        text = _try(data, codec)
        if text is None:
            continue
        score = plausibility(text, codec)
        if best is None or score > best[0]:
            best = (score, text, codec)
    if best is not None and best[0] > 0:
        return best[1], best[2]
    return None
