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
"""

from __future__ import annotations

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


def parse_xml(raw: bytes | str, *, root: str = "xml", max_bytes: int = MAX_XML_BYTES) -> dict[str, Any]:
    """The children of the ``<root>`` element as a dict, or :class:`UnsafeXml`."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if len(data) > max_bytes:
        raise UnsafeXml(f"XML body of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        doc = _parse_dict(data)
    except expat.ExpatError as exc:
        raise UnsafeXml(f"not well-formed XML: {expat.ErrorString(exc.code)} at line {exc.lineno}") from None
    except (LookupError, ValueError) as exc:  # encoding="GBK" (multi-byte) or an unknown encoding name
        raise UnsafeXml(f"XML declares an encoding the parser does not take: {exc}") from None
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
