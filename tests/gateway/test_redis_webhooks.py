"""Outbound webhooks from several instances on one real Redis: every event
reaches the receiver (tests/gateway/webhook_receiver.py) exactly once and in
each ticket's commit order — while the instances race on fan-out and claims,
and when one dies holding leased deliveries (the leases run out, another
instance takes the rows over; the dead one's late settle is refused)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import time
from collections import defaultdict
from datetime import timedelta

import aiohttp
import pytest

from gateway import keys
from gateway.app import create_app
from gateway.store.redis_store import RedisStore
from gateway.tasks import cancel_and_wait
from tests.daemon import OMNIGATE, free_port, stop, wait_ready
from tests.gateway.conftest import AUTH, TOKEN
from tests.gateway.test_crash import START
from tests.gateway.test_webhooks import T0, accepted_order, emit, service
from tests.gateway.test_webhooks_app import config, until
from tests.gateway.webhook_receiver import SECRET, FakeClock, Receiver

pytestmark = pytest.mark.integration


async def drive_all(services: list, clock: FakeClock, max_rounds: int = 5000) -> None:
    """Rounds of every instance at once; when nothing is due, the clock jumps to the next due time."""
    for _ in range(max_rounds):
        if sum(await asyncio.gather(*(s.step() for s in services))):
            continue
        dues = [d for d in await asyncio.gather(*(s.next_due() for s in services)) if d is not None]
        if not dues:
            return
        clock.now = max(clock.now + timedelta(milliseconds=1), min(dues))
    raise AssertionError("deliveries did not finish")


async def test_two_instances_deliver_each_event_once_in_ticket_order_and_take_over_a_dead_ones_leases(
        redis_server, redis_prefix):
    rng = random.Random(5)
    clock = FakeClock(T0)

    def flaky(n, ev):  # a third of the attempts fail before the receiver processes them: retried
        return (500, False, {}) if rng.random() < 0.33 else (200, True, {})

    r = await Receiver(decide=flaky).start()
    a = RedisStore(redis_server.url, prefix=redis_prefix, consumer="a", clock=clock)
    b = RedisStore(redis_server.url, prefix=redis_prefix, consumer="b", clock=clock)
    endpoints = {"x": {"url": r.url, "secret": SECRET, "allow_private": True}}
    try:
        svc_a = service(a, clock, endpoints, workers=4, breaker_threshold=1000)
        svc_b = service(b, clock, endpoints, workers=4, breaker_threshold=1000)
        await asyncio.gather(svc_a.start(), svc_b.start())  # both register the endpoint: one row
        assert [e["name"] for e in await a.webhook_endpoints()] == ["x"]
        # events committed through both instances, interleaved, while both deliver
        first = await asyncio.gather(emit(a, clock, tickets=6, per_ticket=4), emit(b, clock, tickets=6, per_ticket=4))
        for _ in range(3):
            await asyncio.gather(svc_a.step(), svc_b.step())
        # more events; instance a claims the heads it can and dies before sending them
        more = await emit(a, clock, tickets=6, per_ticket=3)
        await svc_a._fanout()
        held = await a.webhook_claim(6, svc_a.lease_s, clock(), 1000)
        assert held and all(i.endpoint == "x" for i in held)
        await svc_a.close()
        died_at = clock()
        # b alone: the held rows are not due before the lease runs out, then b takes them over
        await drive_all([svc_b], clock)
        log = await b.webhook_deliveries("x", limit=10_000)
        for item in held:
            tries = [d for d in log if d["event_id"] == item.event_id and d["at"] >= died_at.isoformat()]
            assert tries and min(d["at"] for d in tries) >= (died_at + timedelta(seconds=svc_a.lease_s)).isoformat()
            assert any(d["outcome"] == "delivered" for d in tries)
        expected: dict[str, list[str]] = defaultdict(list)
        for order in (*first, more):
            for tid, evs in order.items():
                expected[tid] += evs
        # emit() names tickets T000…: both instances' events of one ticket are in commit (stream) order
        stream = await a.r.xrange(a.k.events)
        in_stream: dict[str, list[str]] = defaultdict(list)
        for _sid, f in stream:
            p = json.loads(f[b"payload"])
            in_stream[p["ticket_id"]].append(f"{f[b'topic'].decode()}#{p['n']}")
        assert accepted_order(r) == in_stream  # every event, each ticket's in commit order
        assert sorted(sum(in_stream.values(), [])) == sorted(sum(expected.values(), []))
        assert r.duplicates == 0 and len(r.seen) == len(stream) and r.bad_signatures == 0
        # the dead instance's late settle is refused: b holds those rows now (they are delivered)
        assert await a.webhook_settle(held[0], "delivered", now=clock()) is False
        assert await b.webhook_queue_stats() == {}
        await svc_b.close()
    finally:
        await a.close()
        await b.close()
        await r.stop()


async def test_two_gateways_on_one_redis_send_each_committed_event_once(aiohttp_client, tmp_path, redis_server,
                                                                       redis_prefix):
    r = await Receiver().start()
    backend = {"OMNIGATE_REDIS_URL": redis_server.url, "OMNIGATE_STORE__REDIS_PREFIX": redis_prefix}
    try:
        apps = [create_app(config(tmp_path / n, r.url, backend)) for n in ("a", "b")]
        clients = [await aiohttp_client(app) for app in apps]
        for i in range(12):  # six customers, two messages each, sent to either gateway
            c = clients[i % 2]
            body = {"external_id": f"m{i}", "sender": {"kind": "phone", "value": f"1390013900{i % 6}"},
                    "text": f"message {i}"}
            assert (await c.post("/channels/api/messages", json=body, headers=AUTH)).status == 202
            await apps[i % 2][keys.WORKER].drain()
        store = apps[0][keys.STORE]
        stream = await store.r.xrange(store.k.events)
        assert len(stream) == 6 * 3  # per customer: ticket.created, message.created twice
        await until(lambda: len(r.seen) == len(stream))
        await asyncio.sleep(0.3)  # a second delivery would arrive now
        assert r.duplicates == 0 and len(r.accepted) == len(stream)
        by_ticket: dict[str, list[str]] = defaultdict(list)
        for _sid, f in stream:
            by_ticket[f[b"ticket_id"].decode()].append(f[b"id"].decode())
        got: dict[str, list[str]] = defaultdict(list)
        for ev in r.accepted:
            got[ev["data"]["ticket"]["id"]].append(ev["_id"])
        assert got == by_ticket  # each ticket's events in commit order
    finally:
        await r.stop()


class SlowReceiver(Receiver):
    """Answers after ``delay`` seconds (deliveries stay in flight meanwhile); counts requests in its hands."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.delay = 0.0
        self.inflight = 0
        self.arrived: list[str] = []  # webhook-ids in the order requests reached the handler

    async def handle(self, request):
        self.inflight += 1
        self.arrived.append(request.headers["webhook-id"])
        try:
            await asyncio.sleep(self.delay)
            return await super().handle(request)
        finally:
            self.inflight -= 1


def serve_hooks(tmp_path, name: str, port: int, redis_url: str, prefix: str, hook: str, clock) -> subprocess.Popen:
    env = {**os.environ, "OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_LOG_LEVEL": "warning",
           "OMNIGATE_TEST_CLOCK": clock.isoformat(), "OMNIGATE_REDIS_URL": redis_url,
           "OMNIGATE_STORE__REDIS_PREFIX": prefix, "OMNIGATE_STORE__REDIS_CLAIM_IDLE_S": "2",
           "OMNIGATE_RULES_DIR": str(tmp_path / "no-rules"),
           "OMNIGATE_WEBHOOKS__ENDPOINTS__CRM__URL": hook, "OMNIGATE_WEBHOOKS__ENDPOINTS__CRM__SECRET": SECRET,
           "OMNIGATE_WEBHOOKS__ENDPOINTS__CRM__ALLOW_PRIVATE": "true", "OMNIGATE_WEBHOOKS__TIMEOUT": "1s"}
    env.pop("OMNIGATE_TEST_CRASH_AT", None)
    with open(tmp_path / f"{name}.log", "ab") as log:
        return subprocess.Popen([OMNIGATE, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                                 str(tmp_path / name)], env=env, stdout=subprocess.DEVNULL, stderr=log)


async def test_a_gateway_killed_with_deliveries_in_flight_leaves_them_to_another_after_the_lease(
        tmp_path, redis_server, redis_prefix):
    """``omnigate serve`` A sends to a slow receiver and is SIGKILLed with deliveries in flight; B,
    started afterwards on the same Redis, delivers the rest and — once A's leases (2 × timeout + 5 s)
    ran out — the ones A held: every event accepted once, each ticket's in commit order."""
    r = await SlowReceiver().start()
    r.delay = 0.5
    procs: dict[str, subprocess.Popen] = {}
    store = RedisStore(redis_server.url, prefix=redis_prefix)
    try:
        async with asyncio.timeout(120):
            launched = time.monotonic()
            port_a = free_port()
            procs["a"] = serve_hooks(tmp_path, "a", port_a, redis_server.url, redis_prefix, r.url, START)
            await wait_ready(f"http://127.0.0.1:{port_a}", procs["a"])
            async with aiohttp.ClientSession(f"http://127.0.0.1:{port_a}") as s:
                for i in range(30):  # ten customers, three messages each
                    body = {"external_id": f"m{i}", "sender": {"kind": "phone", "value": f"1390013900{i % 10}"},
                            "text": f"message {i}"}
                    async with s.post("/channels/api/messages", json=body, headers=AUTH) as resp:
                        assert resp.status == 202
            while r.inflight < 4:  # a's deliveries in the receiver's hands
                await asyncio.sleep(0.02)
            procs["a"].send_signal(signal.SIGKILL)
            assert procs["a"].wait() == -signal.SIGKILL
            r.delay = 0.0
            # wait() blocked this loop: requests a wrote just before it died may still be in the socket
            # buffers; let the receiver take them before counting what a sent
            seen_before = -1
            while seen_before != len(r.arrived) or r.inflight:
                seen_before = len(r.arrived)
                await asyncio.sleep(0.3)
            # what a sent and never recorded as delivered is what b may have to send again
            recorded = {d["event_id"] for d in await store.webhook_deliveries("crm", limit=1000)
                        if d["outcome"] == "delivered"}
            held = set(r.arrived) - recorded
            # b's clock goes on from where a's was (both tick from START)
            port_b = free_port()
            procs["b"] = serve_hooks(tmp_path, "b", port_b, redis_server.url, redis_prefix, r.url,
                                     START + timedelta(seconds=time.monotonic() - launched))
            await wait_ready(f"http://127.0.0.1:{port_b}", procs["b"])
            while (await store.journal_counts())["pending"]:
                await asyncio.sleep(0.2)
            stream = await store.r.xrange(store.k.events)
            assert len(stream) == 10 * 4  # per customer: ticket.created, message.created × 3
            while len(r.seen) < len(stream) or await store.webhook_queue_stats():
                await asyncio.sleep(0.1)
        by_ticket: dict[str, list[str]] = defaultdict(list)
        for _sid, f in stream:
            by_ticket[f[b"ticket_id"].decode()].append(f[b"id"].decode())
        got: dict[str, list[str]] = defaultdict(list)
        for ev in r.accepted:
            got[ev["data"]["ticket"]["id"]].append(ev["_id"])
        assert got == by_ticket  # every event accepted once, each ticket's in commit order
        log = await store.webhook_deliveries("crm", limit=1000)
        # an attempt that got no answer within the 1 s timeout (a loaded machine) is sent again by design
        gave_up = {d["event_id"] for d in log if d["outcome"] != "delivered"}
        # otherwise only what a had sent without recording it went out twice (same webhook-id)
        assert held and set(r.duplicate_ids) <= held | gave_up and len(r.duplicate_ids) == r.duplicates
        # what a held went out again from b on a second attempt: b took the rows over when a's leases ran out
        assert {d["event_id"] for d in log if d["attempt"] >= 2 and d["outcome"] == "delivered"} >= held
        assert r.bad_signatures == 0
    finally:
        for p in procs.values():
            stop(p)
        await store.close()
        await r.stop()


class Looks(asyncio.Event):
    """A service's wake-up event that notes the timeout of each wait its
    loop begins (``wait_for(self._wake.wait(), timeout=self.poll_s)``: both
    read in one step), so a test knows when the service sleeps, and how long."""

    def __init__(self, svc) -> None:
        super().__init__()
        self.svc = svc
        self.timeouts: list[float] = []

    def wait(self):
        self.timeouts.append(self.svc.poll_s)
        return super().wait()


async def test_an_idle_instance_takes_over_rows_another_queued_and_died_holding(redis_server, redis_prefix):
    """Instance b idles (nothing due that it knows of); a fans the new events out, leases every head
    and dies. b never queued those rows itself, yet claims them once a's leases run out (an idle
    instance on a shared store checks again every ``SHARED_RECHECK_S`` on its clock)."""
    clock = FakeClock(T0)
    r = await Receiver().start()
    a = RedisStore(redis_server.url, prefix=redis_prefix, consumer="a", clock=clock)
    b = RedisStore(redis_server.url, prefix=redis_prefix, consumer="b", clock=clock)
    endpoints = {"x": {"url": r.url, "secret": SECRET, "allow_private": True}}
    svc_a, svc_b = service(a, clock, endpoints), service(b, clock, endpoints)
    await svc_a.start()
    await svc_b.start()
    svc_b._wake = looks = Looks(svc_b)
    task = asyncio.create_task(svc_b.run())

    async def scenario() -> None:
        await until(lambda: looks.timeouts)  # b has looked: nothing queued, nothing due
        svc_b.poll_s = 30.0  # b's next look comes later (its wake-up below stands for its poll)
        # not a fixed sleep: a round of b's still under way would fan out a's events itself
        await until(lambda: looks.timeouts[-1] == 30.0)
        order = await emit(a, clock, tickets=3, per_ticket=2)
        assert await svc_a._fanout() == 6
        held = await a.webhook_claim(10, svc_a.lease_s, clock(), 1000)
        assert len(held) == 3  # every ticket's head, then a dies
        svc_b.poll_s = 0.05
        svc_b._wake.set()  # b's poll: it finds the new events fanned out already (by a), nothing for it
        await asyncio.sleep(0.3)
        assert r.requests == 0  # a's leases hold
        clock.now += timedelta(seconds=svc_a.lease_s + 1)
        await until(lambda: len(r.seen) == 6)
        assert accepted_order(r) == order and r.duplicates == 0

    try:
        await asyncio.wait_for(scenario(), 60)  # a hang fails the test
    finally:
        await cancel_and_wait(task)  # again if the service swallowed the cancellation
        await svc_b.close()
        await svc_a.close()
        await a.close()
        await b.close()
        await r.stop()
