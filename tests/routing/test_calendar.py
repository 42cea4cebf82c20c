"""Business-hours calendars on real mainland-China arrangements (pure tests).

The holiday cases follow the State Council's notices as transcribed by
chinesecalendar 1.11: 2025 National Day + Mid-Autumn, 1-8 October, with the
make-up workdays Sunday 2025-09-28 and Saturday 2025-10-11; 2026 Spring
Festival, 15-23 February, with make-up Saturdays 2026-02-14 and 2026-02-28.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from routing.calendar import (
    MAX_CLOSED_RUN,
    BusinessCalendar,
    CalendarConfig,
    CalendarError,
    parse_duration_minutes,
    parse_intervals,
)

SH = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")


def cal(name: str = "office", **cfg) -> BusinessCalendar:
    return BusinessCalendar.from_config(name, CalendarConfig(**cfg))


OFFICE = cal(hours={"weekdays": "09:00-18:00"})
SPLIT = cal(hours={"weekdays": ["09:00-12:00", "13:30-18:00"]})
CUSTOM = cal(
    hours={"weekdays": "09:00-18:00"},
    closed={date(2025, 11, 17): "stocktake"},
    open={date(2025, 11, 15): "open day", date(2025, 10, 3): "holiday duty"},
)
CALENDARS = {"office": OFFICE, "split": SPLIT, "custom": CUSTOM}


def local(text: str, tz: ZoneInfo = SH) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=tz)


@pytest.mark.parametrize(
    "calendar, start, minutes, due, why",
    [
        ("office", "2025-09-30 17:00", 120, "2025-10-09 10:00", "1-8 Oct closed"),
        ("office", "2025-09-26 17:55", 480, "2025-09-28 16:55", "Sunday 09-28 is a make-up workday"),
        ("office", "2025-10-10 17:00", 120, "2025-10-11 10:00", "Saturday 10-11 is a make-up workday"),
        ("office", "2025-10-01 10:00", 60, "2025-10-09 10:00", "opened during the holiday"),
        ("office", "2026-02-13 17:00", 120, "2026-02-14 10:00", "Saturday 02-14 is a make-up workday"),
        ("office", "2026-02-14 17:30", 60, "2026-02-24 09:30", "15-23 Feb closed"),
        ("office", "2026-02-27 17:00", 120, "2026-02-28 10:00", "Saturday 02-28 is a make-up workday"),
        ("office", "2025-11-14 17:55", 480, "2025-11-17 16:55", "Friday 17:55 with an 8-hour target"),
        ("office", "2025-11-15 10:00", 60, "2025-11-17 10:00", "opened on a weekend"),
        ("office", "2025-11-17 09:00", 540, "2025-11-17 18:00", "runs out exactly at closing"),
        ("office", "2025-11-15 10:00", 0, "2025-11-17 09:00", "zero minutes from closed time: next opening"),
        ("office", "2025-11-17 08:00", 9 * 60 * 5 + 30, "2025-11-24 09:30", "a whole week skipped at once"),
        ("split", "2025-11-17 11:30", 60, "2025-11-17 14:00", "lunch break skipped"),
        ("split", "2025-11-17 12:30", 30, "2025-11-17 14:00", "opened at lunch"),
        ("split", "2025-11-17 11:00", 60, "2025-11-17 12:00", "runs out at the lunch break"),
        ("split", "2025-11-14 17:00", 480, "2025-11-17 17:30", "Friday 17:00 + 8h on 7.5-hour days"),
        ("split", "2026-02-13 17:00", 480, "2026-02-14 17:30", "make-up Saturday keeps the split hours"),
        ("custom", "2025-11-14 17:00", 120, "2025-11-15 10:00", "custom open Saturday"),
        ("custom", "2025-11-15 17:00", 120, "2025-11-18 10:00", "custom closed Monday"),
        ("custom", "2025-09-30 17:00", 120, "2025-10-03 10:00", "custom open inside a public holiday"),
    ],
)
def test_add_business_minutes(calendar, start, minutes, due, why):
    got = CALENDARS[calendar].add_business_minutes(local(start), minutes)
    assert got == local(due), why
    assert got.utcoffset() == timedelta(hours=8)


@pytest.mark.parametrize(
    "calendar, a, b, minutes",
    [
        ("office", "2025-09-26 09:00", "2025-10-13 09:00", 63 * 60),  # Fri, Sun 28, Mon-Tue, Thu-Sat 9-11
        ("office", "2026-02-13 09:00", "2026-03-02 09:00", 63 * 60),  # Fri, Sat 14, Tue 24-Fri 27, Sat 28
        ("office", "2025-11-17 10:00", "2025-11-17 10:00", 0),
        ("office", "2025-11-17 12:00", "2025-11-17 10:00", -120),
        ("split", "2025-11-17 00:00", "2025-11-18 00:00", 450),
        ("split", "2025-11-17 11:00", "2025-11-17 14:00", 90),
    ],
)
def test_business_minutes_between(calendar, a, b, minutes):
    assert CALENDARS[calendar].business_minutes_between(local(a), local(b)) == minutes


@pytest.mark.parametrize("start", ["2025-09-26 17:55", "2026-02-13 11:17", "2025-12-31 23:00"])
@pytest.mark.parametrize("minutes", [1, 59, 450, 451, 5000])
def test_add_and_between_agree(start, minutes):
    for calendar in (OFFICE, SPLIT):
        due = calendar.add_business_minutes(local(start), minutes)
        assert calendar.business_minutes_between(local(start), due) == minutes


def test_is_open():
    assert OFFICE.is_open(local("2025-09-28 10:00"))  # make-up Sunday
    assert not OFFICE.is_open(local("2025-10-06 10:00"))  # Mid-Autumn Festival
    assert not SPLIT.is_open(local("2025-11-17 12:30"))
    assert SPLIT.is_open(datetime(2025, 11, 17, 13, 30))  # naive = the calendar's local time
    assert not SPLIT.is_open(local("2025-11-17 18:00"))  # intervals are [start, end)


def test_closed_days_and_makeup_workdays_2025_and_2026():
    oct_2025 = [(n.date, n.name, n.name_zh) for n in OFFICE.closed_days(2025) if n.date.month == 10]
    assert [d.day for d, _, _ in oct_2025] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert (date(2025, 10, 6), "Mid-autumn Festival", "中秋") in oct_2025
    assert (date(2025, 10, 1), "National Day", "国庆节") in oct_2025
    makeup_2025 = {n.date for n in OFFICE.makeup_workdays(2025)}
    assert {date(2025, 9, 28), date(2025, 10, 11)} <= makeup_2025
    spring = [n.date.day for n in OFFICE.closed_days(2026) if n.name == "Spring Festival"]
    assert spring == list(range(15, 24))
    makeup_2026 = [(n.date, n.weekday, n.source) for n in OFFICE.makeup_workdays(2026) if n.date.month == 2]
    assert makeup_2026 == [(date(2026, 2, 14), "sat", "CN"), (date(2026, 2, 28), "sat", "CN")]


def test_custom_dates_are_listed():
    assert (date(2025, 11, 17), "custom", "stocktake") in [(n.date, n.source, n.name) for n in CUSTOM.closed_days(2025)]
    opened = [(n.date, n.source) for n in CUSTOM.makeup_workdays(2025)]
    assert (date(2025, 11, 15), "custom") in opened and (date(2025, 10, 3), "custom") in opened
    assert date(2025, 10, 3) not in {n.date for n in CUSTOM.closed_days(2025)}


def test_year_not_covered_falls_back_to_weekdays_and_says_so(cn_holidays_until_2026):
    office = cal(hours={"weekdays": "09:00-18:00"})
    assert office.covers(2026) and not office.covers(2027)
    office.add_business_minutes(local("2026-12-31 10:00"), 60)
    assert office.fallback_years() == []
    # 2027-01-01 is a Friday; data ending with 2026 does not know it is New Year's Day
    assert office.add_business_minutes(local("2027-01-01 10:00"), 60) == local("2027-01-01 11:00")
    assert office.fallback_years() == [2027]
    assert office.closed_days(2027) == [] and office.makeup_workdays(2027) == []


def test_next_year_arranged_by_hand_is_not_a_fallback(cn_holidays_until_2026):
    office = cal(hours={"weekdays": "09:00-18:00"}, closed={date(2027, 1, 1): "元旦"}, arranged_years=[2027])
    assert office.covers(2027)
    assert office.add_business_minutes(local("2027-01-01 10:00"), 60) == local("2027-01-04 10:00")
    assert office.fallback_years() == []


def test_24x7():
    always = cal("always", always_open=True)
    assert always.add_business_minutes(local("2026-02-15 23:30"), 60) == local("2026-02-16 00:30")
    assert always.business_minutes_between(local("2026-02-14 00:00"), local("2026-02-24 00:00")) == 10 * 1440
    assert always.is_open(local("2026-02-17 03:00"))
    assert always.closed_days(2026) == [] and always.makeup_workdays(2026) == []


@pytest.mark.parametrize(
    "start, minutes, due",
    [
        ("2025-03-29 12:00", 1440, "2025-03-30 13:00"),  # spring forward: Sunday has 23 hours
        ("2025-10-25 12:00", 1440, "2025-10-26 11:00"),  # fall back: Sunday has 25 hours
        ("2025-03-30 01:00", 120, "2025-03-30 04:00"),
    ],
)
def test_dst_round_the_clock_in_berlin(start, minutes, due):
    berlin = cal(timezone="Europe/Berlin", hours={"daily": "00:00-24:00"}, holidays="none")
    assert berlin.add_business_minutes(local(start, BERLIN), minutes) == local(due, BERLIN)


def test_dst_days_have_their_real_length():
    berlin = cal(timezone="Europe/Berlin", hours={"daily": "00:00-24:00"}, holidays="none")
    weekend = lambda sat, mon: berlin.business_minutes_between(local(sat, BERLIN), local(mon, BERLIN))  # noqa: E731
    assert weekend("2025-03-29 00:00", "2025-03-31 00:00") == 47 * 60
    assert weekend("2025-10-25 00:00", "2025-10-27 00:00") == 49 * 60
    night = cal(timezone="Europe/Berlin", hours={"daily": "01:00-04:00"}, holidays="none")
    assert night.business_minutes_between(local("2025-03-30 00:00", BERLIN), local("2025-03-31 00:00", BERLIN)) == 120


def test_dst_office_hours_keep_wall_clock_times():
    berlin = cal(timezone="Europe/Berlin", hours={"weekdays": "09:00-17:00"}, holidays="none")
    due = berlin.add_business_minutes(local("2025-03-28 16:00", BERLIN), 120)
    assert due.isoformat() == "2025-03-31T10:00:00+02:00"
    assert berlin.is_open(datetime.fromisoformat("2025-03-31T07:30:00+00:00"))  # 09:30 CEST
    assert not berlin.is_open(datetime.fromisoformat("2025-03-31T06:30:00+00:00"))  # 08:30 CEST
    # a start given in UTC is answered in the calendar's zone
    assert OFFICE.add_business_minutes(datetime.fromisoformat("2025-09-30T09:30:00+00:00"), 60).isoformat() == (
        "2025-10-09T09:30:00+08:00"
    )


def test_weekly_hours_groups_and_overrides():
    c = cal(hours={"weekdays": "09:00-18:00", "fri": "09:00-15:00", "sat": "10:00-12:00"})
    assert c.add_business_minutes(local("2025-11-14 14:00"), 120) == local("2025-11-15 11:00")


def test_a_calendar_that_never_opens_fails_instead_of_looping():
    never = BusinessCalendar("never", SH, ((),) * 7, holidays="none")
    with pytest.raises(CalendarError, match="no open hours"):
        never.add_business_minutes(local("2025-11-17 09:00"), 1)


@pytest.mark.parametrize(
    "spec, error",
    [
        ("9-12", "expected HH:MM-HH:MM"),
        ("12:00-09:00", "end must be after the start"),
        ("09:00-12:00,11:00-13:00", "overlap"),
        ("09:00-24:30", "hours 00-24"),
        ("09:60-10:00", "minutes 00-59"),
    ],
)
def test_bad_intervals(spec, error):
    with pytest.raises(CalendarError, match=error):
        parse_intervals(spec)


@pytest.mark.parametrize("text, minutes", [(90, 90), ("15m", 15), ("2h", 120), ("1h30m", 90), ("45min", 45)])
def test_durations(text, minutes):
    assert parse_duration_minutes(text) == minutes


@pytest.mark.parametrize("text", ["0m", "3d", "", "h", True, -5])
def test_bad_durations(text):
    with pytest.raises(CalendarError):
        parse_duration_minutes(text)


def _walk_spans(c: BusinessCalendar, start: datetime, minutes: float) -> datetime:
    """The oracle: ``_add_business_minutes`` as it was, over a generator of the open spans."""

    def spans_from(start: datetime):
        d = start.astimezone(c.tz).date()
        closed_run = 0
        while True:
            spans = [s for s in c._day_spans(d) if s[1] > start]
            yield from spans
            closed_run = 0 if spans else closed_run + 1
            if closed_run > MAX_CLOSED_RUN:
                raise CalendarError(f"calendar {c.name!r} has no open hours for {MAX_CLOSED_RUN} days after {d}")
            d += timedelta(days=1)

    remaining = timedelta(minutes=minutes)
    if c.always_open:
        return (start + remaining).astimezone(c.tz)
    for s, e in spans_from(start):
        s = max(s, start)
        if remaining <= e - s:
            return (s + remaining).astimezone(c.tz)
        remaining -= e - s
    raise AssertionError("unreachable")


@pytest.mark.parametrize("name", [*CALENDARS, "berlin", "never", "weekly"])
def test_add_business_minutes_walks_the_spans_as_before(name):
    c = {"berlin": cal(timezone="Europe/Berlin", hours={"weekdays": ["08:00-12:00", "13:00-17:00"]}),
         "never": cal(hours={}), "weekly": cal(hours={"sat": "10:00-11:00"}, holidays="none")}.get(name) \
        or CALENDARS[name]
    rng = random.Random(name)
    # at a closing time exactly; 120 weeks of Saturday hours (closed runs that end, ~840 days)
    cases = [(local("2025-11-14 18:00"), 0), (local("2026-03-02 12:00"), 0), (local("2025-11-14 11:00"), 7200)]
    for _ in range(400):
        # around the 2025 National Day and 2026 Spring Festival (make-up days), and Berlin's DST changes
        start = local("2025-09-25 00:00") + timedelta(minutes=rng.randrange(0, 60 * 24 * 200),
                                                       microseconds=rng.choice((0, 0, 1, 250_000)))
        cases.append((start, rng.choice((0, 1, 12.5, 90, 96.0, 120, 450, 1080.0, 1440, 4800))))
    for start, minutes in cases:
        start = start.astimezone(ZoneInfo("UTC"))
        try:
            expected: object = _walk_spans(c, start, minutes)
        except CalendarError as e:
            expected = str(e)
        try:
            got: object = c._add_business_minutes(start, minutes)
        except CalendarError as e:
            got = str(e)
        assert got == expected and str(got) == str(expected)  # the same instant, in the same zone
