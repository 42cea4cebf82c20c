"""Query strings and cursors of ``/api/v1``.

- :func:`parse_query` decodes ``request.query`` into a query Struct of
  ``gateway/api_types.py`` (lists comma-separated, unknown parameters
  refused): a bad value is a 400 naming the parameter.
- Cursors are opaque: base64url of ``[1, query hash, sort key]``. The hash is
  of the query's filters and sort, so a cursor from another query is refused,
  not misread; the sort key makes a keyset page (stable under inserts).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import typing
from typing import Any

import msgspec
from aiohttp import web

from gateway.http_util import Problem

_list_fields: dict[type, frozenset[str]] = {}
_PATH = re.compile(r"^\$\.([A-Za-z_]+)")


def _lists(typ: type) -> frozenset[str]:
    names = _list_fields.get(typ)
    if names is None:
        names = frozenset(f.encode_name for f in msgspec.structs.fields(typ) if typing.get_origin(f.type) is list)
        _list_fields[typ] = names
    return names


def parse_query(request: web.Request, typ: type) -> Any:
    """The query string as ``typ`` (400 naming the parameter at fault)."""
    lists = _lists(typ)
    data: dict[str, Any] = {}
    for key in set(request.query.keys()):
        values = request.query.getall(key)
        if key in lists:
            data[key] = [v.strip() for value in values for v in value.split(",") if v.strip()]
        elif len(values) > 1:
            raise Problem(400, "Invalid query", f"{key} is given more than once", field=key)
        else:
            data[key] = values[0]
    try:
        return msgspec.convert(data, typ, strict=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = re.search(r"(?:unknown field|missing required field) `([^`]+)`", text)
        if m:
            name = m.group(1)
            text = f"unknown parameter {name}" if "unknown" in text else f"{name} is required"
        else:
            m = _PATH.search(text.rsplit(" - at `", 1)[-1].rstrip("`")) if " - at `" in text else None
            name = m.group(1) if m else None
            text = f"{name}: {text.split(' - at `')[0]}" if name else text
        raise Problem(400, "Invalid query", text, field=name) from None


def query_hash(q: msgspec.Struct, *extra: Any, exclude: tuple[str, ...] = ("cursor", "limit")) -> str:
    """What identifies a query for its cursors: every parameter but the position and page size."""
    d = {k: v for k, v in msgspec.structs.asdict(q).items() if k not in exclude}
    return hashlib.sha256(msgspec.json.encode([d, *extra], order="sorted")).hexdigest()[:16]


def make_cursor(qhash: str, key: list) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode([1, qhash, key])).decode().rstrip("=")


def read_cursor(cursor: str, qhash: str, shape: tuple[type, ...]) -> list:
    """The sort key in ``cursor`` — if it was made for this query and has ``shape``; 400 otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, h, key = msgspec.json.decode(raw)
    except (binascii.Error, ValueError, TypeError, msgspec.DecodeError):
        raise Problem(400, "Invalid query", "cursor is not a cursor of this API", field="cursor") from None
    if version != 1 or not isinstance(key, list) or len(key) != len(shape) or not all(
            isinstance(v, t) and not isinstance(v, bool) for v, t in zip(key, shape)):
        raise Problem(400, "Invalid query", "cursor is not a cursor of this API", field="cursor")
    if h != qhash:
        raise Problem(400, "Invalid query", "cursor belongs to another query (filters or sort changed): "
                      "start again without a cursor", field="cursor")
    if any(isinstance(v, int) and abs(v) > 1 << 62 for v in key):
        raise Problem(400, "Invalid query", "cursor is out of range", field="cursor")
    return key


def query_time(request: web.Request, value: str | None, name: str):
    """A time parameter (ISO 8601, or ``2h``/``7d`` back from now) as an aware datetime; 400 naming it."""
    if value is None:
        return None
    from gateway import keys
    from gateway.timeparse import parse_time

    try:
        return parse_time(value, request.app[keys.CONFIG].timezone, now=request.app[keys.CLOCK]())
    except (ValueError, OverflowError) as exc:
        raise Problem(400, "Invalid query", f"{name}: {exc}", field=name) from None
