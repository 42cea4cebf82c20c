"""One sender's messages are decided in arrival order — by every worker of
one instance (both backends), and across instances sharing one Redis (the
claimer registers senders, a worker decides an entry only on its turn; see
gateway/store/redis_order.py), including when an instance dies holding
claimed entries."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timezone

import msgspec
import pytest

from gateway.order import LocalOrder, RedisOrder
from gateway.worker import Pipeline, Worker
from routing.pipeline import Settings

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
SENDERS = ("ann@order.test", "bob@order.test", "cy@order.test")
_n = itertools.count()


def raw(ext: str, sender: str) -> bytes:
    return msgspec.json.encode({"external_id": ext, "sender": {"kind": "email", "value": sender},
                                "text": f"message {ext} ({next(_n)})"})


async def append_interleaved(store, count: int, tag: str) -> dict[str, list[str]]:
    """``count`` messages, the senders interleaved; each sender's external ids in arrival order."""
    sent: dict[str, list[str]] = {s: [] for s in SENDERS}
    for i in range(count):
        sender = SENDERS[i % len(SENDERS)]
        ext = f"{tag}-{i:03d}"
        await store.journal_append("api", "api", ext, raw(ext, sender))
        sent[sender].append(ext)
    return sent


async def decided(store, sent: dict[str, list[str]]) -> dict[str, list[str]]:
    """Each sender's messages in the order they were committed (the timeline:
    every entry has the same ``at``, so its order is the commit order)."""
    out: dict[str, list[str]] = {}
    for sender, exts in sent.items():
        first = next(e for e in await store.journal_list(limit=1000) if e.key == exts[0])
        page = await store.timeline(contact_id=first.contact_id, limit=1000)
        out[sender] = [e.external_id for e in page.items if e.kind == "message_in"]
    return out


async def drain(*workers: Worker, timeout: float = 60) -> None:
    store = workers[0].store
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        for w in workers:
            w.wake()
        counts = await store.journal_counts()
        if counts.get("pending", 0) == 0 and not any(w._inflight for w in workers):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(f"journal not drained: {await store.journal_counts()}")


async def test_one_instance_decides_each_sender_in_arrival_order(store):
    sent = await append_interleaved(store, 45, "one")
    pipeline = Pipeline(store, Settings(), clock=lambda: NOW)
    assert isinstance(pipeline.order, RedisOrder if store.backend == "redis" else LocalOrder)
    worker = Worker(pipeline, concurrency=12, batch=8)
    await worker.start()
    try:
        await drain(worker)
    finally:
        await worker.stop()
    assert await decided(store, sent) == sent
    assert (await store.journal_counts())["processed"] == 45


# ---------------------------------------------------------------- several instances (Redis)


@pytest.fixture
async def instances(redis_server, redis_prefix):
    """A factory of instances (a store and its worker) sharing one Redis prefix."""
    from gateway.store.redis_store import RedisStore

    made: list[tuple[RedisStore, Worker | None]] = []

    def make(name: str, *, claim_idle_s: float = 60.0, worker: bool = True, concurrency: int = 6):
        s = RedisStore(redis_server.url, prefix=redis_prefix, clock=lambda: NOW, consumer=name,
                       claim_idle_s=claim_idle_s)
        w = Worker(Pipeline(s, Settings(), clock=lambda: NOW), concurrency=concurrency, batch=4,
                   rescan_s=0.1) if worker else None
        made.append((s, w))
        return s, w

    yield make
    for s, w in made:
        if w is not None:
            await w.stop()
        await s.close()


@pytest.mark.integration
async def test_two_instances_decide_one_senders_interleaved_messages_in_arrival_order(instances):
    a, wa = instances("a")
    b, wb = instances("b")
    sent = await append_interleaved(a, 90, "two")
    await wa.start()
    await wb.start()
    await drain(wa, wb)
    assert wa.done > 0 and wb.done > 0, "both instances claimed and decided entries"
    assert wa.pipeline.order.waits + wb.pipeline.order.waits > 0, "turns were contended across instances"
    assert await decided(a, sent) == sent
    assert (await a.journal_counts()) == {"pending": 0, "failed": 0, "duplicate": 0, "processed": 90}
    # nothing left behind: every sender's set and the registry are empty
    keys = [k async for k in a.r.scan_iter(match=a.k.p + "ord:*")]
    assert keys == []


@pytest.mark.integration
async def test_a_dead_instances_claimed_entries_do_not_block_its_senders_forever(instances):
    """Instance ``dead`` claims entries, registers only one of them and
    never decides them (it died between its claim and its registration). The live instance's later
    entries of the same senders wait — they are not decided before the dead
    one's — until XAUTOCLAIM hands the dead one's entries over; then
    everything is decided, in arrival order."""
    dead, _ = instances("dead", worker=False)
    live, worker = instances("live", claim_idle_s=0.3)
    sent = await append_interleaved(dead, 12, "dead")
    claimed = await dead.claim_pending(0, 6)
    assert [e.key for e in claimed] == [f"dead-{i:03d}" for i in range(6)]
    # registered: only the first (ann's); bob's and cy's claimed entries stay unregistered, so
    # their later entries, registered by the live instance, head their senders' sets — and
    # must still wait: a lower pending entry is unregistered
    pipeline = Pipeline(dead, Settings(), clock=lambda: NOW)
    await pipeline.admit(claimed[:1])
    assert await dead.order_turn(claimed[0].id, "api:email:" + SENDERS[0]) == "go"
    assert await dead.order_turn(claimed[1].id, "api:email:" + SENDERS[1]) == "unregistered"
    later = await append_interleaved(dead, 6, "late")
    for s in SENDERS:
        sent[s] += later[s]
    await worker.start()
    await drain(worker)
    assert await decided(live, sent) == sent
    counts = await live.journal_counts()
    assert counts["processed"] == 18 and counts["pending"] == 0
    assert worker.pipeline.order.waits > 0, "the live instance waited for the dead one's entries"


@pytest.mark.integration
async def test_a_pending_entry_nobody_can_claim_holds_the_gate_only_for_a_while(instances):
    """An entry pending in the index but gone from the stream (no instance
    can ever claim and register it) must not stop every sender for good:
    after ``stuck_after_s`` the entries above it go ahead (logged)."""
    store, _ = instances("only", worker=False)
    lost = await store.journal_append("api", "api", "lost", raw("lost", SENDERS[0]))
    sid = await store.r.hget(store.k.journal_entry(lost.journal_id), "sid")
    await store.r.xdel(store.k.stream, sid)
    sent = await append_interleaved(store, 4, "after")
    order = RedisOrder(store, stuck_after_s=0.3)
    worker = Worker(Pipeline(store, Settings(), clock=lambda: NOW, order=order), concurrency=4, rescan_s=0.1)
    await worker.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (await store.journal_counts())["processed"] < 4:
            assert loop.time() < deadline, "the gate stayed shut"
            await asyncio.sleep(0.02)
    finally:
        await worker.stop()
    assert order.waits > 0  # they were held first
    assert await decided(store, {s: v for s, v in sent.items()}) == sent
    assert (await store.journal_counts())["pending"] == 1  # the lost one, still replayable
