"""Test-only crash points: ``OMNIGATE_TEST_CRASH_AT=<point>[:<n>]`` makes the
daemon SIGKILL itself the n-th time (default the first) it reaches ``point``,
so the crash test kills it at exact moments instead of at random:

- ``journal_append``: a payload is durable in the journal, not yet acknowledged;
- ``commit``: inside the store's commit transaction, before it commits;
- ``outbox_send``: a reply left through its channel, its delivery not yet recorded.

Unset (always, outside tests), ``ARMED`` is False and each call site costs one
global read: ``if crashpoints.ARMED: crashpoints.reached("commit")``.
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = ("journal_append", "commit", "outbox_send")
ENV = "OMNIGATE_TEST_CRASH_AT"

_spec = os.environ.get(ENV, "").strip()
ARMED = bool(_spec)
_point, _, _count = _spec.partition(":")
if ARMED and _point not in POINTS:
    raise ValueError(f"{ENV}={_spec!r}: the point must be one of {', '.join(POINTS)}")
_remaining = int(_count or 1)
_lock = threading.Lock()


def reached(point: str) -> None:
    """Kill this process (SIGKILL: no cleanup, like a power cut) when ``point``
    is the armed one and its count runs out."""
    global _remaining
    if point != _point:
        return
    with _lock:
        _remaining -= 1
        if _remaining > 0:
            return
    os.kill(os.getpid(), signal.SIGKILL)
