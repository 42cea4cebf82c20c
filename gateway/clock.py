"""The daemon's one clock.

``create_app(config, clock=…)`` takes a ``Clock`` — a zero-argument callable
returning an aware UTC ``datetime`` — and everything whose behaviour depends on
the time reads only it (``app[keys.CLOCK]``): the pipeline's snapshot time (so
the rules' business hours and holidays), the assignment scheduler, SLA timers
and overflow, the outbox's back-off, the rules dry-run, replies and status
changes, and the times the store records by itself. The default is the real
time; tests pin it (``ticking_from`` here, ``tests/clock.py`` for a clock they
move by hand).

Durations that only bound a wait (deadlines, poll intervals, supervisor
back-off) use ``time.monotonic`` instead: they do not depend on the date.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Callable

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The real time (aware UTC)."""
    return datetime.now(timezone.utc)


def ticking_from(start: datetime) -> Clock:
    """A clock that reads ``start`` now and advances with the monotonic clock
    (what ``faketime -f '@…'`` does to a whole process): the date and hour are
    pinned, while delays, leases and back-off still elapse."""
    if start.tzinfo is None:
        raise ValueError("the clock's start must be an aware datetime")
    start = start.astimezone(timezone.utc)
    origin = time.monotonic()

    def now() -> datetime:
        return start + timedelta(seconds=time.monotonic() - origin)

    return now
