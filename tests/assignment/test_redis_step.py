"""The Redis assignment step's own guarantees (``gateway/store/redis_assign.py``):
a step whose lease was lost writes nothing, a ticket_sync that changes
nothing takes no lease, and a step still runs after Redis forgot its scripts."""

from __future__ import annotations

import pytest

from gateway.store import redis_assign
from gateway.store.base import Conflict
from routing.model import new_id
from tests.assignment.conftest import T0, assignee, make_ticket

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
    """assign_next sends its scripts (the lease, the team's live state) inside
    pipelines as bare EVALSHA: a Redis restarted since (SCRIPT FLUSH here)
    answers NOSCRIPT, and the step loads them and goes on."""
    first = await make_ticket(store, team="billing")
    await store.assign_next(first, T0)
    await store.r.script_flush()
    t = await make_ticket(store, team="billing")
    decision = await store.assign_next(t, T0)
    assert decision.agent in ("a-li", "a-han") and await assignee(store, t) == decision.agent
    assert await store.r.script_exists(store._lease.sha, store._live_lua().sha) == [True, True]
