"""Clocks for the tests: no result may depend on the hour, the weekday or
today's date (issue 10).

- ``INSTANTS``: the three moments the gateway tests run at — Shanghai business
  hours (a Tuesday 11:00), the same day's evening (21:30) and a public holiday
  (National Day, 2026-10-01 10:00: a Thursday morning, open by weekly hours
  alone). A test that takes the ``gateway_clock`` fixture runs once at each;
  ``@pytest.mark.clock("evening")`` pins it to the named ones.
- ``FakeClock``: a clock the test moves by hand (``advance``), for SLA timers,
  overflow and back-off.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

SHANGHAI = ZoneInfo("Asia/Shanghai")

BUSINESS_HOURS = "business-hours"
EVENING = "evening"
HOLIDAY = "holiday"

INSTANTS: dict[str, datetime] = {
    BUSINESS_HOURS: datetime(2026, 12, 1, 11, 0, tzinfo=SHANGHAI),  # a Tuesday
    EVENING: datetime(2026, 12, 1, 21, 30, tzinfo=SHANGHAI),
    HOLIDAY: datetime(2026, 10, 1, 10, 0, tzinfo=SHANGHAI),  # National Day
}


class FakeClock:
    """An injectable clock: ``clock()`` is now; ``clock.advance(minutes=…)``
    moves it, ``clock.set(when)`` puts it anywhere. Aware datetimes only."""

    def __init__(self, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("a FakeClock needs an aware datetime")
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, when: datetime) -> datetime:
        if when.tzinfo is None:
            raise ValueError("a FakeClock needs an aware datetime")
        self.now = when
        return self.now
