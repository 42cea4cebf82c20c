"""State several instances on one Redis must share (the Redis side of
``gateway/shared.py``): rate-limit token buckets, platform access tokens
(WeChat, WeCom) and the rules' reload generation.

- ``RATE`` (one script per take): a token bucket in a hash ``{tokens, at}``
  refilled at ``rate`` per second up to ``burst``; the caller passes its
  clock (wall-clock ms: instances' clocks are NTP-synchronised, and a bucket
  only needs them to agree within a fraction of a token). The hash expires
  once it would be full again, so idle keys cost nothing.
- Access tokens: a hash per token key with its expiry as the key's TTL;
  fetching is serialised across instances by the store's lease (``LEASE``)
  and forgetting a refused token is a guarded ``APPLY`` (only if it is still
  that value — another instance may have fetched a fresh one).
- Rules: a counter an instance bumps when asked to reload (SIGHUP); every
  instance polls it and reloads when it moves.
"""

from __future__ import annotations

import math
from typing import Any

RATE_LUA = """
-- KEYS[1]: the bucket; ARGV: rate per second, burst, now (ms)
-- -> 0 when a token was taken, else the ms until one is there
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(b[1]), tonumber(b[2])
if not tokens then tokens, at = burst, now end
if now > at then tokens = math.min(burst, tokens + (now - at) * rate / 1000) else now = at end
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return wait
"""


class RedisSharedMixin:
    """Rate buckets, shared access tokens and the rules generation of
    :class:`~gateway.store.redis_store.RedisStore`."""

    k: Any
    r: Any

    async def rate_take(self, name: str, key: str, rate_per_s: float, burst: int, now_s: float) -> float:
        """Take one token of ``name``'s bucket for ``key``: 0 when allowed,
        else the seconds until a token is there (shared by every instance)."""
        script = getattr(self, "_rate_lua", None)
        if script is None:
            script = self._rate_lua = self.r.register_script(RATE_LUA)
        wait_ms = await self._call(script(keys=[self.k.rate_bucket(name, key)],  # type: ignore[attr-defined]
                                          args=[repr(float(rate_per_s)), max(1, int(burst)), int(now_s * 1000)]))
        return int(wait_ms) / 1000

    async def shared_token_load(self, key: str) -> tuple[str, float] | None:
        """(value, expires_at wall-clock seconds) of a platform access token, or None."""
        value, expires = await self._call(self.r.hmget(self.k.shared_token(key), "value", "expires_at"))  # type: ignore[attr-defined]
        if value is None or expires is None:
            return None
        return value.decode(), float(expires)

    async def shared_token_save(self, key: str, value: str, expires_at: float, now_s: float) -> None:
        k = self.k.shared_token(key)
        ttl_ms = max(1, math.ceil((expires_at - now_s) * 1000))
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.delete(k)
            pipe.hset(k, mapping={"value": value, "expires_at": repr(expires_at)})
            pipe.pexpire(k, ttl_ms)
            await self._call(pipe.execute())  # type: ignore[attr-defined]

    async def shared_token_discard(self, key: str, value: str) -> bool:
        """Forget the token if it is still ``value`` (one guarded APPLY)."""
        from gateway.store.base import Conflict
        from gateway.store.redis_store import Tx

        tx = Tx()
        tx.hash_is(self.k.shared_token(key), "value", value)
        tx.op("DEL", self.k.shared_token(key))
        try:
            await self._run(tx)  # type: ignore[attr-defined]
        except Conflict:
            return False
        return True

    async def rules_generation(self) -> int:
        return int(await self._call(self.r.get(self.k.rules_generation)) or 0)  # type: ignore[attr-defined]

    async def rules_announce(self) -> int:
        """Ask every instance to reload its rules; the new generation."""
        return int(await self._call(self.r.incr(self.k.rules_generation)))  # type: ignore[attr-defined]
