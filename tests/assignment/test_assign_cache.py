"""The store's in-memory agent cache: capacity holds under concurrency, and the
cache never outlives a rollback, a restart or a directory change."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from tests.assignment.conftest import T0, assignee, directory, make_ticket


def _over_capacity(agents: list) -> list[str]:
    return [f"{a.id} {cls} {used}/{a.capacity.get(cls, 0)}"
            for a in agents for cls, used in a.load.items() if used > a.capacity.get(cls, 0)]


async def test_concurrent_assign_next_with_presence_flips_never_exceeds_capacity(store, clock):
    # team chat: c-1..c-3 take email 10 each → 30 places; billing/support: a-li 2, a-han 2, a-wang 3
    teams = ["chat", "billing", "support"]
    tickets = [await make_ticket(store, team=teams[i % 3]) for i in range(120)]
    flips = ["c-1", "c-2", "a-li", "c-3", "a-wang", "a-han"]
    decided = []
    for rnd in range(6):  # rounds of 20 concurrent decisions, with presence changes racing them
        agent = flips[rnd]
        now = clock.advance(minutes=1)
        calls = [store.assign_next(t, now) for t in tickets[rnd * 20:(rnd + 1) * 20]]
        calls.insert(7, store.set_presence(agent, "offline", now))
        calls.insert(15, store.set_presence(agent, "online", now))
        results = await asyncio.gather(*calls)
        decided += [r for r in results if not isinstance(r, list)]
        assert _over_capacity(await store.list_agents()) == []
    assigned = [d for d in decided if d.agent is not None]
    # every place is used (load only grows), and no one holds a ticket beyond capacity
    agents = {a.id: a for a in await store.list_agents()}
    assert sum(sum(a.load.values()) for a in agents.values()) == len(assigned) == 30 + 4 + 3
    assert {a.id: a.load.get("email", 0) for a in agents.values()} == {
        "a-li": 2, "a-han": 2, "a-wang": 3, "c-1": 10, "c-2": 10, "c-3": 10}


async def test_a_rolled_back_change_is_not_kept_by_the_cache(sqlite_store, clock):
    store = sqlite_store
    # a-wang (support) holds 3/3 email; a transaction frees one in the cache, then fails
    held = [await make_ticket(store, team="support") for _ in range(3)]
    for t in held:
        assert (await store.assign_next(t, T0)).agent == "a-wang"

    def release_then_fail(tx):
        tx.release(held[0])
        raise RuntimeError("after the release")

    with pytest.raises(RuntimeError):
        await store._tx(T0, release_then_fail)
    # the release was rolled back: a-wang is still full, so the next support ticket waits
    waiting = await make_ticket(store, team="support")
    decision = await store.assign_next(waiting, clock.advance(minutes=1))
    assert decision.agent is None
    assert "at capacity email 3/3" in str(decision.considered)


async def test_a_restarted_store_rebuilds_the_cache_from_the_tables(stores, clock):
    store = stores()
    await store.directory_load(directory(), T0)
    for _ in range(2):
        await store.assign_next(await make_ticket(store, team="billing"), T0)
    await store.set_presence("a-li", "away", T0)
    await store.close()

    store = stores()  # another process on the same state
    try:
        await store.directory_load(directory(), T0)  # presence is kept: a-li stays away
        decision = await store.assign_next(await make_ticket(store, team="billing"), clock.advance(minutes=1))
        # a-han already holds one ticket (least loaded spread them: one each), a-li is away
        assert decision.agent == "a-han"
        agents = {a.id: a for a in await store.list_agents()}
        assert agents["a-han"].load == {"email": 2} and agents["a-li"].load == {"email": 1}
    finally:
        await store.close()


async def test_a_directory_change_by_another_store_is_seen(stores, clock):
    first, second = stores(), stores()
    try:
        await first.directory_load(directory(), T0)
        await first.assign_next(await make_ticket(first, team="support"), T0)  # builds first's cache
        # another process gives a-wang more capacity (the same directory with a bigger email place)
        bigger = directory().agents
        wang = next(a for a in bigger if a.id == "a-wang")
        changed = msgspec.structs.replace(directory(), agents=[
            msgspec.structs.replace(a, capacity={"email": 1}) if a is wang else a for a in bigger])
        await second.directory_load(changed, T0)
        decision = await first.assign_next(await make_ticket(first, team="support"), clock.advance(minutes=1))
        assert decision.agent is None and "at capacity email 1/1" in str(decision.considered)
    finally:
        await first.close()
        await second.close()


async def test_the_choosers_view_of_an_agent_is_rebuilt_only_when_the_agent_changes(sqlite_store, clock):
    """Each decision reuses the agents' frozen states (building ~50 of them took
    17 µs per decision); one that changes gets a new one, and a state kept
    from before (a drain's) does not change under its holder."""
    store = sqlite_store
    before = store._agent_cache.state(None)
    assert all(store._agent_cache.state(None).agents[i] is a for i, a in before.agents.items())
    t = await make_ticket(store, team="billing", skills={"billing": 3})
    assert (await store.assign_next(t, clock())).agent == "a-li"
    after = store._agent_cache.state(None)
    assert after.agents["a-li"] is not before.agents["a-li"] and after.agents["a-li"].load == {"email": 1}
    assert before.agents["a-li"].load == {} and after.agents["a-wang"] is before.agents["a-wang"]
    await store.set_presence("a-wang", "away", clock())
    assert store._agent_cache.state(None).agents["a-wang"].presence == "away"


async def _one_group(store, *calls):
    """Run the calls' writes in one group commit (they queue before the writer starts); their results."""
    before = store.group_commit_stats
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert store.group_commit_stats[0] - before[0] == 1
    return results


async def test_a_write_rolled_back_after_another_changed_the_cache_in_its_group_drops_the_cache(sqlite_store):
    # the group's version is written once, by its first change: a later write's rollback leaves that
    # version in SQL, so the cache must be dropped for what the rolled-back write changed in it
    store = sqlite_store
    held = [await make_ticket(store, team="support") for _ in range(2)]
    for t in held:
        assert (await store.assign_next(t, T0)).agent == "a-wang"  # 2 of 3 email places
    third = await make_ticket(store, team="support")

    def release_then_fail(tx):
        tx.release(held[0])
        raise RuntimeError("after the release")

    took, failed = await _one_group(store, store.assign_next(third, T0), store._tx(T0, release_then_fail))
    assert took.agent == "a-wang" and isinstance(failed, RuntimeError)
    waiting = await make_ticket(store, team="support")
    decision = await store.assign_next(waiting, T0)
    assert decision.agent is None and "at capacity email 3/3" in str(decision.considered)


async def test_a_group_writes_the_agents_version_once(sqlite_store):
    store = sqlite_store
    tickets = [await make_ticket(store, team="chat") for _ in range(5)]
    seen: list[str] = []
    conn = store._writer.conn
    conn.set_trace_callback(seen.append)
    try:
        decisions = await _one_group(store, *(store.assign_next(t, T0) for t in tickets))
    finally:
        conn.set_trace_callback(None)
    assert all(d.agent is not None for d in decisions)
    assert sum("assign.agents_version" in sql and sql.startswith("INSERT INTO state") for sql in seen) == 1
    assert sum(sql.startswith("SELECT value FROM state") for sql in seen) == 1


async def test_a_rolled_back_sync_in_a_commit_drops_what_it_changed_in_the_cache(sqlite_store, clock, monkeypatch):
    # in one group: a decision writes the group's agents version, then a commit's sync takes a place
    # in the cache and fails — its savepoint rolls back, the version stays: the cache must be dropped
    store = sqlite_store
    store.sync_in_commit(clock)
    for _ in range(2):
        await make_ticket(store, team="support")  # a-wang: 2 of 3 email places, in their commits
    billing = await make_ticket(store, team="billing")

    def failing_sla_sync(tx, t):
        raise RuntimeError("after the assignment")

    monkeypatch.setattr(store._tx_type, "sla_sync", failing_sla_sync)
    other, unassigned = await _one_group(store, store.assign_next(billing, T0), make_ticket(store, team="support"))
    monkeypatch.undo()
    assert other.agent is not None
    assert await assignee(store, unassigned) is None  # the sync was rolled back alone
    assert {a.id: a.load for a in await store.list_agents()}["a-wang"] == {"email": 2}
    assert (await store.assign_next(unassigned, T0)).agent == "a-wang"  # the third place is free
