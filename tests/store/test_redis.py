"""What only the Redis backend has to prove: several stores (instances) on one
Redis share one journal and one consumer group, a dead consumer's work is
taken over, racing commits stay exactly-once, an acknowledged append survives
redis-server being killed (AOF, appendfsync always), and an unreachable Redis
is a StoreError that clears when it comes back."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta, timezone

import pytest

from connectors.base import Nonce, NonceReused
from gateway.store.base import StoreError
from gateway.store.redis_store import RedisStore
from routing.model import Inbound, Sender
from routing.pipeline import Settings, decide, lookup
from tests.integration.redis import RedisServer, redis_binary
from tests.conftest import need

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
_n = itertools.count()


@pytest.fixture
async def stores(redis_server, redis_prefix):
    """A factory of stores sharing one prefix: each is one instance."""
    made: list[RedisStore] = []

    def make(**kw) -> RedisStore:
        s = RedisStore(redis_server.url, prefix=redis_prefix, clock=lambda: NOW, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


def msg(ext: str, sender: str = "a@example.cn", text: str = "where is my refund?") -> Inbound:
    return Inbound(channel="api", account="api", external_id=ext, kind="message",
                   sender=Sender("email", sender, "A"), text=text)


async def decide_and_commit(store: RedisStore, jid: str, m: Inbound):
    settings = Settings()
    look = lookup(m, settings)
    snap = await store.snapshot(look, NOW)
    return await store.commit(decide(m, jid, snap, settings, look))


async def test_one_consumer_group_shared_by_instances(stores):
    a, b = stores(consumer="a"), stores(consumer="b")
    ids = [(await a.journal_append("api", "api", f"k{i}", b"x")).journal_id for i in range(6)]
    got_a = await a.claim_pending(0, 3)
    got_b = await b.claim_pending(0, 10)
    # every entry goes to exactly one instance
    assert sorted(e.id for e in got_a + got_b) == sorted(ids)
    assert not {e.id for e in got_a} & {e.id for e in got_b}
    # a claim again returns only its own unfinished entries, not the other's
    assert {e.id for e in await a.claim_pending(0, 10)} == {e.id for e in got_a}


async def test_a_dead_instances_pending_entries_are_taken_over(stores):
    a = stores(consumer="dies")
    ids = [(await a.journal_append("api", "api", f"k{i}", b"x")).journal_id for i in range(4)]
    claimed = await a.claim_pending(0, 10)
    assert [e.id for e in claimed] == ids
    await a.journal_mark_processed(ids[0])  # finished one, then died holding the rest
    patient = stores(consumer="patient", claim_idle_s=3600)
    assert await patient.claim_pending(0, 10) == []  # not idle long enough: still the other's
    heir = stores(consumer="heir", claim_idle_s=0)
    taken = await heir.claim_pending(0, 10)
    assert [e.id for e in taken] == ids[1:]
    assert all(e.raw == b"x" for e in taken)


async def test_commit_acknowledges_the_stream_entry(stores, redis_server):
    a = stores(consumer="a")
    j = (await a.journal_append("api", "api", "m1", b"{}")).journal_id
    (entry,) = await a.claim_pending(0, 10)
    await decide_and_commit(a, entry.id, msg("m1"))
    pending = await a.r.xpending(a.k.stream, a.k.group)
    assert pending["pending"] == 0
    assert (await a.journal_get(j)).status == "processed"
    # a settled entry is never claimed again, even by a taker-over
    assert await stores(consumer="heir", claim_idle_s=0).claim_pending(0, 10) == []


async def test_two_instances_racing_on_one_message_commit_it_once(stores):
    """The same message journaled twice (a redelivery to each instance) and
    decided by both at once: one timeline entry, the other entry a duplicate."""
    a, b = stores(consumer="a"), stores(consumer="b")
    for round_ in range(10):
        ext = f"race{round_}"
        ja = (await a.journal_append("api", "api", f"{ext}-a", b"{}")).journal_id
        jb = (await b.journal_append("api", "api", f"{ext}-b", b"{}")).journal_id
        results = await asyncio.gather(decide_and_commit(a, ja, msg(ext, sender=f"s{round_}@x.cn")),
                                       decide_and_commit(b, jb, msg(ext, sender=f"s{round_}@x.cn")),
                                       return_exceptions=True)
        outcomes = sorted(r.outcome if not isinstance(r, Exception) else type(r).__name__ for r in results)
        # a Conflict (both made the new contact) is retried by the worker; never two "processed"
        assert outcomes.count("processed") == 1, outcomes
    counts = await a.counts()
    assert counts["timeline"] == 10 and counts["tickets"] == 10 and counts["contacts"] == 10


async def test_ticket_numbers_are_unique_across_instances(stores):
    a, b = stores(consumer="a"), stores(consumer="b")

    async def one(store, i):
        j = (await store.journal_append("api", "api", f"n{i}", b"{}")).journal_id
        return await decide_and_commit(store, j, msg(f"n{i}", sender=f"n{i}@x.cn"))

    results = await asyncio.gather(*(one(a if i % 2 else b, i) for i in range(40)))
    numbers = [r.ticket_number for r in results]
    assert sorted(numbers) == list(range(1000, 1040))


def nonce(value: str) -> Nonce:
    return Nonce(scope="wechat:wx1", value=value, expires=NOW + timedelta(seconds=300), now=NOW)


async def test_nonces_are_shared_by_instances(stores):
    a, b = stores(), stores()
    first = await a.journal_append("wechat", "wx1", "k1", b"<xml>a</xml>", nonce=nonce("n1"))
    again = await b.journal_append("wechat", "wx1", "k1", b"<xml>a</xml>", nonce=nonce("n1"))
    assert first.created and (again.journal_id, again.created) == (first.journal_id, False)
    with pytest.raises(NonceReused):
        await b.journal_append("wechat", "wx1", "k2", b"<xml>forged</xml>", nonce=nonce("n1"))
    assert [e.key for e in await a.journal_list()] == ["k1"]
    ttl = await a.r.pttl(a.k.nonce("wechat:wx1", "n1"))
    assert 0 < ttl <= 300_000  # forgotten by Redis itself when the window closes


async def test_acknowledged_appends_survive_redis_being_killed(tmp_path):
    """AOF with appendfsync always: an append answered is on disk; SIGKILL the
    server (no shutdown save), start it on the same directory: all there."""
    need("redis-server", redis_binary() is not None, "it is not installed")
    server = RedisServer(tmp_path).start()
    try:
        s = RedisStore(server.url, prefix="dur:")
        acked = [r.journal_id for r in await asyncio.gather(
            *(s.journal_append("api", "api", f"d{i}", b"payload %d" % i) for i in range(300)))]
        server.kill()
        with pytest.raises(StoreError, match="redis unavailable"):
            await s.journal_append("api", "api", "while-down", b"x")
        server.start()
        stored = {e.id: e for e in await s.journal_list(limit=1000, with_raw=True)}  # the client reconnects
        assert set(acked) <= set(stored) and len(stored) == 300
        assert all(stored[j].raw.startswith(b"payload ") for j in acked)
        assert (await s.journal_counts())["pending"] == 300
        await s.close()
    finally:
        server.stop()


async def test_concurrent_assignment_through_two_instances_never_exceeds_capacity(stores):
    a, b = stores(consumer="a"), stores(consumer="b")
    agents = [("ag1", 3), ("ag2", 2), ("ag3", 1)]

    async def take(i):
        store = a if i % 2 else b
        # each instance ranks the agents its own way (a stale view): the script re-checks
        order = agents if i % 3 else list(reversed(agents))
        return await store.assign_take(f"t{i}", "chat", order)

    got = await asyncio.gather(*(take(i) for i in range(40)))
    assert sorted(g for g in got if g) == ["ag1"] * 3 + ["ag2"] * 2 + ["ag3"]
    assert [await a.agent_load(x) for x, _ in agents] == [{"chat": 3}, {"chat": 2}, {"chat": 1}]
    held = next(f"t{i}" for i, g in enumerate(got) if g == "ag2")
    assert await a.assign_take(held, "chat", agents) == "ag2"  # already held: no second place taken
    assert await a.agent_load("ag2") == {"chat": 2}
    assert await b.assign_release(held) == "ag2" and await a.assign_release(held) is None  # idempotent
    assert await a.agent_load("ag2") == {"chat": 1}
    assert await a.assign_take("late", "chat", agents) == "ag2"


async def test_leases_have_one_owner_and_fail_over(stores):
    a, b = stores(), stores()
    assert await a.lease_acquire("imap:support", "inst-a", 30)
    assert not await b.lease_acquire("imap:support", "inst-b", 30)
    assert await a.lease_acquire("imap:support", "inst-a", 30)  # the holder again: extended
    assert await a.lease_renew("imap:support", "inst-a", 30)
    assert not await b.lease_renew("imap:support", "inst-b", 30)
    assert not await b.lease_release("imap:support", "inst-b")  # not its lease
    assert await a.lease_holder("imap:support") == "inst-a"
    # the holder dies: its lease runs out (shortened here instead of waiting) and b takes over
    await a.r.pexpire(a.k.lease("imap:support"), 1)
    await asyncio.sleep(0.05)
    assert await b.lease_acquire("imap:support", "inst-b", 30)
    assert not await a.lease_renew("imap:support", "inst-a", 30)  # a learns it lost it
    assert await b.lease_release("imap:support", "inst-b")
    assert await a.lease_holder("imap:support") is None


async def test_outbox_rows_are_leased_to_one_instance_and_settled_once(stores):
    from gateway.store.base import REPLY_TOPIC, Delivery

    # (the outbox claims replies; other topics are events: the webhooks' stream, redis_webhooks.py)
    clock = {"now": NOW}
    a = stores(consumer="a")
    b = stores(consumer="b")
    a.clock = b.clock = lambda: clock["now"]
    j = (await a.journal_append("api", "api", "m1", b"{}")).journal_id
    m = msg("m1")
    settings = Settings()
    look = lookup(m, settings)
    c = decide(m, j, await a.snapshot(look, NOW), settings, look)
    from routing.state import OutboxEvent

    c.outbox.append(OutboxEvent(REPLY_TOPIC, {"n": 1}, c.ticket_id))
    c.outbox.append(OutboxEvent(REPLY_TOPIC, {"n": 2}, c.ticket_id))
    await a.commit(c)
    got_a, got_b = await asyncio.gather(a.outbox_claim(REPLY_TOPIC, 10, 30), b.outbox_claim(REPLY_TOPIC, 10, 30))
    assert sorted(i.payload["n"] for i in got_a + got_b) == [1, 2]  # each row to one instance
    item = (got_a + got_b)[0]
    assert await a.outbox_next_due(REPLY_TOPIC) == NOW + timedelta(seconds=30)
    # the holder dies; once the lease runs out the other takes the row over, and the late holder's settle is refused
    clock["now"] = NOW + timedelta(seconds=31)
    retaken = await b.outbox_claim(REPLY_TOPIC, 10, 30)
    assert {i.id for i in retaken} == {i.id for i in got_a + got_b} and all(i.attempts == 2 for i in retaken)
    late = Delivery(status="sent", at=clock["now"], attempts=1)
    assert not await a.outbox_settle(item, late)
    mine = next(i for i in retaken if i.id == item.id)
    assert await b.outbox_settle(mine, Delivery(status="sent", at=clock["now"], attempts=2))
    assert not await b.outbox_settle(mine, Delivery(status="sent", at=clock["now"], attempts=2))  # once
    clock["now"] = NOW + timedelta(hours=1)
    assert [i.id for i in await a.outbox_claim(REPLY_TOPIC, 10, 30)] == [i.id for i in retaken if i.id != item.id]


async def synced(replica: RedisServer) -> None:
    """Wait until the replica's link to its primary is up (its first sync done)."""
    probe = RedisStore(replica.url)
    try:
        for _ in range(400):
            if (await probe.r.info("replication")).get("master_link_status") == "up":
                return
            await asyncio.sleep(0.05)
        raise TimeoutError("the replica did not sync")
    finally:
        await probe.close()


async def test_appends_can_wait_for_a_replica(tmp_path):
    """With wait_replicas, an append is answered only once a replica has it;
    without a replica it is refused (StoreError → 503), and the platform's
    retry gets the same entry once the replica is back."""
    need("redis-server", redis_binary() is not None, "it is not installed")
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    primary = RedisServer(tmp_path / "p").start()
    replica = RedisServer(tmp_path / "r", replica_of=primary).start()
    s = RedisStore(primary.url, prefix="w:", wait_replicas=1, wait_timeout_ms=3000)
    try:
        await synced(replica)
        acked = [(await s.journal_append("api", "api", f"w{i}", b"x")).journal_id for i in range(20)]
        replica_store = RedisStore(replica.url, prefix="w:")
        on_replica = {e.id for e in await replica_store.journal_list(limit=100)}
        await replica_store.close()
        assert set(acked) <= on_replica  # acknowledged means on the replica too
        replica.kill()
        s.wait_timeout_ms = 200
        with pytest.raises(StoreError, match="reached 0 of 1 replicas"):
            await s.journal_append("api", "api", "lonely", b"x")
        replica.start()
        s.wait_timeout_ms = 3000
        await synced(replica)
        again = await s.journal_append("api", "api", "lonely", b"x")  # the platform's retry
        assert not again.created and len(await s.journal_list(limit=100)) == 21
    finally:
        await s.close()
        replica.stop()
        primary.stop()
