"""Outbound webhooks (issue 13): real SQLite and a real Redis (the same
tests on both backends), real aiohttp receivers on loopback, an injected
clock (no sleeping through back-offs)."""

from __future__ import annotations

import random
import socket
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import pytest
from structlog.testing import capture_logs

from gateway.config import WebhookEndpointConfig, WebhooksConfig
from gateway.store.sqlite import SQLiteStore
from gateway.webhooks.service import WebhookService, parse_retry_after
from gateway.webhooks.ssrf import GuardedResolver
from tests.gateway.webhook_receiver import OLD_SECRET, SECRET, FakeClock, Receiver

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
async def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteStore(tmp_path / "omnigate.db")
    else:
        from gateway.store.redis_store import RedisStore

        s = RedisStore(request.getfixturevalue("redis_server").url, prefix=request.getfixturevalue("redis_prefix"))
    yield s
    await s.close()


def service(store, clock, endpoints: dict, **kw) -> WebhookService:
    cfg = WebhooksConfig(endpoints={name: WebhookEndpointConfig(**ep) for name, ep in endpoints.items()}, **kw)
    return WebhookService(store, cfg, clock=clock, jitter=random.Random(7).random)


async def drive(svc: WebhookService, clock: FakeClock, max_rounds: int = 20000) -> None:
    """Run rounds; when nothing is due, jump the clock to the next due time."""
    for _ in range(max_rounds):
        if await svc.step():
            continue
        due = await svc.next_due()
        if due is None:
            return
        clock.now = max(clock.now + timedelta(milliseconds=1), due)
    raise AssertionError("deliveries did not finish")


async def emit(store, clock, tickets: int, per_ticket: int) -> dict[str, list[str]]:
    """Events on tickets, interleaved across tickets; ticket → its event types in commit order."""
    order: dict[str, list[str]] = defaultdict(list)
    types = ["ticket.created", "message.created", "ticket.updated", "ticket.assigned", "ticket.status_changed",
             "message.created"]
    for i in range(per_ticket):
        for t in range(tickets):
            tid = f"T{t:03d}"
            topic = types[i % len(types)]
            await store.webhook_event_insert(topic, tid, {"ticket_id": tid, "n": i}, clock())
            order[tid].append(f"{topic}#{i}")
        clock.now += timedelta(seconds=1)
    return order


def accepted_order(receiver: Receiver) -> dict[str, list[str]]:
    got: dict[str, list[str]] = defaultdict(list)
    for ev in receiver.accepted:
        got[ev["data"]["ticket_id"]].append(f"{ev['type']}#{ev['data']['n']}")
    return got


async def test_flaky_and_six_hours_down_receivers_get_everything_once_in_order_per_ticket(store):
    rng = random.Random(13)
    clock = FakeClock(T0)

    def flaky(n, ev):  # fails half the time; sometimes after processing (the answer is lost)
        r = rng.random()
        if r < 0.25:
            return 500, False, {}
        if r < 0.40:
            return 503, True, {}
        if r < 0.5:
            return 429, False, {"Retry-After": "3"}
        return 200, True, {}

    back_at = T0 + timedelta(hours=6)

    def down(n, ev):
        return (503, False, {}) if clock() < back_at else (204, True, {})

    r1 = await Receiver(decide=flaky).start()
    r2 = await Receiver(decide=down).start()
    try:
        svc = service(store, clock, {
            "flaky": {"url": r1.url, "secret": f"{OLD_SECRET}\n{SECRET}", "allow_private": True},
            "down": {"url": r2.url, "secret": SECRET, "allow_private": True},
        }, workers=8)
        await svc.start()
        order = await emit(store, clock, tickets=12, per_ticket=6)
        await drive(svc, clock)
        await svc.close()
        for r in (r1, r2):
            assert r.bad_signatures == 0
            assert accepted_order(r) == order  # every event, each ticket's in commit order
            assert len(r.seen) == 72
        assert r1.duplicates > 0  # redelivered after a lost answer, with the same webhook-id
        assert "v1," in r1.headers[0]["webhook-signature"] and len(r1.headers[0]["webhook-signature"].split()) == 2
        assert clock() >= back_at  # the down receiver got its events only once it was back
        # the down receiver's events were retried (the breaker paused it in between) until it came back
        log = list(reversed(await store.webhook_deliveries("down", limit=1000)))
        first_event = [d for d in log if d["event_id"] == log[0]["event_id"]]
        assert first_event[-1]["outcome"] == "delivered" and len(first_event) >= 3
        # back-off: first within 10 s, growing, capped at max_delay, retried for 24 h by default
        assert svc.delay_s(1) <= 10 and svc.delay_s(1) < svc.delay_s(3) < svc.delay_s(6) < svc.delay_s(20) <= 3600
        assert svc.horizon_s == 24 * 3600
        assert await store.webhook_dead("down") == [] and await store.webhook_dead("flaky") == []
        # Retry-After was honoured: after a 429 the next attempt waited at least 3 s
        flog = list(reversed(await store.webhook_deliveries("flaky", limit=1000)))
        by_event = defaultdict(list)
        for d in flog:
            by_event[d["event_id"]].append(d)
        waits = [(datetime.fromisoformat(b["at"]) - datetime.fromisoformat(a["at"])).total_seconds()
                 for tries in by_event.values() for a, b in zip(tries, tries[1:]) if a["status_code"] == 429]
        assert waits and min(waits) >= 3
        # the first retry after a failure came within 10 s
        firsts = [(datetime.fromisoformat(t[1]["at"]) - datetime.fromisoformat(t[0]["at"])).total_seconds()
                  for t in by_event.values() if len(t) > 1 and t[0]["status_code"] in (500, 503)]
        assert firsts and max(firsts) <= 10
    finally:
        await r1.stop()
        await r2.stop()


async def test_circuit_breaker_pauses_a_dead_receiver_and_probes_one_at_a_time(store):
    clock = FakeClock(T0)
    r = await Receiver(decide=lambda n, ev: (500, False, {})).start()
    try:
        svc = service(store, clock, {"x": {"url": r.url, "secret": SECRET, "allow_private": True}},
                      breaker_threshold=3, retry_horizon="2h", workers=32)
        await svc.start()
        await emit(store, clock, tickets=20, per_ticket=1)
        assert await svc.step() == 20  # 20 tickets, concurrent
        ep = await store.webhook_endpoint("x")
        assert ep["failures"] >= 3 and ep["paused_until"] is not None
        assert await svc.step() == 0  # paused: nothing claimed, no worker held
        clock.now = datetime.fromisoformat(ep["paused_until"])
        # half-open: no probe while one of its deliveries is in flight, else one at a time
        assert await store.webhook_claim(10, 30, clock(), 3, busy=frozenset({"x"})) == []
        assert await svc.step() == 1
        await drive(svc, clock)
        dead = await store.webhook_dead("x")
        assert len(dead) == 20  # after the horizon: dead letters
        assert r.requests < 20 * 12  # the breaker kept the attempts down
    finally:
        await r.stop()


async def test_dead_letter_lets_the_ticket_go_on_and_replay_redelivers_with_the_same_id(store):
    clock = FakeClock(T0)
    poison = {"on": True}

    def decide(n, ev):
        if ev["data"]["n"] == 0 and poison["on"]:
            return 500, False, {}
        return 200, True, {}

    r = await Receiver(decide=decide).start()
    try:
        svc = service(store, clock, {"x": {"url": r.url, "secret": SECRET, "allow_private": True}},
                      retry_horizon="1h", breaker_threshold=1000)
        await svc.start()
        await emit(store, clock, tickets=1, per_ticket=3)
        await drive(svc, clock)
        assert [e["data"]["n"] for e in r.accepted] == [1, 2]  # later events proceed after the dead letter
        dead = await store.webhook_dead("x")
        assert len(dead) == 1 and dead[0]["type"] == "ticket.created" and dead[0]["ticket_id"] == "T000"
        poison["on"] = False
        assert await store.webhook_replay("x", event_id=dead[0]["event_id"], now=clock()) == 1
        await drive(svc, clock)
        assert r.accepted[-1]["_id"] == dead[0]["event_id"] and await store.webhook_dead("x") == []
        # a delivered event can be sent again by id (same webhook-id: receivers dedupe)
        assert await store.webhook_replay("x", event_id=r.accepted[0]["_id"], now=clock()) == 1
        await drive(svc, clock)
        assert r.duplicates == 1
    finally:
        await r.stop()


async def test_410_disables_the_endpoint_and_says_so(store):
    clock = FakeClock(T0)
    r = await Receiver(decide=lambda n, ev: (410, False, {})).start()
    try:
        svc = service(store, clock, {"x": {"url": r.url, "secret": SECRET, "allow_private": True}})
        await svc.start()
        await emit(store, clock, tickets=3, per_ticket=2)
        with capture_logs() as logs:
            await drive(svc, clock)
        ep = await store.webhook_endpoint("x")
        assert not ep["enabled"] and "410" in ep["disabled_reason"]
        assert any(e["event"] == "webhook.endpoint_disabled" and e["endpoint"] == "x" for e in logs)
        await svc.refresh()
        ok, detail = svc.readiness()
        assert "410" in detail["disabled"]["x"]
        requests = r.requests
        await emit(store, clock, tickets=1, per_ticket=1)
        await drive(svc, clock)
        assert r.requests == requests  # nothing more is sent to it
        # a restart keeps it disabled
        svc2 = service(store, clock, {"x": {"url": r.url, "secret": SECRET, "allow_private": True}})
        await svc2.start()
        assert not (await store.webhook_endpoint("x"))["enabled"]
        await svc.close()
        await svc2.close()
    finally:
        await r.stop()


async def test_a_new_endpoint_gets_events_after_it_was_added_not_the_backlog(store):
    clock = FakeClock(T0)
    r = await Receiver().start()
    try:
        await emit(store, clock, tickets=2, per_ticket=2)  # before any endpoint
        svc = service(store, clock, {"x": {"url": r.url, "secret": SECRET, "allow_private": True,
                                           "events": ["message.", "ticket.created"]}})
        await svc.start()
        await drive(svc, clock)
        assert r.accepted == []
        await store.webhook_event_insert("ticket.created", "N1", {"ticket_id": "N1", "n": 0}, clock())
        await store.webhook_event_insert("ticket.updated", "N1", {"ticket_id": "N1", "n": 1}, clock())
        await store.webhook_event_insert("message.created", "N1", {"ticket_id": "N1", "n": 2}, clock())
        await store.webhook_event_insert("webhook.notify", "N1", {"ticket_id": "N1", "n": 3, "webhook": "other"},
                                         clock())
        await store.webhook_event_insert("webhook.notify", "N1", {"ticket_id": "N1", "n": 4, "webhook": "x"},
                                         clock())
        await drive(svc, clock)
        # the filter takes types and prefixes; a targeted event goes to its endpoint only
        assert [(e["type"], e["data"]["n"]) for e in r.accepted] == [
            ("ticket.created", 0), ("message.created", 2), ("webhook.notify", 4)]
        await svc.close()
    finally:
        await r.stop()


# ---------------------------------------------------------------- SSRF


class FakeResolver:
    """Answers every name with fixed addresses (no real DNS)."""

    def __init__(self, addresses: list[str]):
        self.addresses = addresses
        self.asked: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.asked.append(host)
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for a in self.addresses]

    async def close(self):
        pass


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/hook", "http://10.1.2.3/hook", "http://192.168.0.10/", "http://172.16.5.5/",
    "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[fe80::1]/",
    "http://100.64.0.1/", "http://0.0.0.0/", "http://localhost/hook",
])
async def test_private_literal_addresses_are_refused(store, url):
    svc = service(store, FakeClock(T0), {})
    ep = {"name": "x", "url": url, "allow_private": False, "secret": SECRET, "failures": 0}
    result = await svc.post(ep, "evt_1", b"{}")
    assert result.outcome == "failed" and result.error.startswith("refused:")
    await svc.close()


@pytest.mark.parametrize("address", ["10.0.0.7", "127.0.0.1", "169.254.169.254", "fd00::1"])
async def test_a_name_resolving_to_a_private_address_is_refused(store, address):
    fake = FakeResolver([address])
    svc = WebhookService(store, WebhooksConfig(), clock=FakeClock(T0), resolver=fake)
    ep = {"name": "x", "url": "http://crm.example.test/hook", "allow_private": False, "secret": SECRET,
          "failures": 0}
    result = await svc.post(ep, "evt_1", b"{}")
    assert fake.asked == ["crm.example.test"]
    assert result.outcome == "failed" and "resolves to" in result.error and address in result.error
    await svc.close()


async def test_guarded_resolver_passes_public_addresses():
    fake = FakeResolver(["93.184.216.34"])
    got = await GuardedResolver(fake).resolve("example.test", 80)
    assert got[0]["host"] == "93.184.216.34"


async def test_redirects_are_not_followed(store):
    clock = FakeClock(T0)
    r = await Receiver(decide=lambda n, ev: (302, False, {"Location": "/elsewhere"})).start()
    try:
        svc = service(store, clock, {})
        ep = {"name": "x", "url": r.url, "allow_private": True, "secret": SECRET, "failures": 0}
        result = await svc.post(ep, "evt_1", b'{"type":"x","data":{}}')
        assert result.outcome == "failed" and "redirects are not followed" in result.error
        assert r.requests == 1  # /elsewhere was never asked
        await svc.close()
    finally:
        await r.stop()


# ---------------------------------------------------------------- retention


async def test_retention_prunes_delivered_rows_and_logs_keeps_keys_and_failed_entries(store):
    clock = FakeClock(T0)
    r = await Receiver().start()
    try:
        svc = service(store, clock, {"x": {"url": r.url, "secret": SECRET, "allow_private": True}},
                      delivery_log_max=3)
        await svc.start()
        await emit(store, clock, tickets=2, per_ticket=3)
        await drive(svc, clock)
        ok = await store.journal_append("api", "api", "k1", b'{"raw": 1}')
        bad = await store.journal_append("api", "api", "k2", b'{"raw": 2}')
        if store.backend == "redis":
            store.clock = lambda: T0
            await store.journal_mark_processed(ok.journal_id)
            await store.journal_fail(bad.journal_id, "unparseable")
        else:
            await store._write(lambda c: c.execute(
                "UPDATE journal SET status='processed', processed_at=? WHERE id=?",
                (int(T0.timestamp() * 1000), ok.journal_id)))
            await store._write(lambda c: c.execute("UPDATE journal SET status='failed' WHERE id=?",
                                                   (bad.journal_id,)))
        clock.now = T0 + timedelta(days=100)
        pruned = await svc.prune()
        assert pruned["outbox"] == 6 and pruned["journal_raw"] == 1
        assert len(await store.webhook_deliveries("x")) <= 3
        kept = await store.journal_get(ok.journal_id, with_raw=True)
        assert kept is not None and kept.raw == b""  # the row (its idempotency key) stays, the payload goes
        assert (await store.journal_get(bad.journal_id, with_raw=True)).raw == b'{"raw": 2}'
        again = await store.journal_append("api", "api", "k1", b'{"raw": 1}')
        assert again.journal_id == ok.journal_id and not again.created  # a late redelivery is still recognised
        assert await store.journal_requeue([ok.journal_id]) == 0  # a pruned payload cannot be decided again
        await svc.close()
    finally:
        await r.stop()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def test_cli_lists_dead_letters_and_replays_them(tmp_path, capsys, backend, request, monkeypatch):
    import asyncio
    import json

    from gateway.commands.webhooks import main

    def open_it():
        if backend == "sqlite":
            return SQLiteStore.in_dir(tmp_path)
        from gateway.store.redis_store import RedisStore

        url, prefix = request.getfixturevalue("redis_server").url, request.getfixturevalue("redis_prefix")
        monkeypatch.setenv("OMNIGATE_REDIS_URL", url)  # the command works on Redis, not the data folder
        monkeypatch.setenv("OMNIGATE_STORE__REDIS_PREFIX", prefix)
        return RedisStore(url, prefix=prefix)

    async def setup() -> str:
        s = open_it()
        await s.webhook_upsert("x", {"url": "http://127.0.0.1:9/", "secret": SECRET, "allow_private": True},
                               source="api", now=T0)
        await s.webhook_event_insert("ticket.created", "T1", {"ticket_id": "T1"}, T0)
        await s.webhook_fanout(T0)
        items = await s.webhook_claim(10, 30, T0, 5)
        await s.webhook_settle(items[0], "dead", now=T0, error="HTTP 500")
        await s.close()
        return items[0].event_id

    event_id = asyncio.run(setup())
    assert main(["--data-dir", str(tmp_path), "dead", "x"]) == 0
    out = capsys.readouterr().out
    dead = json.loads(out[out.index("[\n"):])
    assert [d["event_id"] for d in dead] == [event_id] and dead[0]["error"] == "HTTP 500"
    assert main(["--data-dir", str(tmp_path), "replay", "x", "--id", event_id]) == 0
    assert "requeued 1 events for x" in capsys.readouterr().out
    assert main(["--data-dir", str(tmp_path), "replay", "nope"]) == 1


def test_retry_after_is_seconds_in_ascii_digits_or_an_http_date():
    now = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Tue, 01 Dec 2026 03:01:00 GMT", now) == 60.0
    # "²" is a digit to str.isdigit(), not to float(): a receiver's odd header is no crash
    assert parse_retry_after("²", now) is None
    assert parse_retry_after("", now) is None and parse_retry_after(None, now) is None
