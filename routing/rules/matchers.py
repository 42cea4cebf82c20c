"""Compiled matchers and the per-message view they read.

:class:`MessageView` folds a :class:`RuleInput` once (NFKC + casefold) so
every matcher compares prepared values; :func:`build_matcher` turns one
checked matcher into a :class:`Matcher`: a test and a human-readable reason
(``time not in business_hours (interval, Asia/Shanghai: Tue 20:15)``).
Keyword matchers are not here: all of them run together in one automaton
(see :mod:`routing.rules.compiler`).
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from routing.calendar import cn_day_kind
from routing.rules.spec import IntervalSpec, MatcherSpec
from routing.rules.syntax import WEEKDAYS, fold, in_hours, parse_hours, parse_seconds, parse_weekdays, width_fold
from routing.rules.types import RuleInput


class Calendar(Protocol):
    """A business-hours calendar (supplied by the SLA work): open at ``dt``?"""

    def is_open(self, dt: datetime) -> bool: ...


class MessageView:
    """What matchers read: each field's width-folded value (``raw``, for
    regexes) and its comparison form (``folded``), computed once."""

    __slots__ = ("raw", "folded", "tags", "raw_tags", "attachments", "now", "calendars", "_local", "call_duration")

    def __init__(self, ri: RuleInput, default_tz: str, calendars: Mapping[str, Calendar] | None):
        ib = ri.inbound
        raw: dict[str, str | None] = {
            "channel": ib.channel,
            "account": ib.account,
            "sender": ib.sender.value,
            "sender.kind": ib.sender.kind,
            "kind": ib.kind,
            "tier": ri.contact_tier,
            "language": ib.language or ri.contact_language,
            "subject": ib.subject,
            "text": ib.text,
            "ticket": "new" if ri.is_new_ticket else "follow_up",
            "ticket_status": ri.ticket_status,
            "call.direction": ib.call.direction if ib.call is not None else None,
            "call.disposition": ib.call.disposition if ib.call is not None else None,
        }
        self.call_duration = ib.call.duration_s if ib.call is not None else None
        self.raw = {k: (width_fold(v) if v is not None else None) for k, v in raw.items()}
        self.folded = {k: (v.casefold() if v is not None else None) for k, v in self.raw.items()}
        self.raw_tags = tuple(width_fold(t) for t in ri.contact_tags)
        self.tags = frozenset(t.casefold() for t in self.raw_tags)
        self.attachments = bool(ib.attachments)
        now = ri.now if ri.now.tzinfo is not None else ri.now.replace(tzinfo=zoneinfo.ZoneInfo(default_tz))
        self.now = now
        self.calendars = calendars or {}
        self._local: dict[str, datetime] = {}

    def local(self, tz: str) -> datetime:
        t = self._local.get(tz)
        if t is None:
            t = self._local[tz] = self.now.astimezone(zoneinfo.ZoneInfo(tz))
        return t


@dataclass(frozen=True, slots=True)
class Matcher:
    test: Callable[[MessageView], bool]
    describe: Callable[[MessageView], str]


def build_matcher(spec: MatcherSpec, lists: Mapping[str, tuple[str, ...]], intervals: Mapping[str, IntervalSpec], tz: str) -> Matcher:
    p = spec.parsed
    text = p.canonical()
    if p.field == "time":
        return _time_matcher(p.op, p.ref, p.items, intervals, tz, text)
    if p.field == "weekday":
        days = frozenset().union(*(parse_weekdays(v) for v in (p.items or (p.value,))))
        positive = p.op in ("=", "in")
        return Matcher(
            lambda v: (v.local(tz).weekday() in days) == positive,
            lambda v: f"{text} ({WEEKDAYS[v.local(tz).weekday()]}, {tz})",
        )
    if p.field.startswith("call."):
        return _call_matcher(p.field, p.op, p.items if p.items is not None else lists[p.ref] if p.ref is not None
                             else (p.value,), text)
    if p.field == "attachments":
        want = (p.value == "true") == (p.op == "=")
        return Matcher(lambda v: v.attachments == want, lambda v: text)
    values = p.items if p.items is not None else lists[p.ref] if p.ref is not None else (p.value,)
    test = _multi_test(p.op, values) if p.field == "tags" else _scalar_test(p.field, p.op, values)
    return Matcher(test, lambda v: text)


_NUMBER_OPS: dict[str, Callable[[int, int], bool]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def _call_matcher(field: str, op: str, values: tuple[str, ...], text: str) -> Matcher:
    """``call.direction``, ``call.disposition``, ``call.duration`` (seconds):
    only a call matches them (an email is neither ``!= missed`` nor ``< 10``)."""
    if field == "call.duration":
        limit, compare = parse_seconds(values[0]), _NUMBER_OPS[op]
        return Matcher(lambda v: v.call_duration is not None and compare(v.call_duration, limit),
                       lambda v: f"{text} ({v.call_duration} s)")
    inner = _scalar_test(field, op, values)
    return Matcher(lambda v: v.raw[field] is not None and inner(v), lambda v: text)


def _scalar_test(field: str, op: str, values: tuple[str, ...]) -> Callable[[MessageView], bool]:
    if op in ("=~", "!~"):
        rx = re.compile(values[0])
        positive = op == "=~"
        return lambda v: (v.raw[field] is not None and rx.search(v.raw[field]) is not None) == positive
    wanted = frozenset(fold(x) for x in values)
    positive = op in ("=", "in")
    if field == "language":  # "zh" also means "zh-CN", "zh-Hans"…
        return lambda v: (v.folded[field] is not None and _language_in(v.folded[field], wanted)) == positive
    return lambda v: (v.folded[field] in wanted) == positive


def _language_in(lang: str, wanted: frozenset[str]) -> bool:
    return lang in wanted or lang.split("-", 1)[0] in wanted


def _multi_test(op: str, values: tuple[str, ...]) -> Callable[[MessageView], bool]:
    """Tags: ``=`` has the tag, ``in`` has any of them, ``=~`` any tag matches;
    the negated operators mean none does."""
    if op in ("=~", "!~"):
        rx = re.compile(values[0])
        positive = op == "=~"
        return lambda v: any(rx.search(t) for t in v.raw_tags) == positive
    wanted = frozenset(fold(x) for x in values)
    positive = op in ("=", "in")
    return lambda v: (not v.tags.isdisjoint(wanted)) == positive


def _time_matcher(op: str, ref: str | None, items: tuple[str, ...] | None, intervals: Mapping[str, IntervalSpec], tz: str, text: str) -> Matcher:
    positive = op == "in"
    if items is not None:
        hours = tuple(parse_hours(h) for h in items)
        return Matcher(
            lambda v: _within(v.local(tz), hours) == positive,
            lambda v: f"{text} ({tz}: {_clock(v.local(tz))})",
        )
    interval = intervals.get(ref)

    def test(v: MessageView) -> bool:
        cal = v.calendars.get(ref)
        if cal is not None:
            return bool(cal.is_open(v.now)) == positive
        return interval is not None and _in_interval(v, interval) == positive

    def describe(v: MessageView) -> str:
        if ref in v.calendars:
            return f"{text} (calendar {ref})"
        return f"{text} (interval, {interval.timezone}: {_clock(v.local(interval.timezone))})"

    return Matcher(test, describe)


def _in_interval(v: MessageView, interval: IntervalSpec) -> bool:
    local = v.local(interval.timezone)
    weekday = local.weekday()
    if interval.holidays == "CN":
        kind = cn_day_kind(local.date())
        if kind == "holiday":
            return False
        if kind == "makeup":
            weekday = 0  # a 调休 make-up workday keeps a Monday's hours
    return any(weekday in p.weekdays and (not p.hours or _within(local, p.hours)) for p in interval.periods)


def _within(local: datetime, hours: tuple[tuple[int, int], ...]) -> bool:
    minute = local.hour * 60 + local.minute
    return any(in_hours(minute, h) for h in hours)


def _clock(local: datetime) -> str:
    return f"{WEEKDAYS[local.weekday()]} {local:%H:%M}"
