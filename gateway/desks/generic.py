"""The generic target: for an in-house desk, one JSON template per event type,
POSTed to the desk's ``url``.

A template is any JSON document (in the YAML, under ``desks.<name>.templates.
<event type>``); in its strings, ``{ticket.number}``-style placeholders name
fields of the event's ``data`` (``ticket.*``, ``message.*``, ``contact.*``, …,
plus ``type`` and ``desk``). A string that is one placeholder alone takes the
value with its JSON type (a number stays a number, a list a list); inside a
longer string it is written as text; a missing field is ``null`` / empty.
``{{`` and ``}}`` are literal braces. No code runs in a template.
"""

from __future__ import annotations

import re
from typing import Any

_ONE = re.compile(r"^\{([A-Za-z0-9_.]+)\}$")
_ANY = re.compile(r"\{\{|\}\}|\{([A-Za-z0-9_.]+)\}")


def lookup(data: Any, path: str) -> Any:
    cur = data
    for part in path.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def render(template: Any, data: dict) -> Any:
    """The template with its placeholders filled from ``data``."""
    if isinstance(template, dict):
        return {k: render(v, data) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, data) for v in template]
    if isinstance(template, str):
        m = _ONE.match(template)
        if m:
            return lookup(data, m.group(1))

        def sub(m: re.Match) -> str:
            if m.group(0) in ("{{", "}}"):
                return m.group(0)[0]
            v = lookup(data, m.group(1))
            return "" if v is None else str(v)
        return _ANY.sub(sub, template)
    return template
