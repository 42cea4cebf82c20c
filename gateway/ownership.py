"""Exactly one owner at a time, by lease with fail-over.

Some work must run on one instance only: polling an IMAP mailbox, a
Telegram bot's ``getUpdates`` (two pollers get 409 Conflict), tailing a call
log file; a periodic job every instance schedules (retention pruning) runs
on one per period. Behind one small interface:

- :class:`AlwaysOwner` (SQLite: one process) runs the work at once;
- :class:`LeaseOwnership` (several instances on Redis) runs it only while
  this instance holds the store's lease ``name`` (the ``LEASE`` script of the
  Redis store: acquire, renew, release). Instances without the lease stand
  by and try again every ``ttl_s / 3``; the holder renews every ``ttl_s / 3``.
  A holder that cannot renew (Redis unreachable) stops the work once two
  thirds of the lease have passed since its last renewal — before the lease
  runs out in Redis and another instance may take over — and a holder that
  learns the lease was taken stops at once. A holder that dies stops
  renewing: the lease expires after ``ttl_s`` and a standby instance takes
  over.

The work itself is a coroutine factory, like the Supervisor's tasks: its
errors propagate (the lease is released first, so another instance may take
over while this one backs off).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)

TaskFactory = Callable[[], Awaitable[None]]
Role = Literal["owner", "standby"]


class Ownership(Protocol):
    async def run_owned(self, name: str, factory: TaskFactory) -> None:
        """Run ``factory()`` while this instance owns ``name``."""

    def states(self) -> dict[str, Role]:
        """name → owner | standby, for /readyz."""

    async def claim_period(self, name: str, period_s: float) -> bool:
        """For a periodic job (retention pruning) every instance schedules:
        True for the one instance that should run it this period."""


class AlwaysOwner:
    """One process (SQLite): always the owner."""

    holder = "local"

    def __init__(self) -> None:
        self._states: dict[str, Role] = {}

    async def run_owned(self, name: str, factory: TaskFactory) -> None:
        self._states[name] = "owner"
        try:
            await factory()
        finally:
            self._states.pop(name, None)

    def states(self) -> dict[str, Role]:
        return dict(self._states)

    async def claim_period(self, name: str, period_s: float) -> bool:
        return True


class LeaseOwnership:
    """Several instances: the store's lease (``lease_acquire``/``renew``/``release``)."""

    def __init__(self, store: Any, holder: str, *, ttl_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        if ttl_s <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl_s}")
        self.store = store
        self.holder = holder
        self.ttl_s = ttl_s
        self.every_s = ttl_s / 3
        self._clock = clock
        self._sleep = sleep
        self._states: dict[str, Role] = {}

    def states(self) -> dict[str, Role]:
        return dict(self._states)

    async def claim_period(self, name: str, period_s: float) -> bool:
        """A lease of ``period_s`` never released: the first instance to ask
        in a period runs the job, the others skip it until the lease expires
        (a store error: skip — the next period runs it)."""
        return await self._acquire(f"period:{name}", ttl_s=period_s)

    async def _acquire(self, name: str, ttl_s: float | None = None) -> bool:
        try:
            return await self.store.lease_acquire(name, self.holder, ttl_s or self.ttl_s)
        except Exception as exc:  # noqa: BLE001 - the store is down: stand by, try again
            _cancelled_meanwhile()
            log.warning("lease.acquire_failed", lease=name, error=f"{type(exc).__name__}: {exc}")
            return False

    async def run_owned(self, name: str, factory: TaskFactory) -> None:
        try:
            while True:
                self._states[name] = "standby"
                while not await self._acquire(name):
                    await self._sleep(self.every_s)
                self._states[name] = "owner"
                log.info("lease.owner", lease=name, holder=self.holder)
                if await self._hold(name, factory):
                    return
                log.warning("lease.lost", lease=name, holder=self.holder, hint="another instance owns it now")
        finally:
            self._states.pop(name, None)

    async def _hold(self, name: str, factory: TaskFactory) -> bool:
        """Run the work while the lease holds. True when the work ended (its
        return or its error, after releasing the lease), False when the
        lease was lost (the work was cancelled)."""
        work = asyncio.ensure_future(factory())
        last_ok = self._clock()
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=self.every_s)
                if done:
                    break
                try:
                    if not await self.store.lease_renew(name, self.holder, self.ttl_s):
                        return False  # taken by another instance (it had expired)
                    last_ok = self._clock()
                except Exception as exc:  # noqa: BLE001 - cannot tell: stop before the lease can run out
                    _cancelled_meanwhile()
                    if self._clock() - last_ok >= self.ttl_s * 2 / 3:
                        log.warning("lease.renew_failed", lease=name, error=f"{type(exc).__name__}: {exc}")
                        return False
        except asyncio.CancelledError:  # shutting down: hand the lease over at once
            await self._stop(work)
            await self._release(name)
            raise
        finally:
            await self._stop(work)
        await self._release(name)  # let another instance take over while this one backs off
        work.result()  # its error goes to the caller (the supervisor backs off)
        return True


    @staticmethod
    async def _stop(work: asyncio.Future) -> None:
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work

    async def _release(self, name: str) -> None:
        with contextlib.suppress(Exception):
            await self.store.lease_release(name, self.holder)


def _cancelled_meanwhile() -> None:
    """A client library may turn a cancellation that hit its call into an
    error: if this task was asked to stop, stop (not retry for ever)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def ownership_for(store: Any, holder: str, *, ttl_s: float = 15.0) -> Ownership:
    """A lease per name when the store is shared by instances (it has leases), else always the owner."""
    if getattr(store, "backend", None) == "redis" and hasattr(store, "lease_acquire"):
        return LeaseOwnership(store, holder, ttl_s=ttl_s)
    return AlwaysOwner()


OWNERSHIP: web.AppKey[Ownership] = web.AppKey("ownership")
