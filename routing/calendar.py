"""Business-hours calendars: when is the desk open, and when is a target due?

A :class:`BusinessCalendar` answers four questions for SLAs and rules:
``is_open(dt)``, ``add_business_minutes(start, minutes)``,
``business_minutes_between(a, b)`` and, for people, ``closed_days(year)`` /
``makeup_workdays(year)``. It is pure: no clock (every moment is an
argument) and no I/O.

A calendar is a time zone (``Asia/Shanghai`` by default), weekly hours (any
number of intervals a day, e.g. ``09:00-12:00`` and ``13:30-18:00``), the
public holidays and make-up workdays (调休) of mainland China, and custom
closed/open dates. A 24×7 calendar is always open.

Why ``chinesecalendar`` (import name ``chinese_calendar``) for the holidays:
mainland China's arrangement cannot be computed. The lunar festivals move,
and every year the State Council's General Office publishes (usually in
November) which days are off and which weekend days become workdays to
bridge them (调休: e.g. Sunday 2025-09-28 and Saturday 2025-10-11 for the
2025 National Day). The package transcribes those notices, day by day, with
the holiday's name; 1.11 knows 2004–2026, and upgrading the pinned package
brings the next year. Between the notice and the release, an admin adds the
new arrangement as custom ``closed``/``open`` dates and lists the year in
``arranged_years``. For a year neither covers, the calendar falls back to
its weekly hours alone and records the year (:meth:`~BusinessCalendar.
fallback_years`), so /readyz and /metrics can say so.

Wall-clock arithmetic: hours are local wall-clock times; each day's intervals
are turned into absolute instants with :mod:`zoneinfo`, so a day on which
daylight saving time starts or ends is as long as it really is (a 24×7
calendar in Europe/Berlin has a 23-hour last Sunday of March). Results are
returned in the calendar's zone, so ISO 8601 output carries the local offset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta, timezone
from itertools import pairwise
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from chinese_calendar import constants as cn_holidays

DEFAULT_TIMEZONE = "Asia/Shanghai"
DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: Keys of ``hours:`` that stand for several days; a single day's key wins over them.
DAY_GROUPS: dict[str, tuple[int, ...]] = {"daily": tuple(range(7)), "weekdays": (0, 1, 2, 3, 4), "weekend": (5, 6)}
DEFAULT_HOURS = "09:00-18:00"
#: Consecutive closed days after which a calendar is deemed never to open again.
MAX_CLOSED_RUN = 800

#: The years ``chinese_calendar`` has data for (both ends included).
CN_FIRST_YEAR: int = min(cn_holidays.holidays).year
CN_LAST_YEAR: int = max(cn_holidays.holidays).year

_ZH_NAMES: dict[str, str] = {h.value: h.chinese for h in cn_holidays.Holiday}
_UTC = timezone.utc
_DAY = timedelta(days=1)


def cn_day_kind(d: date) -> Literal["holiday", "makeup"] | None:
    """Mainland China's public holiday (weekend days inside one included) or
    调休 make-up workday on ``d``, from ``chinesecalendar``; None otherwise
    (and for years the package does not know: see :func:`holiday_data_gaps`)."""
    if d in cn_holidays.workdays:
        return "makeup"
    if d in cn_holidays.holidays:
        return "holiday"
    return None


def holiday_data_gaps(calendars: Mapping[str, BusinessCalendar], now: datetime, ahead_days: int = 60) -> dict[str, list[int]]:
    """Calendars (by name) that lack holiday data for a year between ``now``
    and ``now + ahead_days``: the years they would answer with weekly hours
    alone (no public holidays, no make-up workdays). ``now`` comes from the
    caller's clock; 24×7 and ``holidays: none`` calendars never lack data."""
    first, last = now.date().year, (now + timedelta(days=ahead_days)).date().year
    out: dict[str, list[int]] = {}
    for name, cal in calendars.items():
        if cal.always_open or cal.holidays == "none":
            continue
        missing = [y for y in range(first, last + 1) if not cal.covers(y)]
        if missing:
            out[name] = missing
    return out


class IcalDays(NamedTuple):
    """The days of a holiday calendar in iCalendar form (:func:`ical_days`)."""

    closed: dict[date, str]
    open: dict[date, str]
    years: frozenset[int]


#: an event whose SUMMARY or CATEGORIES holds one of these is a make-up workday
ICAL_WORKDAY_MARKS = ("补班", "上班", "调休上班", "workday", "working day", "make-up")


def ical_days(data: bytes, source: str = "<ical>") -> IcalDays:
    """Read a published holiday calendar (RFC 5545, e.g. the 中国节假日 feeds).

    Every VEVENT is a closed day (all its days: DTSTART up to DTEND, exclusive,
    or DURATION; one day without either), named by its SUMMARY; an event
    whose SUMMARY or CATEGORIES contains 补班, 上班, workday, working day or
    make-up is a make-up workday (open with ``workday_hours``) instead.
    ``years`` are the years that have any event."""
    import icalendar

    try:
        cal = icalendar.Calendar.from_ical(data)
    except ValueError as exc:
        raise CalendarError(f"{source}: not an iCalendar file: {exc}") from None
    closed: dict[date, str] = {}
    opened: dict[date, str] = {}
    for ev in cal.walk("VEVENT"):
        start = ev.get("DTSTART")
        if start is None:
            continue
        first = start.dt.date() if isinstance(start.dt, datetime) else start.dt
        end = ev.get("DTEND")
        if end is not None:
            last = end.dt.date() if isinstance(end.dt, datetime) else end.dt
        elif ev.get("DURATION") is not None:
            last = first + ev.get("DURATION").dt
        else:
            last = first + timedelta(days=1)
        summary = str(ev.get("SUMMARY") or "holiday")
        cats = ev.get("CATEGORIES")
        cat_text = " ".join(str(c) for v in (cats if isinstance(cats, list) else [cats] if cats else [])
                            for c in getattr(v, "cats", [v]))
        marked = f"{summary} {cat_text}".lower()
        target = opened if any(m in marked for m in ICAL_WORKDAY_MARKS) else closed
        d = first
        while d < last or d == first:
            target[d] = summary
            d += timedelta(days=1)
    both = set(closed) & set(opened)
    for d in both:  # a day marked a workday by one event and a holiday by another: the workday wins
        del closed[d]
    return IcalDays(closed, opened, frozenset(d.year for d in (*closed, *opened)))


class CalendarError(ValueError):
    """A calendar definition is wrong, or a question cannot be answered."""


# ---------------------------------------------------------------- parsing


class Interval(NamedTuple):
    """Open hours within one day, in minutes from local midnight (end ≤ 1440)."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


_INTERVAL_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_DURATION_RE = re.compile(r"^\s*(?:(\d+)\s*h)?\s*(?:(\d+)\s*m(?:in)?)?\s*$")


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _clock_minutes(hh: str, mm: str, text: str) -> int:
    h, m = int(hh), int(mm)
    if m > 59 or h > 24 or (h == 24 and m):
        raise CalendarError(f"bad time in {text!r}: hours 00-24, minutes 00-59")
    return h * 60 + m


def parse_intervals(spec: str | list[str]) -> tuple[Interval, ...]:
    """``"09:00-12:00,13:30-18:00"`` (or a list of such ranges) → sorted intervals.

    ``24:00`` may end a range; ranges must not be empty nor overlap.
    """
    parts = spec.split(",") if isinstance(spec, str) else [p for item in spec for p in item.split(",")]
    out: list[Interval] = []
    for part in parts:
        m = _INTERVAL_RE.match(part)
        if not m:
            raise CalendarError(f"bad hours {part.strip()!r}: expected HH:MM-HH:MM, e.g. 09:00-12:00")
        iv = Interval(_clock_minutes(m[1], m[2], part), _clock_minutes(m[3], m[4], part))
        if iv.end <= iv.start:
            raise CalendarError(f"bad hours {part.strip()!r}: the end must be after the start")
        out.append(iv)
    out.sort()
    for a, b in pairwise(out):
        if b.start < a.end:
            raise CalendarError(f"hours {a} and {b} overlap")
    return tuple(out)


def parse_duration_minutes(value: int | str) -> int:
    """A positive duration in minutes: ``90``, ``"15m"``, ``"2h"``, ``"1h30m"``."""
    if isinstance(value, bool):
        raise CalendarError(f"bad duration {value!r}: expected minutes or e.g. 15m, 2h, 1h30m")
    if isinstance(value, int):
        minutes = value
    else:
        m = _DURATION_RE.match(value)
        if not m or not (m[1] or m[2]):
            raise CalendarError(f"bad duration {value!r}: expected minutes or e.g. 15m, 2h, 1h30m")
        minutes = int(m[1] or 0) * 60 + int(m[2] or 0)
    if minutes <= 0:
        raise CalendarError(f"bad duration {value!r}: must be more than 0 minutes")
    return minutes


def load_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CalendarError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai)") from exc


# ---------------------------------------------------------------- configuration


HolidaySource = Literal["CN", "none"]


class CalendarConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One calendar as an admin writes it (``calendars:`` in the directory YAML).

    ``hours`` maps ``mon``…``sun``, ``weekdays``, ``weekend`` or ``daily`` to
    ranges (a list, or one comma-separated string); a single day's key wins
    over a group. Omitted: weekdays 09:00-18:00. ``workday_hours`` are the
    hours of a make-up workday or a custom ``open`` date (default: Monday's,
    else the first day that has hours). ``always_open: true`` is a 24×7
    calendar and takes no other key but ``timezone``.
    """

    timezone: str = DEFAULT_TIMEZONE
    hours: dict[str, str | list[str]] | None = None
    workday_hours: str | list[str] | None = None
    holidays: HolidaySource | None = None
    #: a published holiday calendar (iCalendar file, path relative to the
    #: directory file): see :func:`ical_days` for how its events are read
    holidays_ical: str | None = None
    closed: dict[date, str] = {}
    open: dict[date, str] = {}
    arranged_years: list[int] = []
    always_open: bool = False

    def __post_init__(self) -> None:
        load_zone(self.timezone)
        if self.always_open:
            extra = [k for k in ("hours", "workday_hours", "holidays", "holidays_ical") if getattr(self, k) is not None]
            extra += [k for k in ("closed", "open", "arranged_years") if getattr(self, k)]
            if extra:
                raise CalendarError(f"always_open calendars take no {', '.join(extra)}")
            return
        weekly_hours(self.hours)
        if self.workday_hours is not None:
            parse_intervals(self.workday_hours)
        both = sorted(set(self.closed) & set(self.open))
        if both:
            raise CalendarError(f"{both[0]} is both closed and open")


def weekly_hours(hours: Mapping[str, str | list[str]] | None) -> tuple[tuple[Interval, ...], ...]:
    """The ``hours:`` mapping → seven tuples of intervals, Monday first."""
    week: list[tuple[Interval, ...]] = [()] * 7
    spec = {"weekdays": DEFAULT_HOURS} if hours is None else hours
    unknown = [k for k in spec if k not in DAY_NAMES and k not in DAY_GROUPS]
    if unknown:
        raise CalendarError(f"unknown day {unknown[0]!r} in hours (mon…sun, weekdays, weekend, daily)")
    # groups first, so that a single day's entry overrides its group
    for key in sorted(spec, key=lambda k: k in DAY_NAMES):
        intervals = parse_intervals(spec[key])
        for wd in DAY_GROUPS[key] if key in DAY_GROUPS else (DAY_NAMES.index(key),):
            week[wd] = intervals
    return tuple(week)


# ---------------------------------------------------------------- the calendar


DayKind = Literal["weekly", "fallback", "holiday", "makeup", "closed", "open"]


class DayPlan(NamedTuple):
    """What one local date looks like and why."""

    date: date
    hours: tuple[Interval, ...]
    kind: DayKind
    name: str | None = None  # the holiday's / custom date's name

    @property
    def is_open(self) -> bool:
        return bool(self.hours)


class DayNote(msgspec.Struct, frozen=True):
    """One line of ``closed_days``/``makeup_workdays``: a date and why."""

    date: date
    weekday: str
    source: Literal["CN", "custom"]
    name: str | None = None
    name_zh: str | None = None


_Span = tuple[datetime, datetime]  # UTC instants [start, end)


class BusinessCalendar:
    """A named business-hours calendar; see the module docstring.

    Day plans are memoized per date (a calendar is built once per directory
    load and asked about the same few weeks again and again).
    """

    def __init__(
        self,
        name: str,
        tz: ZoneInfo,
        week: tuple[tuple[Interval, ...], ...],
        *,
        workday_hours: tuple[Interval, ...] | None = None,
        holidays: HolidaySource = "CN",
        closed: Mapping[date, str] | None = None,
        opened: Mapping[date, str] | None = None,
        arranged_years: frozenset[int] = frozenset(),
        always_open: bool = False,
    ) -> None:
        if len(week) != 7:
            raise CalendarError("weekly hours need seven days")
        self.name = name
        self.tz = tz
        self.week = week
        self.workday_hours = workday_hours or week[0] or next((d for d in week if d), ())
        self.holidays = holidays
        self.closed = dict(closed or {})
        self.opened = dict(opened or {})
        self.arranged_years = arranged_years
        self.always_open = always_open
        self._plans: dict[date, DayPlan] = {}
        self._spans: dict[date, tuple[_Span, ...]] = {}
        self._fallback: set[int] = set()
        self._added: dict[tuple[datetime, float], datetime] = {}  # add_business_minutes, memoized

    # -- construction

    @classmethod
    def from_config(cls, name: str, cfg: CalendarConfig, ical: IcalDays | None = None) -> BusinessCalendar:
        """``ical``: the days of ``cfg.holidays_ical`` (read by the caller);
        the YAML's own ``closed``/``open`` win over them, and every year the
        iCal file has events for counts as arranged (its days are the year's
        holidays; the package's data is not consulted for it)."""
        tz = load_zone(cfg.timezone)
        if cfg.always_open:
            return cls.twenty_four_seven(name, tz)
        closed, opened, years = (ical.closed, ical.open, ical.years) if ical else ({}, {}, frozenset())
        closed = {d: n for d, n in closed.items() if d not in cfg.open}
        opened = {d: n for d, n in opened.items() if d not in cfg.closed}
        return cls(
            name,
            tz,
            weekly_hours(cfg.hours),
            workday_hours=parse_intervals(cfg.workday_hours) if cfg.workday_hours is not None else None,
            holidays=cfg.holidays or "CN",
            closed={**closed, **cfg.closed},
            opened={**opened, **cfg.open},
            arranged_years=frozenset(cfg.arranged_years) | years,
        )

    @classmethod
    def twenty_four_seven(cls, name: str = "24x7", tz: ZoneInfo | None = None) -> BusinessCalendar:
        whole_day = (Interval(0, 1440),)
        return cls(name, tz or ZoneInfo(DEFAULT_TIMEZONE), (whole_day,) * 7, holidays="none", always_open=True)

    # -- days

    def covers(self, year: int) -> bool:
        """Whether the holidays of ``year`` are known (library data or arranged by hand)."""
        return self.holidays == "none" or CN_FIRST_YEAR <= year <= CN_LAST_YEAR or year in self.arranged_years

    def fallback_years(self) -> list[int]:
        """Years for which this calendar was asked about a day and had to use weekly hours alone."""
        return sorted(self._fallback)

    def day(self, d: date) -> DayPlan:
        """The plan of local date ``d``: custom dates first, then holidays, then the week."""
        plan = self._plans.get(d)
        if plan is None:
            plan = self._plans[d] = self._plan(d)
        return plan

    def _plan(self, d: date) -> DayPlan:
        if d in self.closed:
            return DayPlan(d, (), "closed", self.closed[d])
        if d in self.opened:
            return DayPlan(d, self.workday_hours, "open", self.opened[d])
        weekly = self.week[d.weekday()]
        if self.holidays == "none" or d.year in self.arranged_years:
            return DayPlan(d, weekly, "weekly")
        if not CN_FIRST_YEAR <= d.year <= CN_LAST_YEAR:
            self._fallback.add(d.year)
            return DayPlan(d, weekly, "fallback")
        if d in cn_holidays.workdays:
            return DayPlan(d, self.workday_hours, "makeup", cn_holidays.workdays[d])
        if d in cn_holidays.holidays:
            return DayPlan(d, (), "holiday", cn_holidays.holidays[d])
        return DayPlan(d, weekly, "weekly")

    def closed_days(self, year: int) -> list[DayNote]:
        """Public holidays (weekend days inside a holiday included) and custom closed dates."""
        return self._notes(year, ("holiday", "closed"))

    def makeup_workdays(self, year: int) -> list[DayNote]:
        """Make-up workdays (调休) and custom open dates."""
        return self._notes(year, ("makeup", "open"))

    def _notes(self, year: int, kinds: tuple[DayKind, ...]) -> list[DayNote]:
        if self.always_open:
            return []
        out = []
        d = date(year, 1, 1)
        while d.year == year:
            plan = self.day(d)
            if plan.kind in kinds:
                custom = plan.kind in ("closed", "open")
                out.append(
                    DayNote(
                        d,
                        DAY_NAMES[d.weekday()],
                        "custom" if custom else "CN",
                        plan.name,
                        None if custom else _ZH_NAMES.get(plan.name or ""),
                    )
                )
            d += timedelta(days=1)
        return out

    # -- instants

    def _utc(self, dt: datetime) -> datetime:
        """``dt`` in UTC; a naive time is local wall-clock time in this calendar's zone.

        All arithmetic is done in UTC: Python adds a timedelta to an aware
        datetime in wall-clock time, which is wrong across a DST change.
        """
        return (dt.replace(tzinfo=self.tz) if dt.tzinfo is None else dt).astimezone(_UTC)

    def _day_spans(self, d: date) -> tuple[_Span, ...]:
        spans = self._spans.get(d)
        if spans is None:
            spans = self._spans[d] = tuple(s for s in (self._span(d, iv) for iv in self.day(d).hours) if s[1] > s[0])
        return spans

    def _span(self, d: date, iv: Interval) -> _Span:
        # A local time in a DST gap resolves (fold=0) to the instant after the
        # gap, so an interval crossing a gap is as long as it really is.
        return (self._instant(d, iv.start), self._instant(d, iv.end))

    def _instant(self, d: date, minute: int) -> datetime:
        if minute == 1440:
            d, minute = d + timedelta(days=1), 0
        return datetime.combine(d, time(minute // 60, minute % 60), self.tz).astimezone(_UTC)

    def is_open(self, dt: datetime) -> bool:
        if self.always_open:
            return True
        dt = self._utc(dt)
        return any(s <= dt < e for s, e in self._day_spans(dt.astimezone(self.tz).date()))

    def add_business_minutes(self, start: datetime, minutes: float) -> datetime:
        """The instant at which ``minutes`` of open time have passed since ``start``.

        Walks whole open intervals (a day at a time), never minute by minute.
        Zero minutes from a closed moment gives the next opening; a target
        that runs out exactly at a closing time is due at that closing time.
        """
        if minutes < 0:
            raise CalendarError("minutes must not be negative")
        start = self._utc(start)
        key = (start, minutes)
        found = self._added.get(key)
        if found is None:  # a ticket's SLA asks the same questions on every message
            if len(self._added) >= 8192:
                self._added.clear()
            found = self._added[key] = self._add_business_minutes(start, minutes)
        return found

    def add_business_minutes_pair(self, start: datetime, first: float, second: float) -> tuple[datetime, datetime]:
        """``(add_business_minutes(start, first), add_business_minutes(start, second))``
        from one walk over the open spans: a new ticket's SLA asks for a
        target's warning and due time from the same start. The same instants
        as two walks (both remainders are spent span by span in exact
        ``timedelta`` arithmetic), and the same memo."""
        if first < 0 or second < 0:
            raise CalendarError("minutes must not be negative")
        if second < first:
            b, a = self.add_business_minutes_pair(start, second, first)
            return a, b
        start = self._utc(start)
        added = self._added
        a, b = added.get((start, first)), added.get((start, second))
        if a is None or b is None:
            a, b = self._add_business_minutes_pair(start, first, second)
            if len(added) >= 8191:
                added.clear()
            added[(start, first)], added[(start, second)] = a, b
        return a, b

    def _add_business_minutes_pair(self, start: datetime, first: float, second: float) -> tuple[datetime, datetime]:
        """:meth:`_add_business_minutes` for ``first`` ≤ ``second`` at once: the
        walk goes on past the first instant to the second."""
        rest_a, rest_b = timedelta(minutes=first), timedelta(minutes=second)
        if self.always_open:
            return (start + rest_a).astimezone(self.tz), (start + rest_b).astimezone(self.tz)
        d = start.astimezone(self.tz).date()
        spans = [s for s in self._day_spans(d) if s[1] > start]
        found: datetime | None = None
        closed_run = 0
        while True:
            for s, e in spans:
                if s < start:
                    s = start
                length = e - s
                if found is None:
                    if rest_a <= length:
                        found = (s + rest_a).astimezone(self.tz)
                    else:
                        rest_a -= length
                if rest_b <= length:
                    return found, (s + rest_b).astimezone(self.tz)  # type: ignore[return-value]  # first ≤ second
                rest_b -= length
            closed_run = 0 if spans else closed_run + 1
            if closed_run > MAX_CLOSED_RUN:
                raise CalendarError(f"calendar {self.name!r} has no open hours for {MAX_CLOSED_RUN} days after {d}")
            d += _DAY
            spans = self._day_spans(d)

    def _add_business_minutes(self, start: datetime, minutes: float) -> datetime:
        """Spends ``minutes`` over the open spans ending after ``start``, day by
        day; raises when no day is open for too long. (One loop, no generator:
        a new ticket's SLA asks this four times, each a different instant.)"""
        remaining = timedelta(minutes=minutes)
        if self.always_open:
            return (start + remaining).astimezone(self.tz)
        d = start.astimezone(self.tz).date()
        spans = [s for s in self._day_spans(d) if s[1] > start]  # the first day: what is left of it
        closed_run = 0
        while True:
            for s, e in spans:
                if s < start:
                    s = start
                length = e - s
                if remaining <= length:
                    return (s + remaining).astimezone(self.tz)
                remaining -= length
            closed_run = 0 if spans else closed_run + 1
            if closed_run > MAX_CLOSED_RUN:
                raise CalendarError(f"calendar {self.name!r} has no open hours for {MAX_CLOSED_RUN} days after {d}")
            d += _DAY
            spans = self._day_spans(d)

    def business_minutes_between(self, a: datetime, b: datetime) -> float:
        """Open minutes in ``[a, b)``; negative when ``b`` is before ``a``."""
        a, b = self._utc(a), self._utc(b)
        if b < a:
            return -self.business_minutes_between(b, a)
        if self.always_open:
            return (b - a) / timedelta(minutes=1)
        total = timedelta()
        d, last = a.astimezone(self.tz).date(), b.astimezone(self.tz).date()
        while d <= last:
            for s, e in self._day_spans(d):
                lo, hi = max(s, a), min(e, b)
                if hi > lo:
                    total += hi - lo
            d += timedelta(days=1)
        return total / timedelta(minutes=1)

    def describe(self) -> str:
        """One line for people: zone, hours and holiday source."""
        if self.always_open:
            return f"{self.name}: 24x7 ({self.tz.key})"
        days = ", ".join(f"{DAY_NAMES[i]} {' '.join(map(str, hours))}" for i, hours in enumerate(self.week) if hours)
        return f"{self.name}: {self.tz.key}; {days or 'never open'}; holidays {self.holidays}"
