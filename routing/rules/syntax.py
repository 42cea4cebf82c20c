"""The small languages inside rule files: matcher strings, weekdays, hours.

A matcher is one line, ``FIELD OP VALUE``, in the style of Alertmanager's
``matchers:`` (``'channel = email'``, ``'subject =~ "(?i)refund"'``,
``'tier in [vip, gold]'``, ``'sender in vip_senders'``,
``'time not in business_hours'``, ``'call.duration < 10'``). ``in`` / ``not in`` take either a literal
``[a, b]`` list or the name of a list (for ``time``: of an interval or
calendar). A value may be double-quoted to keep spaces, commas or brackets;
inside quotes ``\\"`` is a quote and nothing else is an escape, so regexes
are written as they are.

Text comparisons are case- and width-insensitive: both sides go through
:func:`fold` (NFKC, then casefold), so full-width ``ＲＥＦＵＮＤ`` equals
``refund``. Regexes run on NFKC text (width-folded) and decide case
themselves (``(?i)``); they *search*, so anchor with ``^…$`` when needed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from routing.model import IDENTITY_KINDS, TICKET_STATUSES
from routing.rules.nodes import suggest
from routing.text import fold, width_fold  # noqa: F401 (the rules' comparison forms, used across routing.rules)

OPERATORS = ("=", "!=", "=~", "!~", "in", "not in")
#: Comparisons of a number field (``call.duration``, seconds).
NUMBER_OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class FieldType:
    """What a matcher field compares and which operators make sense for it."""

    kind: str  # text | multi | enum | bool | time | number
    values: tuple[str, ...] = ()  # allowed values of an enum

    @property
    def operators(self) -> tuple[str, ...]:
        if self.kind in ("text", "multi"):
            return OPERATORS
        if self.kind == "enum":
            return ("=", "!=", "in", "not in")
        if self.kind == "bool":
            return ("=", "!=")
        if self.kind == "number":
            return NUMBER_OPERATORS
        return ("in", "not in")  # time


FIELDS: dict[str, FieldType] = {
    "channel": FieldType("text"),
    "account": FieldType("text"),
    "sender": FieldType("text"),  # the identity value: a@b.cn, +8613…, an openid
    "sender.kind": FieldType("enum", tuple(sorted(IDENTITY_KINDS))),
    "kind": FieldType("enum", ("message", "call", "event")),
    "tier": FieldType("text"),
    "tags": FieldType("multi"),
    "language": FieldType("text"),  # "zh" also matches "zh-CN"
    "subject": FieldType("text"),
    "text": FieldType("text"),
    "attachments": FieldType("bool"),
    "ticket": FieldType("enum", ("new", "follow_up")),
    "ticket_status": FieldType("enum", TICKET_STATUSES),
    "weekday": FieldType("enum", WEEKDAYS),
    "time": FieldType("time"),
    # calls (kind = call): a call.* matcher never matches anything else
    "call.direction": FieldType("enum", ("inbound", "outbound", "internal")),
    "call.disposition": FieldType("enum", ("answered", "missed", "busy", "failed", "voicemail")),
    "call.duration": FieldType("number"),  # seconds: 'call.duration < 10', '30s', '2m'
}

_MATCHER = re.compile(r"\s*(?P<field>[a-z_.]+)\s*(?P<op>!=|=~|!~|<=|>=|<|>|=|not\s+in\b|in\b)\s*(?P<value>.*?)\s*\Z", re.S)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class ParsedMatcher:
    field: str
    op: str
    value: str | None = None  # =, !=, =~, !~
    items: tuple[str, ...] | None = None  # in [a, b]
    ref: str | None = None  # in list_name

    def canonical(self) -> str:
        if self.ref is not None:
            return f"{self.field} {self.op} {self.ref}"
        if self.items is not None:
            return f"{self.field} {self.op} [{', '.join(map(_list_item, self.items))}]"
        value = self.value or ""
        return f"{self.field} {self.op} {_quote(value) if self.op in ('=~', '!~') or _needs_quotes(value) else value}"


class SyntaxProblem(ValueError):
    """A malformed matcher or value; the message says what is wrong."""


def parse_matcher(source: str) -> ParsedMatcher:
    m = _MATCHER.match(source)
    if not m:
        raise SyntaxProblem(f"cannot read matcher {source!r}; write FIELD OP VALUE with OP one of {', '.join(OPERATORS)}")
    field, op, raw = m["field"], " ".join(m["op"].split()), m["value"]
    ftype = FIELDS.get(field)
    if ftype is None:
        raise SyntaxProblem(f"unknown matcher field {field!r}{suggest(field, FIELDS)}")
    if op not in ftype.operators:
        raise SyntaxProblem(f"operator {op!r} does not apply to {field!r}; use one of {', '.join(ftype.operators)}")
    if not raw:
        raise SyntaxProblem(f"matcher {source!r} lacks a value")
    if op in ("in", "not in"):
        if raw.startswith("["):
            return ParsedMatcher(field, op, items=_check_values(field, ftype, _parse_list(raw)))
        if not _NAME.match(raw):
            raise SyntaxProblem(f"after {op!r} write a [list] or the name of a defined list, got {raw!r}")
        return ParsedMatcher(field, op, ref=raw)
    value = _unquote(raw)
    if op in ("=", "!=") or ftype.kind == "number":
        _check_values(field, ftype, (value,))
    return ParsedMatcher(field, op, value=value)


def _check_values(field: str, ftype: FieldType, values: tuple[str, ...]) -> tuple[str, ...]:
    if ftype.kind == "bool":
        for v in values:
            if v not in ("true", "false"):
                raise SyntaxProblem(f"{field} compares with true or false, got {v!r}")
    elif ftype.kind == "enum" and field == "weekday":
        for v in values:
            parse_weekdays(v)
    elif ftype.kind == "enum":
        for v in values:
            if v not in ftype.values:
                raise SyntaxProblem(f"{field} is one of {', '.join(ftype.values)}, got {v!r}")
    elif ftype.kind == "time":
        for v in values:
            parse_hours(v)
    elif ftype.kind == "number":
        for v in values:
            parse_seconds(v, field)
    return values


def parse_seconds(value: str, field: str = "call.duration") -> int:
    """``30``, ``30s``, ``2m``, ``1h`` → seconds."""
    m = re.fullmatch(r"\s*(\d{1,9})\s*(s|m|h)?\s*", value)
    if not m:
        raise SyntaxProblem(f"{field} compares with a number of seconds (30, 30s, 2m), got {value!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


_ITEM = re.compile(r'\s*(?:"(?P<q>(?:[^"\\]|\\.)*)"|(?P<b>[^,"\[\]]*?))\s*(?P<sep>,|\Z)')


def _parse_list(raw: str) -> tuple[str, ...]:
    if not raw.endswith("]"):
        raise SyntaxProblem(f"list {raw!r} lacks its closing ']'")
    body, pos, items = raw[1:-1], 0, []
    while True:
        m = _ITEM.match(body, pos)
        if m is None:
            raise SyntaxProblem(f"cannot read list {raw!r}")
        item = m["q"].replace('\\"', '"') if m["q"] is not None else m["b"]
        if not item:
            raise SyntaxProblem(f"empty item in list {raw!r}")
        items.append(item)
        if not m["sep"]:
            return tuple(items)
        pos = m.end()


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1].replace('\\"', '"')
    if '"' in raw:
        raise SyntaxProblem(f"unbalanced quote in {raw!r}")
    return raw


def _needs_quotes(value: str) -> bool:
    return not value or bool(re.search(r'[,\[\]"]|^\s|\s$', value))


def _list_item(value: str) -> str:
    return _quote(value) if _needs_quotes(value) else value


def _quote(value: str) -> str:
    return '"' + value.replace('"', '\\"') + '"'


# ---------------------------------------------------------------- weekdays, hours


_FULL_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def parse_weekdays(spec: str) -> frozenset[int]:
    """``mon``, ``mon-fri``, ``sat-sun`` (0 = Monday); full names work too."""
    first, sep, last = spec.partition("-")
    if not sep:
        return frozenset({_weekday(first)})
    a, b = _weekday(first), _weekday(last)
    return frozenset(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])


def _weekday(name: str) -> int:
    key = name.strip().lower()
    for names in (WEEKDAYS, _FULL_WEEKDAYS):
        if key in names:
            return names.index(key)
    raise SyntaxProblem(f"unknown weekday {name.strip()!r}; use mon, tue, wed, thu, fri, sat, sun")


_HHMM = re.compile(r"([01]?\d|2[0-4]):([0-5]\d)\Z")


def parse_hours(spec: str) -> tuple[int, int]:
    """``"09:00-18:00"`` → minutes since midnight (start, end). An end before
    the start wraps past midnight (``22:00-06:00``); ``24:00`` ends the day."""
    start, sep, end = spec.partition("-")
    if not sep:
        raise SyntaxProblem(f"hours {spec!r} must be HH:MM-HH:MM")
    a, b = _minutes(start.strip(), spec), _minutes(end.strip(), spec)
    if a == b:
        raise SyntaxProblem(f"hours {spec!r} are empty (start equals end)")
    return a, b


def _minutes(hhmm: str, spec: str) -> int:
    m = _HHMM.match(hhmm)
    if not m or (m[1] == "24" and m[2] != "00"):
        raise SyntaxProblem(f"hours {spec!r}: {hhmm!r} is not HH:MM")
    return int(m[1]) * 60 + int(m[2])


def in_hours(minute: int, hours: tuple[int, int]) -> bool:
    start, end = hours
    return start <= minute < end if start < end else minute >= start or minute < end
