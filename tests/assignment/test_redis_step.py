"""The Redis assignment step's own guarantees (``gateway/store/redis_assign.py``):
a step whose lease was lost writes nothing, a ticket_sync that changes
nothing takes no lease, and a step still runs after Redis forgot its scripts."""

from __future__ import annotations

import pytest

from gateway.store import redis_assign
from gateway.store.base import Conflict
from routing.model import new_id
from tests.assignment.conftest import T0, assignee, directory, make_ticket

REDIS = pytest.mark.parametrize("store", [pytest.param("redis", marks=pytest.mark.integration)], indirect=True)


@REDIS
async def test_a_step_whose_lease_was_lost_writes_nothing(store):
    t = await make_ticket(store, team="billing")
    holder = new_id()
    version = await store._lock(holder)
    step = await redis_assign._Step(store, store._dir(), T0, holder).start(version)
    decision = await redis_assign._assign_next(step, t)
    assert decision.agent in ("a-li", "a-han")
    # the lease expires (a stalled instance) and another instance takes it
    await store.r.delete(store.k.lease(redis_assign.LOCK))
    assert await store.lease_acquire(redis_assign.LOCK, "another instance", 10)
    with pytest.raises(Conflict):
        await step.flush()
    assert await assignee(store, t) is None
    assert {a.id: a.load for a in await store.list_agents() if a.id.startswith("a-")} == {
        "a-li": {}, "a-han": {}, "a-wang": {}}


@REDIS
async def test_a_sync_that_changes_nothing_takes_no_lease(store, monkeypatch):
    t = await make_ticket(store, team="billing")
    [decision] = await store.ticket_sync([t], T0)
    assert await store.lease_acquire(redis_assign.LOCK, "another instance", 60)  # every step must wait now
    monkeypatch.setattr(redis_assign, "LOCK_WAIT_S", 0.2)
    assert await store.ticket_sync([t], T0) == []  # a follow-up: nothing owed, answered without the lease
    assert await assignee(store, t) == decision.agent
    changed, _ = await store.changed_tickets(None)
    assert t not in changed  # marked synced: the sweep skips it


@REDIS
async def test_a_step_longer_than_the_lease_keeps_it(store, monkeypatch):
    monkeypatch.setattr(redis_assign, "LOCK_TTL_S", 0.3)  # renewed every 0.1 s
    t = await make_ticket(store, team="billing")

    async def slow(step, ticket_id):
        import asyncio

        decision = await redis_assign._assign_next(step, ticket_id)
        await asyncio.sleep(1.0)  # three lease lifetimes
        return decision

    decision = await store._step(T0, slow, t)
    assert decision.agent is not None and await assignee(store, t) == decision.agent


@REDIS
async def test_a_step_runs_after_redis_forgot_its_scripts(store):
    """assign_next sends its scripts (the lease, the live counter's check; the
    team's live state when its cache lacks it) inside pipelines as bare EVALSHA:
    a Redis restarted since (SCRIPT FLUSH here) answers NOSCRIPT, and the step
    loads them and goes on."""
    first = await make_ticket(store, team="billing")
    await store.assign_next(first, T0)
    await store.r.script_flush()
    t = await make_ticket(store, team="billing")
    decision = await store.assign_next(t, T0)
    assert decision.agent in ("a-li", "a-han") and await assignee(store, t) == decision.agent
    assert await store.r.script_exists(store._lease.sha, store._live_seq_lua().sha) == [True, True]
    store._live_forget()  # a step without the cache reads the team's live state: that script too
    await store.r.script_flush()
    t = await make_ticket(store, team="billing")
    assert (await store.assign_next(t, T0)).agent is not None
    assert await store.r.script_exists(store._live_lua().sha) == [True]


# -- the cache of the agents' live state (presence, last assignment, load)

def _count_live_reads(monkeypatch) -> list[int]:
    """How many agents each LIVE read asked Redis for (the cache's lifetime made
    long: a slow machine must not end it between two steps)."""
    monkeypatch.setattr(redis_assign, "LIVE_CACHE_S", 3600.0)
    reads: list[int] = []
    original = redis_assign._Step._live_of

    def counted(self, want, res):
        reads.append(len(want))
        return original(self, want, res)

    monkeypatch.setattr(redis_assign._Step, "_live_of", counted)
    return reads


@REDIS
async def test_consecutive_steps_of_one_instance_decide_from_the_cache(store, monkeypatch):
    reads = _count_live_reads(monkeypatch)
    first = await store.assign_next(await make_ticket(store, team="billing"), T0)
    assert first.agent in ("a-li", "a-han") and sum(reads) > 0
    reads.clear()
    second = await store.assign_next(await make_ticket(store, team="billing"), T0)
    # nothing read: the cache holds both members, the first step's own assignment on top
    assert sum(reads) == 0
    assert {first.agent, second.agent} == {"a-li", "a-han"}  # the one with a free place, least loaded
    loads = {a.id: a.load for a in await store.list_agents() if a.id in ("a-li", "a-han")}
    assert loads == {"a-li": {"email": 1}, "a-han": {"email": 1}}


@pytest.mark.parametrize("stores", [pytest.param("redis", marks=pytest.mark.integration)], indirect=True)
async def test_another_instances_presence_change_reaches_the_cache(stores, monkeypatch):
    a, b = stores(), stores()
    for s in (a, b):
        await s.directory_load(directory(), T0)
    reads = _count_live_reads(monkeypatch)
    first = await a.assign_next(await make_ticket(a, team="billing"), T0)  # a's cache holds the team
    other = "a-han" if first.agent == "a-li" else "a-li"
    await b.set_presence(other, "away", T0)  # through b: a's cache of it is stale now
    reads.clear()
    second = await a.assign_next(await make_ticket(a, team="billing"), T0)
    assert second.agent == first.agent  # not the agent who went away, though less loaded
    assert reads == [1]  # only that agent was read again


@REDIS
async def test_a_release_outside_a_step_reaches_the_cache(store):
    """``assign_release`` (a script of its own, no lease) frees a place: the next step sees it."""
    tickets = [await make_ticket(store, team="billing") for _ in range(5)]
    decisions = [await store.assign_next(t, T0) for t in tickets]
    assert [d.agent is not None for d in decisions] == [True] * 4 + [False]  # 2 + 2 email places
    freed = await store.assign_release(tickets[0])
    assert freed == decisions[0].agent
    late = await store.assign_next(await make_ticket(store, team="billing"), T0)
    assert late.agent == freed


@REDIS
async def test_the_cache_is_read_again_after_its_lifetime(store, monkeypatch):
    reads = _count_live_reads(monkeypatch)
    await store.assign_next(await make_ticket(store, team="billing"), T0)
    monkeypatch.setattr(redis_assign, "LIVE_CACHE_S", 0.0)  # every cache is too old now
    reads.clear()
    await store.assign_next(await make_ticket(store, team="billing"), T0)
    assert reads == [2]  # both members read again


@REDIS
async def test_a_load_written_behind_the_caches_back_never_overfills(store, monkeypatch):
    monkeypatch.setattr(redis_assign, "LIVE_CACHE_S", 3600.0)
    """A writer that did not bump the live counter (none should exist): the APPLY's load
    guard still refuses a stale load, the step runs again from Redis, capacity holds."""
    first = await store.assign_next(await make_ticket(store, team="billing"), T0)
    other = "a-han" if first.agent == "a-li" else "a-li"
    await store.r.hset(store.k.agent_load(other), "email", 2)  # full, unannounced
    await store.r.hset(store.k.agent_load(first.agent), "email", 2)
    late = await store.assign_next(await make_ticket(store, team="billing"), T0)
    assert late.agent is None  # queued: both are full
    loads = {a.id: a.load for a in await store.list_agents() if a.id in ("a-li", "a-han")}
    assert loads == {"a-li": {"email": 2}, "a-han": {"email": 2}}
