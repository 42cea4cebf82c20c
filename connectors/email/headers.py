"""Header values → text, addresses, message ids and dates, tolerantly.

The stdlib (compat32 policy) hands header values over as ``str`` in which
raw 8-bit bytes are surrogate-escaped; this module does the decoding itself:

- RFC 2047 encoded words, including the broken ones real mail carries:
  spaces inside the encoded text, missing base64 padding, unknown charset
  names (``=?NONE?B?…?=``), multi-byte characters split across two words
  (adjacent words of one charset are joined as bytes before decoding);
- raw 8-bit header bytes with no encoded word at all (GBK/Big5 mailers),
  decoded per header by plausibility over the charsets the message declares
  anywhere and the CJK ones (``charsets.detect_header``), and
  UTF-8 → Latin-1 → Big5 double encoding undone;
- addresses are split on the *undecoded* value, so a decoded display name
  holding a comma or ``<`` cannot break the split.

What had to be guessed is appended to the caller's ``defects`` list.
"""

from __future__ import annotations

import binascii
import re
from urllib.parse import unquote_to_bytes
from datetime import datetime, timezone
from email.utils import getaddresses, parsedate_to_datetime

from connectors.email import charsets

_ENCODED_WORD = re.compile(r"=\?([^?\s]+?)\?([bBqQ])\?(.*?)\?=", re.S)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_SPACES = re.compile(r"\s+")
#: C0 controls and DEL, which no header text means (a NUL a mailer encoded at a subject's end).
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_NOT_B64 = re.compile(r"[^A-Za-z0-9+/]")
_MSG_ID = re.compile(r"<([^<>]*)>")
#: One MIME parameter: name, RFC 2231 section number and "*", quoted or bare value.
_PARAM = re.compile(r';\s*([^\s=;*"]+)(?:\*(\d+))?(\*)?\s*=\s*("(?:\\.|[^"\\])*"?|[^;]*)', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)")
#: The two shapes nearly every From/To has: `Name <addr>` / `"Name" <addr>`, and a bare `addr`.
_ONE_ANGLE_ADDR = re.compile(r'\s*(?:"([^"\\]*)"|([^"<>]*?))\s*<([^<>\s]*)>\s*')
_ONE_BARE_ADDR = re.compile(r"\s*([^\s<>\"]+@[^\s<>\"]+)\s*")


def _word_bytes(encoding: str, payload: str) -> bytes:
    raw = payload.encode("ascii", "surrogateescape")
    if encoding in "qQ":
        return binascii.a2b_qp(raw, header=True)
    b64 = _NOT_B64.sub("", payload)
    if len(b64) % 4 == 1:  # a stray character: drop it rather than lose the word
        b64 = b64[:-1]
    return binascii.a2b_base64(b64 + "=" * (-len(b64) % 4))


def decode_raw(text: str, hints: tuple[str, ...], defects: list[str]) -> str:
    """Text outside encoded words: surrogate-escaped 8-bit bytes decoded by
    detection, and raw ISO-2022-JP (7-bit, told by its escape sequences)."""
    if text.isascii():
        if "\x1b" not in text:
            return text
        decoded, codec = charsets.detect(text.encode("ascii"))
        if codec != "ascii":
            defects.append(f"RawNonAsciiHeader:{codec}")
        return decoded
    data = text.encode("ascii", "surrogateescape")
    decoded, codec = charsets.detect_header(data, hints)
    if codec == "utf-8":
        fixed = charsets.recover_double_encoding(decoded, hints)
        if fixed is not None:
            defects.append("DoubleEncodedHeader")
            return fixed
        return decoded
    defects.append(f"RawNonAsciiHeader:{codec}")
    return decoded


def _decode_word(charset: str, data: bytes, hints: tuple[str, ...], defects: list[str]) -> str:
    if not charsets.codecs_for(charset):
        printable = charset.encode("utf-8", "surrogateescape").decode("ascii", "replace")
        defects.append(f"UnknownEncodedWordCharset:{printable}")
    text, _codec, _honoured = charsets.decode(data, charset, hints, header=True)
    return text


def decode_header(value: str | None, hints: tuple[str, ...], defects: list[str]) -> str:
    """A header value as one line of text (folding and runs of spaces collapsed)."""
    if not value:
        return ""
    value = _FOLD.sub("", value)
    if "=?" not in value:
        return _SPACES.sub(" ", _CONTROLS.sub("", decode_raw(value, hints, defects))).strip()
    out: list[str] = []
    # adjacent encoded words not yet decoded: a charset and its words' bytes
    # (joined once at the flush: appending bytes to bytes was quadratic in a
    # header of thousands of words)
    words: list[tuple[str, list[bytes]]] = []

    def flush() -> None:
        out.extend(_decode_word(cs, b"".join(chunks), hints, defects) for cs, chunks in words)
        words.clear()

    pos = 0
    for m in _ENCODED_WORD.finditer(value):
        literal = value[pos : m.start()]
        if literal and not (words and literal.isspace()):  # space between encoded words is not text
            flush()
            out.append(decode_raw(literal, hints, defects))
        charset, encoding, payload = m.groups()
        charset = charset.split("*", 1)[0].lower()
        try:
            data = _word_bytes(encoding, payload)
        except binascii.Error:
            defects.append("InvalidEncodedWord")
            data = m.group(0).encode("ascii", "surrogateescape")
        if words and words[-1][0] == charset:
            words[-1][1].append(data)
        else:
            words.append((charset, [data]))
        pos = m.end()
    flush()
    out.append(decode_raw(value[pos:], hints, defects))
    return _SPACES.sub(" ", _CONTROLS.sub("", "".join(out))).strip()


def param(value: str | None, wanted: str, hints: tuple[str, ...], defects: list[str]) -> str | None:
    """A MIME parameter (``filename``, ``name``) of a raw header value, decoded.

    Read from the raw value rather than through ``Message.get_param``, which
    turns raw 8-bit bytes into U+FFFD. Handles RFC 2231 (``filename*=``,
    ``filename*0*=`` continuations), encoded words inside the quotes and
    raw GBK/Big5 bytes.
    """
    if not value or wanted not in value.lower():
        return None
    plain: dict[int, str] = {}
    extended: dict[int, tuple[bool, str]] = {}
    for m in _PARAM.finditer(_FOLD.sub("", value)):
        name, section, star, raw = m.groups()
        if name.lower() != wanted:
            continue
        raw = raw.strip()
        if raw.startswith('"'):
            raw = _QUOTED_PAIR.sub(r"\1", raw[1:-1] if raw.endswith('"') and len(raw) > 1 else raw[1:])
        index = int(section or 0)
        if star or section is not None:
            extended.setdefault(index, (bool(star), raw))
        else:
            plain.setdefault(index, raw)
    if extended:
        return _rfc2231([extended[k] for k in sorted(extended)], hints)
    if plain:
        return decode_header(plain[min(plain)], hints, defects) or None
    return None


def _rfc2231(sections: list[tuple[bool, str]], hints: tuple[str, ...]) -> str | None:
    charset: str | None = None
    data = bytearray()
    for encoded, raw in sections:
        if encoded:
            if charset is None and raw.count("'") >= 2:
                charset, _language, raw = raw.split("'", 2)
            # raw 8-bit bytes in the value arrive as surrogates: keep them as bytes
            data += unquote_to_bytes(raw.encode("utf-8", "surrogateescape"))
        else:
            data += raw.encode("ascii", "surrogateescape")
    return charsets.decode(bytes(data), charset or None, hints, header=True)[0].strip() or None


def addresses(
    values: list[str], hints: tuple[str, ...], defects: list[str]
) -> list[tuple[str | None, str]]:
    """``(display name, lower-cased addr-spec)`` pairs; the addr-spec may be "" when unusable."""
    out: list[tuple[str | None, str]] = []
    for name, addr in _split_addresses([_jis_as_words(_FOLD.sub("", v)) for v in values]):
        text = decode_header(name, hints, defects).strip("\"' ") or None
        addr = decode_raw(addr, hints, defects).strip().lower()
        if text is None and not addr:
            continue
        out.append((text, addr))
    return out


#: A run of raw ISO-2022-JP: from its escape into JIS X 0208 back to ASCII (or the end),
#: with the spaces between such runs ("山田 太郎").
_JIS_RUN = re.compile(r"\x1b\$[@B].*?(?:\x1b\([BJ](?:[ \t]+\x1b\$[@B].*?\x1b\([BJ])*|$)", re.S)


def _jis_as_words(value: str) -> str:
    """Raw ISO-2022-JP runs as RFC 2047 encoded words: the address parser
    took the ``(`` of each ``ESC ( B`` for a comment and lost the address."""
    if "\x1b" not in value:
        return value
    return _JIS_RUN.sub(
        lambda m: "=?ISO-2022-JP?B?" + binascii.b2a_base64(m.group(0).encode("ascii", "surrogateescape"),
                                                           newline=False).decode("ascii") + "?=", value)


def decoded_addresses(text: str) -> list[tuple[str | None, str]]:
    """``(name, addr)`` pairs of an already decoded value (a whole ``name
    <addr>`` that some mailer put inside one encoded word)."""
    out = []
    for name, addr in _split_addresses([text]):
        out.append((name.strip("\"' ") or None, addr.strip().lower()))
    return out


def _split_addresses(values: list[str]) -> list[tuple[str, str]]:
    """``getaddresses``, with a fast path for single-address values (the stdlib parser is slow)."""
    out: list[tuple[str, str]] = []
    for value in values:
        simple = None if "," in value or "(" in value or ";" in value else (
            _ONE_ANGLE_ADDR.fullmatch(value) or _ONE_BARE_ADDR.fullmatch(value)
        )
        if simple is None:
            try:
                out.extend(_unglued(value, getaddresses([value])))
            except RecursionError:  # the stdlib recurses once per ':' (a group) it meets
                out.extend(_split_plainly(value))
        elif simple.re is _ONE_BARE_ADDR:
            out.append(("", simple.group(1)))
        else:
            out.append(((simple.group(1) or simple.group(2) or "").strip(), simple.group(3)))
    return out


#: An addr-spec standing as one word.
_ADDR_WORD = re.compile(r"[^\s@<>\"(),;:]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def _unglued(value: str, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``getaddresses``' pairs, unless it glued words of a list written
    without commas into one address (``a@x.com www.x.com`` →
    ``a@x.comwww.x.com``, ``a@x.com b@y.com`` → ``@y.com``): then each word
    that is an addr-spec. Values with brackets or quotes are left alone."""
    if "<" in value or '"' in value:
        return pairs
    if not any(a and (a.startswith("@") or (" " not in a and a not in value)) for _n, a in pairs):
        return pairs
    words = [w for w in value.replace(",", " ").replace(";", " ").split() if _ADDR_WORD.fullmatch(w)]
    return [("", w) for w in words] or pairs


def _split_plainly(value: str) -> list[tuple[str, str]]:
    """The addresses of a value ``getaddresses`` cannot read (a colon for every
    one of a thousand encoded words, each taken for a group inside the last:
    a RecursionError), split on commas without recursion or backtracking:
    ``name <addr>``, else the first word with an ``@``."""
    out: list[tuple[str, str]] = []
    for piece in value.split(","):
        lt = piece.find("<")
        gt = piece.find(">", lt + 1) if lt >= 0 else -1
        if gt > lt:
            out.append((piece[:lt].strip().strip('"'), piece[lt + 1 : gt].strip()))
            continue
        bare = next((w.strip("\"'():;") for w in piece.split() if "@" in w), None)
        if bare:
            out.append(("", bare))
    return out


_UNSENDABLE = re.compile(r"[\s\x00-\x1f\x7f\ud800-\udfff\ufffd<>]")


def usable(addr: str) -> bool:
    """An addr-spec a reply could go to: ``local@domain``, no spaces, control
    characters or undecodable bytes."""
    local, at, domain = addr.partition("@")
    return bool(at and local and domain) and not _UNSENDABLE.search(addr)


def message_ids(value: str | None, *, bare: bool = False) -> list[str]:
    """The ids of a Message-ID / In-Reply-To / References value, without angle brackets.

    Ids without brackets count when they have an ``@``; with ``bare`` (a
    Message-ID header, which holds one id and no prose) a single token
    without one too (``Message-Id:102.10200000000105`` of a postcard mailer)."""
    if not value:
        return []
    # ids are ASCII by the RFC: stray 8-bit bytes become U+FFFD (never lone surrogates)
    value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    ids = [_SPACES.sub("", i) for i in _MSG_ID.findall(value)]
    ids = [i for i in ids if i]
    if not ids:  # bare ids, as some mailers write them
        ids = [t.strip("<>,;") for t in value.split() if "@" in t]
    if not ids and bare:
        tokens = value.split()
        if len(tokens) == 1 and len(tokens[0].strip("<>")) <= 250:
            ids = [tokens[0].strip("<>")] if tokens[0].strip("<>") else []
    return ids


def date(value: str | None, defects: list[str]) -> datetime | None:
    """An aware datetime from a Date header; a naive (``-0000``) date is taken as UTC."""
    if not value:
        return None
    try:
        when = parsedate_to_datetime(_SPACES.sub(" ", value).strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        defects.append("InvalidDateHeader")
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when
