"""One sender's messages decided in arrival order: the worker's interface.

Two implementations behind one small interface:

- :class:`LocalOrder` (SQLite: one process): a FIFO lock per sender taken in
  claim order — nothing to register.
- :class:`RedisOrder` (several instances on one Redis): the claimer
  registers each claimed entry's sender in Redis, and a worker decides an
  entry only when Redis says it is its turn (``gateway/store/redis_order.py``
  has the scheme). A worker that waited ``max_wait_s`` gives its slot back
  (:class:`NotYourTurn`) and the entry goes back to the end of the queue: a
  worker slot never waits for an entry queued behind it.

``order_for(store)`` picks the one the store needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, AsyncIterator, Callable, Protocol

import structlog

from routing.model import Inbound

log = structlog.get_logger(__name__)


def sender_key(inbound: Inbound) -> str:
    """What "one sender" means: the channel and the sender's identity."""
    return f"{inbound.channel}:{inbound.sender.kind}:{inbound.sender.value}"


class NotYourTurn(Exception):
    """An earlier entry of the same sender is still undecided (another
    instance, or later in this one's queue): try again later."""


class SenderOrder(Protocol):
    #: True when the claimer must parse entries and :meth:`register` them
    registers: bool

    async def register(self, items: list[tuple[str, int, str | None]]) -> None:
        """(journal id, seq, sender key or None) of entries just claimed, in one batch."""

    def turn(self, journal_id: str, seq: int, sender: str, *, patient: bool) -> contextlib.AbstractAsyncContextManager:
        """Held while the entry is decided and committed; raises NotYourTurn
        when not ``patient`` and the turn did not come soon."""

    def done(self, journal_id: str) -> None:
        """The worker finished the entry (settled)."""


class KeyedLocks:
    """One FIFO lock per key, dropped when nobody holds or waits for it.

    asyncio.Lock hands itself to waiters in the order they asked, so tasks
    that ask in arrival order are served in arrival order. ``async with
    locks(key):`` — a plain async context manager (a generator-based one cost
    ~2 % of a production pipeline message)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __call__(self, key: str) -> "_KeyedLock":
        return _KeyedLock(self._locks, key)


class _KeyedLock:
    __slots__ = ("_locks", "_key", "_lock")

    def __init__(self, locks: dict[str, tuple[asyncio.Lock, int]], key: str) -> None:
        self._locks, self._key = locks, key

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[self._key] = (lock, users + 1)
        self._lock = lock
        try:
            await lock.acquire()
        except BaseException:  # cancelled while waiting: no longer a user
            self._leave()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._key]
        if users == 1:
            del self._locks[self._key]
        else:
            self._locks[self._key] = (lock, users - 1)


class LocalOrder:
    """One process: the lock is taken before the worker's first await, in
    claim order, so one sender's entries are decided in arrival order."""

    registers = False

    def __init__(self) -> None:
        self.locks = KeyedLocks()

    async def register(self, items: list[tuple[str, int, str | None]]) -> None:
        return None

    def turn(self, journal_id: str, seq: int, sender: str, *, patient: bool) -> contextlib.AbstractAsyncContextManager:
        return self.locks(sender)

    def done(self, journal_id: str) -> None:
        return None


class RedisOrder:
    """Several instances: the turn is Redis's (``order_register`` /
    ``order_turn`` of the Redis store). Waiting polls the turn script with a
    growing pause (2 ms doubling to ``poll_cap_s``); the settle that ends
    the previous entry's turn is in its commit's own script."""

    registers = True

    def __init__(self, store: Any, *, max_wait_s: float = 0.25, poll_cap_s: float = 0.05,
                 stuck_after_s: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.max_wait_s = max_wait_s
        self.poll_cap_s = poll_cap_s
        #: an entry held this long by a lower *unregistered* entry goes ahead anyway (logged): a
        #: pending entry nobody can claim must not stop every sender for good. Default: well past
        #: the take-over of a dead instance's entries (three times ``claim_idle_s``, at least 60 s).
        self.stuck_after_s = stuck_after_s if stuck_after_s is not None else \
            max(60.0, 3 * getattr(store, "claim_idle_ms", 60_000) / 1000)
        self.clock = clock
        self._held: dict[str, float] = {}  # journal id → when a lower unregistered entry first held it
        self.waits = 0  # turns that were not given at once (tests, metrics)

    async def register(self, items: list[tuple[str, int, str | None]]) -> None:
        await self.store.order_register(items)

    @contextlib.asynccontextmanager
    async def turn(self, journal_id: str, seq: int, sender: str, *, patient: bool) -> AsyncIterator[None]:
        await self._wait(journal_id, seq, sender, patient)
        yield

    async def _wait(self, journal_id: str, seq: int, sender: str, patient: bool) -> None:
        pause = 0.002
        deadline = time.monotonic() + self.max_wait_s
        registered = False
        while True:
            held = self._held.get(journal_id)
            stuck = held is not None and self.clock() - held >= self.stuck_after_s
            verdict = await self.store.order_turn(journal_id, sender, skip_lower=stuck)
            if verdict in ("go", "settled"):
                if stuck:
                    log.warning("order.gate_forced", journal_id=journal_id, held_s=round(self.clock() - held, 1),
                                hint="a lower pending journal entry was never claimed and registered")
                self._held.pop(journal_id, None)
                return
            if verdict == "lower":
                self._held.setdefault(journal_id, self.clock())
            if verdict == "unregistered" and not registered:  # not claimed through the worker (a replay)
                await self.store.order_register([(journal_id, seq, sender)])
                registered = True
                continue
            self.waits += 1
            if not patient and time.monotonic() >= deadline:
                raise NotYourTurn(journal_id)
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.poll_cap_s)

    def done(self, journal_id: str) -> None:
        self._held.pop(journal_id, None)
        self.store.order_forget(journal_id)


def order_for(store: Any) -> SenderOrder:
    """Redis's order when the store keeps one, else the in-process one."""
    if hasattr(store, "order_turn"):
        return RedisOrder(store)
    return LocalOrder()
