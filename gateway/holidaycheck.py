"""Loud warnings when a calendar in use has no holiday data.

``chinesecalendar`` knows the mainland holidays up to the last State Council
notice it ships; after that a ``holidays: CN`` calendar (and a rules interval
with ``holidays: CN``) would answer with weekly hours alone — SLA clocks
running through 春节, the after-hours reply missing on New Year's Day. The
check (:func:`gaps`, a function of ``now``) runs at start and once a day on
the app's clock, and reports through:

- ``/readyz`` detail ``holiday_data`` (a warning: the gateway stays ready);
- the gauge ``omnigate_calendar_holiday_data_missing{calendar=…}`` (1 = some
  year between today and today + 60 days is not covered);
- one log line ``calendar.holiday_data_missing`` per check.

The cure: ``holidays_ical`` (a published iCalendar file) or ``closed:``/
``open:`` with ``arranged_years`` in the directory, or a newer
``chinesecalendar``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import Gauge

from routing.calendar import CN_FIRST_YEAR, CN_LAST_YEAR, holiday_data_gaps
from gateway.tasks import cancel_and_wait

log = structlog.get_logger(__name__)

AHEAD_DAYS = 60
CHECK_EVERY_S = 86400.0
STATE: web.AppKey[HolidayCheck] = web.AppKey("holiday_check", object)  # type: ignore[arg-type]


def gaps(directory: Any, rules_tree: Any, now: datetime, ahead_days: int = AHEAD_DAYS) -> dict[str, list[int]]:
    """Calendar name → years without holiday data between ``now`` and
    ``now + ahead_days``: the directory's calendars, and each rules interval
    with ``holidays: CN`` (as ``rules:NAME``) that no directory calendar of
    the same name replaces."""
    calendars: Mapping[str, Any] = directory.calendars if directory is not None else {}
    out = holiday_data_gaps(calendars, now, ahead_days)
    if rules_tree is not None:
        from datetime import timedelta

        years = range(now.year, (now + timedelta(days=ahead_days)).year + 1)
        for name, spec in rules_tree.intervals.items():
            if getattr(spec, "holidays", "none") == "CN" and name not in calendars:
                missing = [y for y in years if not CN_FIRST_YEAR <= y <= CN_LAST_YEAR]
                if missing:
                    out[f"rules:{name}"] = missing
    return out


class HolidayCheck:
    def __init__(self, directory: Any, rules: Any, registry: Any, clock: Callable[[], datetime]) -> None:
        self.directory, self.rules, self.clock = directory, rules, clock
        self.missing: dict[str, list[int]] = {}
        self.checked_at: datetime | None = None
        self._names: set[str] = set()
        self.gauge = Gauge("omnigate_calendar_holiday_data_missing",
                           f"1 when a calendar in use has no holiday data for some day of the next {AHEAD_DAYS} days",
                           ["calendar"], registry=registry)

    def check(self, now: datetime | None = None) -> dict[str, list[int]]:
        now = now or self.clock()
        tree = self.rules.tree if self.rules is not None else None
        self.missing = gaps(self.directory, tree, now)
        self.checked_at = now
        for name in self._names | set(self.missing):
            self.gauge.labels(name).set(1 if name in self.missing else 0)
        self._names |= set(self.missing)
        if self.missing:
            log.warning("calendar.holiday_data_missing", calendars=self.missing, ahead_days=AHEAD_DAYS,
                        hint="add holidays_ical (a published iCalendar file) or closed:/open: with arranged_years "
                             "to the directory's calendar, or upgrade chinesecalendar")
        return self.missing

    def readiness(self) -> tuple[bool, dict]:
        if not self.missing:
            return True, {"missing": {}}
        return True, {"missing": self.missing,
                      "warning": f"no holiday data for {', '.join(sorted(self.missing))}: they fall back to "
                                 "weekly hours (no public holidays, no make-up workdays)"}


def _app_clock(app: web.Application) -> Callable[[], datetime]:
    """The app's injected clock when it has one, else UTC now."""
    from gateway import keys

    key = getattr(keys, "CLOCK", None)
    clock = app.get(key) if key is not None else None
    return clock or (lambda: datetime.now(timezone.utc))


def setup(app: web.Application, directory: Any, rules: Any, registry: Any) -> HolidayCheck:
    from gateway import keys

    state = app[STATE] = HolidayCheck(directory, rules, registry, _app_clock(app))
    app[keys.READINESS]["holiday_data"] = state.readiness
    app.cleanup_ctx.append(_ctx)
    return state


async def _ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.clock = _app_clock(app)  # the clock may be set after setup

    def run_check() -> None:
        try:
            state.check()
        except Exception:  # noqa: BLE001 - a warning must never stop the daemon
            log.exception("calendar.holiday_check_failed")

    async def daily() -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY_S)
            run_check()

    run_check()  # at start, before the first request

    task = asyncio.create_task(daily(), name="omnigate-holiday-check")
    yield
    await cancel_and_wait(task)
