"""State every instance must share, behind small interfaces with an
in-process implementation (SQLite: one process) and a Redis one (several
instances on one Redis store; ``gateway/store/redis_shared.py``):

- :class:`Limiter` — a token bucket per key (the REST API's per-token rate,
  webchat's per-conversation messages and per-address polls):
  :class:`LocalLimiter` / :class:`RedisLimiter`. Across instances a caller
  spreading requests over every instance still gets one budget.
- :class:`RedisTokenStore` — WeChat/WeCom access tokens (the
  :class:`connectors.wechat.tokens.TokenStore` interface, in-process by
  default): one instance fetches (the fetch is serialised across instances by
  a lease, since a new token invalidates the previous one), every instance
  uses the token it stored.
- :class:`RulesSync` — a rules reload asked of one instance (SIGHUP) reaches
  every instance: a generation counter in Redis, polled by each.

``limiter_for``, ``token_store_for`` and ``rules_sync_for`` pick the
implementation the store needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import structlog
from aiohttp import web

log = structlog.get_logger(__name__)


def _shared(store: Any) -> bool:
    return getattr(store, "backend", None) == "redis"


# ---------------------------------------------------------------- rate limits


class Limiter(Protocol):
    async def take(self, key: str) -> float:
        """0 when allowed (one token taken); else the seconds until the next token."""


class LocalLimiter:
    """A token bucket per key in this process: ``rate`` per second, ``burst`` at once."""

    def __init__(self, rate_per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000):
        self.rate = rate_per_s
        self.burst = max(1, burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}

    def take_now(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, at = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate)
        if tokens >= 1:
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                self._buckets.clear()  # bounded memory; a full bucket for everyone is the generous side
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    async def take(self, key: str) -> float:
        return self.take_now(key)

    def forget_full(self) -> None:
        """Drop buckets that are full again (nobody is being limited)."""
        now = self.clock()
        for key, (tokens, at) in list(self._buckets.items()):
            if tokens + (now - at) * self.rate >= self.burst:
                del self._buckets[key]


class RedisLimiter:
    """One bucket per key for every instance (the store's ``RATE`` script).
    ``clock`` is wall-clock seconds (instances must agree on it; the
    gateway's clock)."""

    def __init__(self, store: Any, name: str, rate_per_s: float, burst: int, *, clock: Callable[[], float]):
        self.store = store
        self.name = name
        self.rate = rate_per_s
        self.burst = max(1, burst)
        self.clock = clock

    async def take(self, key: str) -> float:
        if self.rate <= 0:
            return 0.0
        return await self.store.rate_take(self.name, key, self.rate, self.burst, self.clock())

    def forget_full(self) -> None:  # Redis expires full buckets itself
        return None


def limiter_for(store: Any, name: str, rate_per_s: float, burst: int, *, wall_clock: Callable[[], float],
                local_clock: Callable[[], float] = time.monotonic) -> LocalLimiter | RedisLimiter:
    """The Redis bucket when the store is shared by instances, else one in this process."""
    if _shared(store) and hasattr(store, "rate_take"):
        return RedisLimiter(store, name, rate_per_s, burst, clock=wall_clock)
    return LocalLimiter(rate_per_s, burst, clock=local_clock)


# ---------------------------------------------------------------- access tokens


class RedisTokenStore:
    """WeChat/WeCom access tokens shared by instances (the
    ``connectors.wechat.tokens.TokenStore`` interface, plus ``exclusive``:
    one fetch at a time across instances, a lease per token key)."""

    def __init__(self, store: Any, *, clock: Callable[[], float] = time.time, lock_ttl_s: float = 30.0,
                 poll_s: float = 0.05):
        self.store = store
        self.clock = clock
        self.lock_ttl_s = lock_ttl_s
        self.poll_s = poll_s
        self.holder = f"{getattr(store, 'consumer', 'instance')}:{uuid.uuid4().hex[:8]}"

    async def load(self, key: str) -> Any:
        from connectors.wechat.tokens import CachedToken

        got = await self.store.shared_token_load(key)
        return None if got is None else CachedToken(got[0], got[1])

    async def save(self, key: str, token: Any) -> None:
        await self.store.shared_token_save(key, token.value, token.expires_at, self.clock())

    async def discard(self, key: str, value: str) -> None:
        await self.store.shared_token_discard(key, value)

    @contextlib.asynccontextmanager
    async def exclusive(self, key: str) -> AsyncIterator[None]:
        """Held while fetching a new token: other instances wait, then find
        the token this one stored (a new token invalidates the previous one,
        so two instances fetching at once would break each other's)."""
        name = f"access-token:{key}"
        while not await self.store.lease_acquire(name, self.holder, self.lock_ttl_s):
            await asyncio.sleep(self.poll_s)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await self.store.lease_release(name, self.holder)


def token_store_for(store: Any, *, clock: Callable[[], float] = time.time) -> RedisTokenStore | None:
    """A shared token store for instances on Redis; None: the process's own (PROCESS_TOKENS)."""
    if _shared(store) and hasattr(store, "shared_token_load"):
        return RedisTokenStore(store, clock=clock)
    return None


# ---------------------------------------------------------------- rules


class RulesSync:
    """A reload asked of one instance reaches every instance. In-process (one
    instance): nothing to tell. On Redis: :meth:`announce` bumps the
    generation; :meth:`watch` (a task) polls it and asks this instance's
    rules runtime to reload when another instance moved it."""

    def __init__(self, store: Any = None, *, poll_s: float = 1.0):
        self.store = store if store is not None and hasattr(store, "rules_generation") else None
        self.poll_s = poll_s
        self._seen: int | None = None

    @property
    def shared(self) -> bool:
        return self.store is not None

    async def announce(self) -> None:
        if self.store is None:
            return
        try:
            self._seen = await self.store.rules_announce()  # this instance reloads by itself
        except Exception as exc:  # noqa: BLE001 - the others still poll their folders
            log.warning("rules.announce_failed", error=f"{type(exc).__name__}: {exc}")

    async def check(self, reload: Callable[[], None]) -> bool:
        """One poll: True (and ``reload()`` called) when another instance asked."""
        if self.store is None:
            return False
        gen = await self.store.rules_generation()
        if self._seen is None:
            self._seen = gen
            return False
        if gen == self._seen:
            return False
        self._seen = gen
        log.info("rules.reload_requested_elsewhere", generation=gen)
        reload()
        return True

    async def watch(self, reload: Callable[[], None]) -> None:
        while True:
            try:
                await self.check(reload)
            except Exception as exc:  # noqa: BLE001 - next round
                log.warning("rules.generation_poll_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.poll_s)


def rules_sync_for(store: Any) -> RulesSync:
    return RulesSync(store if _shared(store) else None)


RULES_SYNC: web.AppKey[RulesSync] = web.AppKey("rules_sync")
