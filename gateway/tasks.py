"""Stopping background tasks so that a shutdown never hangs."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(*tasks: asyncio.Future | None, retry_s: float = 0.5) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again any task that is
    still running after ``retry_s``: a loop can swallow its cancellation —
    Python 3.11's ``asyncio.wait_for`` returns the inner result when the
    cancel arrives as the inner awaitable completes (gh-86296), and a client
    library may turn a cancel into an error the loop catches — and a single
    ``cancel()`` then leaves ``gather`` waiting for ever (seen: an app's
    cleanup hanging in a test under load)."""
    pending = {t for t in tasks if t is not None and not t.done()}
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=retry_s)
    for t in tasks:
        if t is not None and t.done() and not t.cancelled():
            with contextlib.suppress(BaseException):
                t.exception()  # retrieved: no "exception was never retrieved" at exit


def stop_if_cancelling() -> None:
    """Raise ``CancelledError`` when the running task was asked to stop: a
    client library (redis-py) may turn a cancel that hit its call into an
    error, and a loop that catches errors to retry calls this first, so that
    it stops rather than retry (or wait) for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
