"""Safe XML for WeChat and WeCom callbacks: bytes → the dict wechatpy works on.

WeChat's callbacks are flat ``<xml>…</xml>`` documents. They are parsed with
xmltodict, the parser wechatpy itself uses (so the dict has wechatpy's shape:
leaf elements are strings, nested ones are dicts), but through an expat that
refuses any DOCTYPE and any entity declaration, after a size check. A
legitimate callback never has either, so refusing them costs nothing and
closes the billion-laughs / external-entity doors for good.
"""

from __future__ import annotations

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


def parse_xml(raw: bytes | str, *, root: str = "xml", max_bytes: int = MAX_XML_BYTES) -> dict[str, Any]:
    """The children of the ``<root>`` element as a dict, or :class:`UnsafeXml`."""
    data = raw.encode("utf-8") if isinstance(raw, str) else raw
    if len(data) > max_bytes:
        raise UnsafeXml(f"XML body of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        doc = xmltodict.parse(data, expat=_NoDoctypeExpat)
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
