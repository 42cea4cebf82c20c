"""Safe XML for WeChat and WeCom callbacks: bytes → the dict wechatpy works on.

WeChat's callbacks are flat ``<xml>…</xml>`` documents. They are parsed into
the dict xmltodict (the parser wechatpy itself uses) gives with its default
options — leaf elements are strings (stripped; empty ones None), nested ones
dicts, attributes ``@name``, text beside attributes or children ``#text``,
repeated elements lists — by an expat that refuses any DOCTYPE and any
entity declaration, after a size check. A legitimate callback never has
either, so refusing them costs nothing and closes the billion-laughs /
external-entity doors for good.

The dict is built by :class:`_DictBuilder`, expat's handlers doing only what
that shape needs, not by ``xmltodict.parse`` itself: every callback is parsed
twice (the envelope, then the decrypted message) at intake and again by
``parse``, and with xmltodict's general handler (paths, postprocessor,
namespace and force-list hooks on every element) the envelope took 18 µs,
the message 22, against 8.6 and 10 now (ARCHITECTURE.md "Fifth pass
(issue 11, overload: WeChat callbacks)"). ``tests/connectors/wechat/
test_safexml.py`` checks the two give equal dicts, corpus and crafted
documents alike.

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

from connectors.base import PayloadRejected

#: Callbacks are a few hundred bytes; 256 KiB leaves room and bounds the work.
MAX_XML_BYTES = 256 * 1024


class UnsafeXml(PayloadRejected):
    """The document is refused: too large, a DOCTYPE/entity, or not XML at all."""


def _refuse_doctype(name: str, *_args: Any) -> None:
    raise UnsafeXml(f"XML with a DOCTYPE ({name!r}) is refused")


class _DictBuilder:
    """expat handlers building xmltodict's dict (default options) of one document."""

    __slots__ = ("_stack", "item", "_text")

    def __init__(self) -> None:
        self._stack: list[tuple[Any, list[str]]] = []
        self.item: Any = None  # the element being built: None (no attributes, no children yet) or a dict
        self._text: list[str] = []

    def start(self, name: str, attrs: list[str]) -> None:
        self._stack.append((self.item, self._text))
        # ordered_attributes: [name, value, name, value, …]
        self.item = {"@" + attrs[i]: attrs[i + 1] for i in range(0, len(attrs), 2)} if attrs else None
        self._text = []

    def characters(self, data: str) -> None:
        self._text.append(data)

    def end(self, name: str) -> None:
        text = "".join(self._text).strip() or None if self._text else None
        value = self.item
        self.item, self._text = self._stack.pop()
        if value is None:
            value = text
        elif text:
            _add(value, "#text", text)
        if self.item is None:
            self.item = {name: value}
        else:
            _add(self.item, name, value)


def _add(item: dict[str, Any], key: str, value: Any) -> None:
    """xmltodict's ``push_data``: a key given twice becomes a list."""
    if key not in item:
        item[key] = value
    elif isinstance(item[key], list):
        item[key].append(value)
    else:
        item[key] = [item[key], value]


def _ignore(_data: str) -> None:
    """expat's default handler: markup no other handler takes (as xmltodict sets it)."""


def _no_external_entity(*_args: Any) -> int:
    return 1  # nothing fetched (as xmltodict sets it; no DOCTYPE gets this far anyway)


def _parse_dict(data: bytes) -> Any:
    """The document as xmltodict's ``parse(data)`` gives it, DOCTYPEs refused."""
    builder = _DictBuilder()
    parser = expat.ParserCreate()
    parser.ordered_attributes = True
    parser.buffer_text = True
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.characters
    parser.DefaultHandler = _ignore
    parser.ExternalEntityRefHandler = _no_external_entity
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.Parse(data, True)
    return builder.item


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
        doc = _parse_dict(data)
    except (expat.ExpatError, LookupError, ValueError) as exc:
        readable = _readable(data)
        if readable == data:
            raise _unsafe(exc) from None
        try:
            doc = _parse_dict(readable)
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
