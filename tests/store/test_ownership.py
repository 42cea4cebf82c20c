"""Exactly one owner at a time, by lease with fail-over (gateway/ownership.py):
one process always owns; instances on one real Redis run a named piece of
work on one instance only, and another takes over when the holder stops
renewing, stops, or its work fails."""

from __future__ import annotations

import asyncio

import pytest

from gateway.ownership import AlwaysOwner, LeaseOwnership, ownership_for
from gateway.store.base import StoreError
from gateway.tasks import cancel_and_wait


class Work:
    """A long-running job (a mailbox poller, say) that records who runs it."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.ran: list[str] = []
        self.most_at_once = 0
        self.fail: set[str] = set()

    def factory(self, who: str):
        async def run() -> None:
            self.running.add(who)
            self.ran.append(who)
            self.most_at_once = max(self.most_at_once, len(self.running))
            try:
                if who in self.fail:
                    raise OSError("mailbox went away")
                await asyncio.Event().wait()
            finally:
                self.running.discard(who)
        return run


async def until(cond, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_single_instance_owns_at_once(store):
    """SQLite (one process): always the owner; Redis: the only instance acquires at once."""
    own = ownership_for(store, "inst-a", ttl_s=5)
    assert isinstance(own, LeaseOwnership if store.backend == "redis" else AlwaysOwner)
    work = Work()
    task = asyncio.create_task(own.run_owned("imap:support", work.factory("a")))
    await until(lambda: work.running == {"a"})
    assert own.states() == {"imap:support": "owner"}
    await cancel_and_wait(task)
    assert work.running == set() and own.states() == {}


class Cut:
    """The store as seen by one instance, whose link to Redis can be cut."""

    def __init__(self, store) -> None:
        self.store = store
        self.cut = False

    def __getattr__(self, name):
        op = getattr(self.store, name)

        async def call(*a, **kw):
            if self.cut:
                raise StoreError("redis unavailable: connection refused")
            return await op(*a, **kw)
        return call


@pytest.fixture
async def two(redis_server, redis_prefix):
    from gateway.store.redis_store import RedisStore

    stores = [RedisStore(redis_server.url, prefix=redis_prefix, consumer=n) for n in ("a", "b")]
    yield [Cut(s) for s in stores]
    for s in stores:
        await s.close()


TTL = 0.6


@pytest.mark.integration
async def test_two_instances_one_owner_and_a_takeover_when_the_holder_stops_renewing(two):
    a, b = LeaseOwnership(two[0], "inst-a", ttl_s=TTL), LeaseOwnership(two[1], "inst-b", ttl_s=TTL)
    work = Work()
    tasks = [asyncio.create_task(o.run_owned("telegram:poll:support", work.factory(o.holder))) for o in (a, b)]
    try:
        await until(lambda: len(work.running) == 1)
        holder, other = (a, b) if work.running == {"inst-a"} else (b, a)
        cut = two[0] if holder is a else two[1]
        await asyncio.sleep(TTL * 2)  # several renewals: still the one owner
        assert work.running == {holder.holder} and work.ran == [holder.holder]
        assert await two[0].store.lease_holder("telegram:poll:support") == holder.holder
        assert other.states() == {"telegram:poll:support": "standby"}
        cut.cut = True  # the holder can no longer renew (its Redis link is down)
        await until(lambda: work.running == {other.holder})
        assert work.ran == [holder.holder, other.holder]
        assert work.most_at_once == 1, "the holder stopped before the other took over"
        assert other.states() == {"telegram:poll:support": "owner"}
        assert holder.states() == {"telegram:poll:support": "standby"}
        cut.cut = False  # back: the old holder stands by, the new one keeps the work
        await asyncio.sleep(TTL)
        assert work.running == {other.holder}
    finally:
        await cancel_and_wait(*tasks)


@pytest.mark.integration
async def test_a_stopping_or_failing_owner_hands_over_at_once(two):
    """A graceful stop releases the lease (no wait for it to expire); so does
    the work failing — its error goes to the caller (the supervisor backs
    off) while another instance takes over."""
    ttl = 30.0  # a takeover here must not wait for the lease to run out
    a, b = LeaseOwnership(two[0], "inst-a", ttl_s=ttl), LeaseOwnership(two[1], "inst-b", ttl_s=ttl)
    a.every_s = b.every_s = 0.05  # standbys ask often; the lease itself lasts 30 s
    work = Work()
    ta = asyncio.create_task(a.run_owned("phone:tail:pbx", work.factory("inst-a")))
    await until(lambda: work.running == {"inst-a"})
    tb = asyncio.create_task(b.run_owned("phone:tail:pbx", work.factory("inst-b")))
    await asyncio.sleep(0.2)
    assert work.running == {"inst-a"}
    await cancel_and_wait(ta)  # instance a shuts down
    await until(lambda: work.running == {"inst-b"}, timeout=5)
    # b's work fails: the error propagates, the lease is free for a new instance
    work.fail.add("inst-c")
    await cancel_and_wait(tb)
    c = LeaseOwnership(two[0], "inst-c", ttl_s=ttl)
    with pytest.raises(OSError, match="mailbox went away"):
        await c.run_owned("phone:tail:pbx", work.factory("inst-c"))
    assert await two[0].store.lease_holder("phone:tail:pbx") is None
    assert work.most_at_once == 1


@pytest.mark.integration
async def test_a_periodic_job_runs_on_one_instance_per_period(two):
    """Retention pruning is scheduled by every instance: one of them runs it
    each period (a lease of the period, never released).

    The period is an hour and ends when the test shortens the lease in Redis:
    with a period of a few tenths of a second, a loaded machine that stalled
    this process that long between two claims let the second one in."""
    a, b = LeaseOwnership(two[0], "inst-a"), LeaseOwnership(two[1], "inst-b")
    r, key = two[0].store.r, two[0].store.k.lease("period:webhooks:prune")
    assert await a.claim_period("webhooks:prune", 3600)
    assert 3000_000 < await r.pttl(key) <= 3600_000  # the lease lasts the period (not the ownership's ttl)
    assert not await b.claim_period("webhooks:prune", 3600)
    assert await AlwaysOwner().claim_period("webhooks:prune", 3600)  # one process: always
    await r.pexpire(key, 1)  # the period ends
    for _ in range(1000):
        if not await r.exists(key):
            break
        await asyncio.sleep(0.01)
    assert await b.claim_period("webhooks:prune", 3600)
    assert not await a.claim_period("webhooks:prune", 3600)


async def test_a_cancel_a_client_library_turns_into_an_error_still_stops_the_owner():
    """redis-py may answer a cancellation that hit its call with an error:
    the owner must stop, not take it for a failed renewal and go on."""

    class Swallowing:
        swallowed = 0

        async def lease_acquire(self, name, holder, ttl_s):
            return True

        async def lease_renew(self, name, holder, ttl_s):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if self.swallowed:
                    raise  # only the first (so a failing test ends rather than hangs)
                self.swallowed += 1
                raise StoreError("redis unavailable: connection closed") from None

        async def lease_release(self, name, holder):
            return True

    own = LeaseOwnership(Swallowing(), "inst-a", ttl_s=0.06)
    work = Work()
    task = asyncio.create_task(own.run_owned("imap:support", work.factory("a")))
    await until(lambda: work.running == {"a"})
    await asyncio.sleep(0.05)  # in the renewal call now
    task.cancel()
    try:
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done and task.cancelled() and work.running == set()
    finally:
        await cancel_and_wait(task)
