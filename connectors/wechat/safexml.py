"""Safe XML for WeChat and WeCom callbacks: bytes → the dict wechatpy works on.

WeChat's callbacks are flat ``<xml>…</xml>`` documents. They are parsed with
xmltodict, the parser wechatpy itself uses (so the dict has wechatpy's shape:
leaf elements are strings, nested ones are dicts), but through an expat that
refuses any DOCTYPE and any entity declaration, after a size check. A
legitimate callback never has either, so refusing them costs nothing and
closes the billion-laughs / external-entity doors for good.

What relays get wrong is read rather than refused (:func:`_readable`): a
declared encoding expat cannot take (``encoding="GBK"``, ``"gb2312"`` —
multi-byte) is decoded by Python, and when the bytes are UTF-8 after all
(the declaration copied from an old template) as UTF-8; GBK/GB18030 bytes with
no declaration are read as GB18030 when they are not UTF-8; and C0 control
characters XML 1.0 forbids (a pasted ``\x01``) are dropped instead of making
the whole callback "not well-formed".
"""

from __future__ import annotations

import codecs
import re
from typing import Any, Mapping
from xml.parsers import expat

import xmltodict

from connectors.base import PayloadRejected

#: Callbacks are a few hundred bytes; 256 KiB leaves room and bounds the work.
MAX_XML_BYTES = 256 * 1024


class UnsafeXml(PayloadRejected):
    """The document is refused: too large, a DOCTYPE/entity, or not XML at all."""


def _refuse_doctype(name: str, *_args: Any) -> None:
    raise UnsafeXml(f"XML with a DOCTYPE ({name!r}) is refused")


class _NoDoctypeExpat:
    """An ``expat`` stand-in for xmltodict whose parsers refuse DOCTYPEs.

    Entities can only be declared inside a DOCTYPE, so this also refuses
    every entity declaration; a reference to an undeclared entity is an
    expat error by itself.
    """

    @staticmethod
    def ParserCreate(encoding: str | None = None, namespace_separator: str | None = None) -> Any:  # noqa: N802 (expat's name)
        parser = expat.ParserCreate(encoding, namespace_separator)
        parser.StartDoctypeDeclHandler = _refuse_doctype
        return parser


#: The XML declaration's encoding pseudo-attribute, at the very start (after a BOM or blanks).
_DECLARED_ENCODING = re.compile(rb"""\A(?:\xef\xbb\xbf)?\s*<\?xml\b[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
#: What expat decodes itself; any other declared encoding is decoded here first.
_EXPAT_ENCODINGS = frozenset({"utf_8", "iso8859_1", "latin_1", "ascii"})
#: C0 controls XML 1.0 forbids even inside CDATA (tab, LF and CR are allowed).
_FORBIDDEN_CONTROLS = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_DECLARATION = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*<\?xml\b[^>]*\?>")


def _readable(data: bytes) -> bytes:
    """The document as bytes expat reads: UTF-8 without a declaration when
    the declared (or undeclared) encoding is one expat cannot take, forbidden
    control characters dropped. UTF-16 is left to expat; bytes that decode
    nowhere are left for expat to refuse."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data
    m = _DECLARED_ENCODING.match(data)
    codec = None
    if m:
        try:
            codec = codecs.lookup(m.group(1).decode("ascii")).name.replace("-", "_")
        except LookupError:
            codec = "unknown"
        if codec == "utf_16":
            return data
    data = _FORBIDDEN_CONTROLS.sub(b"", data)
    if codec in _EXPAT_ENCODINGS:
        return data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        text = _decode_legacy(data, codec)
        if text is None:
            return data
        data = text.encode("utf-8")
    # UTF-8 now: a declaration that says otherwise must go
    return _DECLARATION.sub(b"", data, count=1) if m else data


def _decode_legacy(data: bytes, codec: str | None) -> str | None:
    """Non-UTF-8 bytes in the declared codec, else as GB18030 (WeChat's users
    write Chinese; GB18030 is a superset of GBK and GB2312)."""
    for name in (codec, "gb18030"):
        if name and name != "unknown":
            try:
                return data.decode(name)
            except (UnicodeDecodeError, LookupError):
                continue
    return None


def _unsafe(exc: Exception) -> UnsafeXml:
    if isinstance(exc, expat.ExpatError):
        return UnsafeXml(f"not well-formed XML: {expat.ErrorString(exc.code)} at line {exc.lineno}")
    # encoding="…" naming a multi-byte encoding expat does not take, or an unknown one
    return UnsafeXml(f"XML declares an encoding the parser does not take: {exc}")


def parse_xml(raw: bytes | str, *, root: str = "xml", max_bytes: int = MAX_XML_BYTES) -> dict[str, Any]:
    """The children of the ``<root>`` element as a dict, or :class:`UnsafeXml`.

    Only a document expat refuses is made readable (:func:`_readable`) and
    parsed once more: a well-formed callback costs nothing extra."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if len(data) > max_bytes:
        raise UnsafeXml(f"XML body of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        doc = xmltodict.parse(data, expat=_NoDoctypeExpat)
    except (expat.ExpatError, LookupError, ValueError) as exc:
        readable = _readable(data)
        if readable == data:
            raise _unsafe(exc) from None
        try:
            doc = xmltodict.parse(readable, expat=_NoDoctypeExpat)
        except (expat.ExpatError, LookupError, ValueError):
            raise _unsafe(exc) from None  # the original document's fault, not the repair's
    if not isinstance(doc, dict) or set(doc) != {root}:
        found = next(iter(doc), "?") if isinstance(doc, dict) else "?"
        raise UnsafeXml(f"root element is <{found}>, expected <{root}>")
    body = doc[root]
    if not isinstance(body, dict):  # <xml/> or <xml>text</xml>
        raise UnsafeXml(f"<{root}> has no child elements")
    return body


def text_field(fields: Mapping[str, Any], name: str) -> str | None:
    """A leaf field as a stripped string (None when absent, empty or nested);
    of an element given twice (xmltodict makes a list of them), the first."""
    value = fields.get(name)
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) and v.strip()), None)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None
