"""Access tokens: one per app, shared by everything in the process, refreshed early.

WeChat and WeCom hand out an access_token per app (7200 s) and invalidate the
previous one when a new one is fetched, so every caller in a process must use
the same token and only one of them may fetch a new one at a time. Tokens
live in a :class:`TokenStore`; :data:`PROCESS_TOKENS` is the process-wide
in-memory store. The interface is small on purpose (load, save, discard-if-
still-that-value); a store may also offer ``exclusive(key)`` (an async
context manager held while fetching), which the gateway's Redis token store
(gateway/shared.py) uses so that one instance of several fetches and every
instance uses the token it stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Protocol

#: Refresh this long before WeChat's expiry, so a token never dies in flight.
REFRESH_MARGIN_S = 300.0


@dataclass(frozen=True, slots=True)
class CachedToken:
    value: str
    expires_at: float  # wall-clock seconds (shared stores need a common clock)


class TokenStore(Protocol):
    async def load(self, key: str) -> CachedToken | None: ...

    async def save(self, key: str, token: CachedToken) -> None: ...

    async def discard(self, key: str, value: str) -> None:
        """Forget the token of ``key`` if it is still ``value`` (another
        caller may already have replaced it with a fresh one)."""
        ...


class MemoryTokenStore:
    """The in-process store: a dict."""

    def __init__(self) -> None:
        self._tokens: dict[str, CachedToken] = {}

    async def load(self, key: str) -> CachedToken | None:
        return self._tokens.get(key)

    async def save(self, key: str, token: CachedToken) -> None:
        self._tokens[key] = token

    async def discard(self, key: str, value: str) -> None:
        if (cached := self._tokens.get(key)) is not None and cached.value == value:
            del self._tokens[key]


PROCESS_TOKENS = MemoryTokenStore()

#: Fetches a new token from the platform: (access_token, expires_in seconds).
Fetcher = Callable[[], Awaitable[tuple[str, int]]]


class TokenCache:
    """Gives a valid token for a key, fetching at most once at a time per key."""

    def __init__(
        self,
        store: TokenStore = PROCESS_TOKENS,
        *,
        margin_s: float = REFRESH_MARGIN_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._margin = margin_s
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

    async def _fresh(self, key: str) -> str | None:
        cached = await self._store.load(key)
        return cached.value if cached is not None and cached.expires_at > self._clock() else None

    async def get(self, key: str, fetch: Fetcher) -> str:
        if (value := await self._fresh(key)) is not None:
            return value
        lock = self._locks.setdefault(key, asyncio.Lock())
        exclusive = getattr(self._store, "exclusive", None)  # across processes (a shared store)
        async with lock, (exclusive(key) if exclusive is not None else contextlib.nullcontext()):
            if (value := await self._fresh(key)) is not None:  # another caller fetched meanwhile
                return value
            value, expires_in = await fetch()
            # short-lived tokens (tests, odd answers) keep half their life rather than none
            margin = min(self._margin, expires_in / 2)
            await self._store.save(key, CachedToken(value, self._clock() + expires_in - margin))
            return value

    async def invalidate(self, key: str, value: str) -> None:
        """The platform refused ``value`` (40001/42001…): the next get fetches anew."""
        await self._store.discard(key, value)
