"""State several instances share on Redis, one process keeps for itself on
SQLite (gateway/shared.py): rate limits (the REST API's per token, webchat's),
WeChat/WeCom access tokens (one fetch, one token for every instance), and a
rules reload asked of one instance reaching every instance."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from aiohttp.test_utils import make_mocked_request

from connectors.wechat.tokens import TokenCache
from gateway.auth import Auth
from gateway.config import RestConfig
from gateway.http_util import Problem
from gateway.shared import LocalLimiter, RedisLimiter, RedisTokenStore, RulesSync, limiter_for, rules_sync_for, \
    token_store_for

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def seconds(self) -> float:
        return self.now.timestamp()


async def test_a_limiter_allows_the_burst_then_refills_at_its_rate(store):
    """The same token bucket on both backends: ``burst`` at once, then one
    per 1/rate seconds; the answer says how long to wait."""
    clock = Clock()
    lim = limiter_for(store, "api", 2.0, 3, wall_clock=clock.seconds, local_clock=clock.seconds)
    assert isinstance(lim, RedisLimiter if store.backend == "redis" else LocalLimiter)
    assert [await lim.take("tok") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await lim.take("tok") == pytest.approx(0.5, abs=0.002)
    assert await lim.take("other") == 0.0  # a key of its own
    clock.now += timedelta(seconds=0.5)
    assert await lim.take("tok") == 0.0
    assert await lim.take("tok") > 0
    clock.now += timedelta(seconds=10)  # refilled up to the burst, not beyond
    assert [await lim.take("tok") for _ in range(4)][-1] > 0


# ---------------------------------------------------------------- several instances (Redis)


@pytest.fixture
async def two(redis_server, redis_prefix):
    from gateway.store.redis_store import RedisStore

    stores = [RedisStore(redis_server.url, prefix=redis_prefix, consumer=n) for n in ("a", "b")]
    yield stores
    for s in stores:
        await s.close()


@pytest.mark.integration
async def test_two_instances_share_one_api_rate_limit_per_token(two):
    """A client spreading its requests over both instances gets one budget:
    the third request within the burst of two is refused by whichever
    instance gets it (429 with Retry-After)."""
    clock = Clock()
    rest = RestConfig(rate_limit_per_minute=60, rate_limit_burst=2)
    a, b = (Auth(s, rest, "boot-token", clock=clock) for s in two)
    req = make_mocked_request("GET", "/api/v1/tickets", headers={"Authorization": "Bearer boot-token"})
    await a.authenticate(req)
    await b.authenticate(req)
    with pytest.raises(Problem) as refused:
        await a.authenticate(req)
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"
    with pytest.raises(Problem):
        await b.authenticate(req)
    clock.now += timedelta(seconds=1)
    await b.authenticate(req)


@pytest.mark.integration
async def test_two_instances_fetch_one_access_token_and_share_it(two):
    """WeChat invalidates the previous access token when a new one is
    fetched: instances must not each fetch their own. Both ask at once: one
    fetch, one token; a refused token is forgotten for both, and the next
    ask fetches once again."""
    fetches = 0

    async def fetch() -> tuple[str, int]:
        nonlocal fetches
        fetches += 1
        await asyncio.sleep(0.05)  # the platform answers slowly: the other instance asks meanwhile
        return f"token-{fetches}", 7200

    stores = [token_store_for(s) for s in two]
    assert all(isinstance(s, RedisTokenStore) for s in stores)
    a, b = (TokenCache(s) for s in stores)
    got = await asyncio.gather(a.get("wx:app1", fetch), b.get("wx:app1", fetch), a.get("wx:app1", fetch))
    assert got == ["token-1"] * 3 and fetches == 1
    await b.invalidate("wx:app1", "token-0")  # an old value: the current token stays
    assert await a.get("wx:app1", fetch) == "token-1" and fetches == 1
    await b.invalidate("wx:app1", "token-1")
    assert await asyncio.gather(a.get("wx:app1", fetch), b.get("wx:app1", fetch)) == ["token-2", "token-2"]
    assert fetches == 2
    # the key expires with the token (no stale token outlives its life in Redis)
    ttl = await two[0].r.pttl(two[0].k.shared_token("wx:app1"))
    assert 0 < ttl <= 7200 * 1000


@pytest.mark.integration
async def test_a_rules_reload_asked_of_one_instance_reaches_every_instance(two):
    a, b = rules_sync_for(two[0]), rules_sync_for(two[1])
    assert a.shared and b.shared
    reloaded = {"a": 0, "b": 0}
    for name, s in (("a", a), ("b", b)):  # each instance's first poll: the generation as it is
        assert not await s.check(lambda n=name: reloaded.__setitem__(n, reloaded[n] + 1))
    await a.announce()  # SIGHUP on instance a (a reloads by itself)
    assert await b.check(lambda: reloaded.__setitem__("b", reloaded["b"] + 1))
    assert not await a.check(lambda: reloaded.__setitem__("a", reloaded["a"] + 1))
    assert not await b.check(lambda: reloaded.__setitem__("b", reloaded["b"] + 1))
    assert reloaded == {"a": 0, "b": 1}


async def test_one_process_has_nothing_to_share(tmp_path):
    from gateway.store.sqlite import SQLiteStore

    s = SQLiteStore.in_dir(tmp_path)
    try:
        assert token_store_for(s) is None  # the process's own token store
        sync = rules_sync_for(s)
        assert not sync.shared and not await sync.check(lambda: None)
        assert isinstance(RulesSync(), RulesSync)
    finally:
        await s.close()
