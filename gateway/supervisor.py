"""The one place that owns connector lifecycles: restarts, back-off, state.

Connectors run long-lived coroutines (an IMAP IDLE loop per mailbox, an SMTP
server, a websocket) and raise the lifecycle errors of
:mod:`connectors.base`; the :class:`Supervisor` decides what happens next, so
no connector grows its own retry loop:

- ``NotReady`` and network errors (``OSError``, timeouts): retry after a
  capped exponential back-off with full jitter; an unexpected exception is
  retried the same way (logged with its traceback) so one odd server reply
  does not stop a mailbox for good;
- ``AuthFailed``: stop retrying and wait until :meth:`Supervisor.restart`
  (re-configuration) — the same credentials will not start working;
- ``Fatal``: the task stops, failed;
- a normal return: the task stopped, nothing left to run.

A run that stayed up for ``reset_after`` seconds resets the back-off, so a
connection that drops once a day reconnects quickly every time.

Each task's state (running / retrying with attempt and next try / failed with
reason / stopped / ready (webhook) for a webhook-only connector whose
``run`` returns at once) is exposed by :meth:`Supervisor.states` for ``/readyz``.
The retry schedule is :func:`backoff_delay`, a pure function; clock, sleep
and randomness are injectable so the whole policy is testable without sleeping.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import msgspec
import structlog

from connectors.base import AuthFailed, Fatal, NotReady

log = structlog.get_logger(__name__)

TaskFactory = Callable[[], Awaitable[None]]
#: ``ready (webhook)``: a webhook-only task returned at once (nothing runs in
#: the background; the platform pushes to its routes), which is healthy.
Status = Literal["running", "retrying", "failed", "stopped", "ready (webhook)"]
WEBHOOK_READY: Status = "ready (webhook)"


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """Capped exponential back-off: attempt n waits up to ``min(cap, base * 2**(n-1))``."""

    base: float = 1.0
    cap: float = 300.0
    reset_after: float = 60.0  # a run up this long resets the attempt count

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap):
            raise ValueError(f"back-off needs 0 < base <= cap, got base={self.base} cap={self.cap}")


def backoff_delay(attempt: int, policy: BackoffPolicy, rand: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based).

    "Full jitter": a uniform pick in ``[0, ceiling)`` where ``rand`` is the
    uniform draw in ``[0, 1)``; it spreads many connectors that failed
    together (one network outage) instead of having them retry in lockstep.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    # cap the exponent too: 2**attempt overflows a float long before it matters
    ceiling = min(policy.cap, policy.base * 2 ** min(attempt - 1, 64))
    return ceiling * rand


class TaskState(msgspec.Struct, frozen=True, omit_defaults=True):
    """One supervised task, as ``/readyz`` shows it."""

    status: Status
    attempt: int = 0  # failed runs since the last healthy one
    next_try_at: datetime | None = None  # when status == "retrying"
    reason: str | None = None  # the last error, free of secrets


# OSError covers ConnectionError, TimeoutError (asyncio's too) and ssl.SSLError
_RETRYABLE = (NotReady, OSError)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Supervisor:
    """Runs named connector coroutines and restarts them by the policy."""

    def __init__(
        self,
        policy: BackoffPolicy = BackoffPolicy(),
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rand = rand
        self._states: dict[str, TaskState] = {}
        self._factories: dict[str, TaskFactory] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        #: tasks whose normal return means "served by webhooks", not "stopped"
        self.webhook_tasks: frozenset[str] = frozenset()

    # ------------------------------------------------------------ public

    def states(self) -> dict[str, TaskState]:
        """A snapshot of every task this supervisor has run, by name."""
        return dict(self._states)

    def ready(self) -> bool:
        """True when no task is retrying or failed (stopped tasks are fine)."""
        return all(s.status in ("running", "stopped", WEBHOOK_READY) for s in self._states.values())

    async def run(self, tasks: Mapping[str, TaskFactory]) -> None:
        """Supervise ``tasks`` (name → coroutine factory, called once per
        attempt) until every one has stopped or failed with ``Fatal``.

        Cancelling this call cancels the tasks. Names are global to the
        supervisor (prefix them with the channel) and must not be running.
        """
        busy = sorted(n for n in tasks if n in self._factories)
        if busy:
            raise ValueError(f"task(s) already supervised: {', '.join(busy)}")
        self._factories.update(tasks)
        try:
            async with asyncio.TaskGroup() as group:
                for name in tasks:
                    group.create_task(self._supervise(name), name=f"supervise:{name}")
        finally:
            for name in tasks:
                self._factories.pop(name, None)
                self._wakeups.pop(name, None)

    def restart(self, name: str, factory: TaskFactory | None = None) -> None:
        """Re-configuration: wake a task parked on ``AuthFailed`` (optionally
        with a new factory, e.g. built from new credentials)."""
        if name not in self._factories:
            raise KeyError(f"no supervised task {name!r}")
        if factory is not None:
            self._factories[name] = factory
        event = self._wakeups.get(name)
        if event is not None:
            event.set()

    # ------------------------------------------------------------ internals

    def _set(self, name: str, state: TaskState) -> None:
        self._states[name] = state

    async def _supervise(self, name: str) -> None:
        attempt = 0
        while True:
            self._set(name, TaskState("running", attempt=attempt))
            started = self._clock()
            try:
                await self._factories[name]()
            except asyncio.CancelledError:
                self._set(name, TaskState("stopped", reason="cancelled"))
                raise
            except Fatal as exc:
                self._set(name, TaskState("failed", reason=_reason(exc)))
                log.error("task_failed", task=name, reason=_reason(exc))
                return
            except AuthFailed as exc:
                await self._park(name, _reason(exc))
                attempt = 0
                continue
            except Exception as exc:
                if self._clock() - started >= self.policy.reset_after:
                    attempt = 0
                attempt += 1
                await self._back_off(name, attempt, exc)
                continue
            if name in self.webhook_tasks:
                self._set(name, TaskState(WEBHOOK_READY))
                log.info("task_webhook_only", task=name)
                return
            self._set(name, TaskState("stopped"))
            log.info("task_stopped", task=name)
            return

    async def _back_off(self, name: str, attempt: int, exc: Exception) -> None:
        delay = backoff_delay(attempt, self.policy, self._rand())
        reason = _reason(exc)
        at = datetime.fromtimestamp(self._wall_clock() + delay, tz=timezone.utc)
        self._set(name, TaskState("retrying", attempt=attempt, next_try_at=at, reason=reason))
        if isinstance(exc, _RETRYABLE):
            log.warning("task_retrying", task=name, attempt=attempt, delay_s=round(delay, 3), reason=reason)
        else:
            # not a lifecycle error: a bug or an unexpected server reply
            log.exception("task_crashed", task=name, attempt=attempt, delay_s=round(delay, 3), exc_info=exc)
        await self._sleep(delay)

    async def _park(self, name: str, reason: str) -> None:
        self._set(name, TaskState("failed", reason=reason))
        log.error("task_auth_failed", task=name, reason=reason, hint="fix the credentials and reload the configuration")
        event = self._wakeups.setdefault(name, asyncio.Event())
        await event.wait()
        event.clear()
        log.info("task_reconfigured", task=name)
