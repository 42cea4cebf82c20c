"""Holiday data beyond the package's horizon: iCalendar import and the
check that warns when a calendar in use has none (explicit ``now``; the
horizon is constructed, never read from the installed package)."""

from __future__ import annotations

from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest

import routing.calendar as calmod
from routing.calendar import holiday_data_gaps, ical_days
from routing.directory import DirectoryError, parse_directory

SH = ZoneInfo("Asia/Shanghai")

ICS = b"""BEGIN:VCALENDAR\r
VERSION:2.0\r
PRODID:-//example//holidays//CN\r
BEGIN:VEVENT\r
UID:ny-2031\r
DTSTART;VALUE=DATE:20310101\r
DTEND;VALUE=DATE:20310102\r
SUMMARY:\xe5\x85\x83\xe6\x97\xa6\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:sf-2031\r
DTSTART;VALUE=DATE:20310122\r
DTEND;VALUE=DATE:20310129\r
SUMMARY:\xe6\x98\xa5\xe8\x8a\x82\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:makeup-2031\r
DTSTART;VALUE=DATE:20310119\r
SUMMARY:\xe6\x98\xa5\xe8\x8a\x82\xe8\xa1\xa5\xe7\x8f\xad\r
END:VEVENT\r
BEGIN:VEVENT\r
UID:makeup2-2031\r
DTSTART;VALUE=DATE:20310208\r
SUMMARY:Spring Festival\r
CATEGORIES:workday\r
END:VEVENT\r
END:VCALENDAR\r
"""

DIRECTORY = """
calendars:
  cn:
    hours: {weekdays: 09:00-18:00}
    holidays_ical: cn.ics
  plain:
    hours: {weekdays: 09:00-18:00}
  world:
    hours: {weekdays: 09:00-18:00}
    holidays: none
"""


@pytest.fixture
def horizon_2030(monkeypatch):
    """The holiday package knows years up to 2030 (constructed)."""
    monkeypatch.setattr(calmod, "CN_LAST_YEAR", 2030)


def test_ical_events_are_closed_days_and_workday_events_open_days():
    days = ical_days(ICS)
    assert days.closed[date(2031, 1, 1)] == "元旦"
    assert [d for d in days.closed if d.month == 1 and d.day >= 22] == [date(2031, 1, d) for d in range(22, 29)]
    assert days.open == {date(2031, 1, 19): "春节补班", date(2031, 2, 8): "Spring Festival"}
    assert days.years == frozenset({2031})


def test_a_directory_calendar_takes_a_published_ical_beyond_the_horizon(tmp_path, horizon_2030):
    (tmp_path / "cn.ics").write_bytes(ICS)
    d = parse_directory(DIRECTORY, str(tmp_path / "directory.yaml"))
    cn, plain = d.calendars["cn"], d.calendars["plain"]
    new_year = datetime(2031, 1, 1, 11, 0, tzinfo=SH)  # a Wednesday
    assert not cn.is_open(new_year) and plain.is_open(new_year)  # plain falls back to weekly hours
    makeup_sunday = datetime(2031, 1, 19, 11, 0, tzinfo=SH)
    assert cn.is_open(makeup_sunday) and not plain.is_open(makeup_sunday)
    assert cn.day(date(2031, 1, 1)).kind == "closed" and cn.covers(2031)


def test_the_check_names_calendars_without_holiday_data_for_the_next_60_days(tmp_path, horizon_2030):
    (tmp_path / "cn.ics").write_bytes(ICS)
    d = parse_directory(DIRECTORY, str(tmp_path / "directory.yaml"))
    early = datetime(2030, 6, 1, tzinfo=timezone.utc)
    assert holiday_data_gaps(d.calendars, early) == {}  # 2030 is known, 60 days ahead too
    late = datetime(2030, 12, 1, tzinfo=timezone.utc)  # 2031-01-30 is within 60 days
    assert holiday_data_gaps(d.calendars, late) == {"plain": [2031]}  # cn has its iCal; world needs none
    assert holiday_data_gaps(d.calendars, datetime(2032, 3, 1, tzinfo=timezone.utc)) == {"cn": [2032], "plain": [2032]}


def test_an_unreadable_or_broken_ical_is_a_directory_error_with_its_line(tmp_path):
    with pytest.raises(DirectoryError, match=r"directory.yaml:5: calendars.cn.holidays_ical: cannot read cn.ics"):
        parse_directory(DIRECTORY, str(tmp_path / "directory.yaml"))
    (tmp_path / "cn.ics").write_bytes(b"not a calendar")
    with pytest.raises(DirectoryError, match="not an iCalendar file"):
        parse_directory(DIRECTORY, str(tmp_path / "directory.yaml"))
