"""The ``sustained`` bench's load client (gateway/bench/sustained.py) is not
what holds a request back: it opens another connection when every one is
busy, up to its cap, and only then queues; and the server's intake latency
buckets (gateway/bench/server.py) give a step's percentile. Against a
loopback server that answers when the test says so: no timing assertions."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.bench import sustained
from gateway.bench.load import read_response
from gateway.bench.server import IntakeTimes, intake_percentile

PATIENCE_S = 30.0  # a safety net against a hung test, not a timing assertion


class HeldServer:
    """Answers each request with 202 once the test releases it; counts connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.release = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await self.release.wait()
                writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


@pytest.fixture
async def held():
    srv = HeldServer()
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = server.sockets[0].getsockname()[1]
    yield srv
    server.close()


async def request(conn) -> bytes:
    conn[1].write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    head, _ = await read_response(conn[0])
    return head


async def test_a_due_request_gets_a_new_connection_when_all_are_busy(held):
    senders = sustained._Senders(held.port)
    busy = [await senders.take() for _ in range(3)]  # three requests in flight: three connections
    assert senders.opened == senders.peak == 3 and senders.queued == 0
    held.release.set()
    for conn in busy:
        assert (await asyncio.wait_for(request(conn), PATIENCE_S))[9:12] == b"202"
        senders.give(conn)
    again = await senders.take()  # an idle one is reused
    assert again in busy and senders.opened == 3
    senders.give(again)
    senders.shut()


async def test_past_the_cap_a_request_waits_for_a_connection_handed_back(held, monkeypatch):
    monkeypatch.setattr(sustained, "MAX_CONNECTIONS", 2)
    senders = sustained._Senders(held.port)
    first, second = await senders.take(), await senders.take()
    third = asyncio.create_task(senders.take())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not third.done() and senders.queued == 1 and senders.opened == 2
    senders.give(first)
    assert await asyncio.wait_for(third, PATIENCE_S) is first
    senders.drop(second)  # a broken connection frees its place
    assert senders.opened == 1
    senders.give(first)
    senders.shut()


async def test_close_mode_uses_each_connection_once(held):
    senders = sustained._Senders(held.port, close=True)
    conn = await senders.take()
    held.release.set()
    await asyncio.wait_for(request(conn), PATIENCE_S)
    senders.give(conn)
    assert senders.opened == 0 and not senders.idle


def test_a_steps_intake_percentile_comes_from_the_difference_of_two_readings():
    times = IntakeTimes()
    bounds = IntakeTimes.BOUNDS_MS
    times.counts[0] = 1000  # before the step: fast intakes
    before = list(times.counts)
    times.counts[10] += 98
    times.counts[30] += 2  # the step: 98 around bounds[10], 2 slow ones
    assert intake_percentile(before, times.counts, 50) == round(bounds[10], 1)
    assert intake_percentile(before, times.counts, 99) == round(bounds[30], 1)
    assert intake_percentile(times.counts, times.counts, 99) is None  # nothing in between


def test_ingest_is_bounded_while_its_p99_is_under_the_bound_and_not_climbing():
    assert sustained._bounded(400, [100, 300, 350])
    assert not sustained._bounded(900, [100, 300, 900])  # still climbing at the end
    assert not sustained._bounded(6000, [6000, 6000, 6000])  # past WeChat's 5 s


def test_a_refusal_is_sent_again_after_retry_after_within_the_step_or_counted_deferred():
    import time

    refusals = sustained._Refusals()
    head = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n"
    assert refusals.retry_after(head) == 7.0
    assert refusals.retry_after(b"HTTP/1.1 503 Service Unavailable\r\n\r\n") == 1.0  # none given: a second
    again = refusals.note(head, time.perf_counter() + 3600)
    assert again is not None and again >= time.perf_counter() + 6  # sent again, seven seconds on
    assert refusals.note(head, time.perf_counter()) is None  # due after the step: deferred
    assert refusals.counts() == {"refused": 2, "retried": 1, "deferred": 1, "retry_after_s": [7.0]}


async def test_the_client_counts_503s_apart_from_errors():
    """A server that refuses everything for an hour: every request is a
    refusal deferred past the step, none an error or an ingest."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line[15:]) for line in head.split(b"\r\n")
                               if line[:15].lower() == b"content-length:"), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3600\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        c = await asyncio.wait_for(sustained._client(port, 40, 0.25, 0), PATIENCE_S)
    finally:
        server.close()
    assert c["sent"] == 10 and c["ok"] == 0 and c["errors"] == 0
    assert (c["refused"], c["retried"], c["deferred"], c["retry_after_s"]) == (10, 0, 10, [3600.0])


async def test_the_servers_intake_times_come_from_aiohttps_access_log_hook_for_channels_only(aiohttp_client):
    import logging

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/channels/api/messages", answer)
    app.router.add_get("/healthz", answer)
    times = IntakeTimes()
    server = TestServer(app)
    await server.start_server(access_log_class=times.access_logger(), access_log=logging.getLogger("test.bench"))
    client = await aiohttp_client(server)
    assert (await client.get("/healthz")).status == 202
    assert (await client.post("/channels/api/messages", data=b"{}")).status == 202

    async def recorded() -> None:  # aiohttp calls the hook once the answer is written
        while not sum(times.counts):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(recorded(), PATIENCE_S)
    assert (await client.get("/healthz")).status == 202  # the connection's next request: the POST was logged
    assert sum(times.counts) == 1


def test_a_step_reports_the_refusals_answered_as_parsed_apart_from_the_handlers():
    before = {"shed": 10, "shed_as_parsed": 4, "credited": 3, "reserved": 2}
    after = {"shed": 25, "shed_as_parsed": 18, "credited": 9, "reserved": 7, "released": 1, "free": 5}
    delta = sustained._gate_delta(before, after)
    assert delta["shed"] == 15 and delta["shed_as_parsed"] == 14 and delta["shed_by_handler"] == 1
    assert delta["reserved"] == 5 and delta["released"] == 1 and delta["credited"] == 6 and delta["free"] == 5
    assert sustained._gate_delta({}, {})["shed_by_handler"] == 0  # a server without the counters yet


class SilentUntil:
    """Answers a request only at its ``answer_at``-th arrival (the same bytes:
    WeChat's retry); earlier arrivals are held until the client hangs up."""

    def __init__(self, answer_at: int) -> None:
        self.answer_at = answer_at
        self.seen: dict[bytes, int] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line[15:]) for line in head.split(b"\r\n")
                               if line[:15].lower() == b"content-length:"), 0)
                request = head + await reader.readexactly(length)
                self.seen[request] = self.seen.get(request, 0) + 1
                if self.seen[request] < self.answer_at:
                    await reader.read()  # held: the client hangs up
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@pytest.mark.parametrize("answer_at, answered", [(3, True), (4, False)])
async def test_the_wechat_client_sends_an_unanswered_callback_again_as_wechat_does(monkeypatch, answer_at, answered):
    """Unanswered past the timeout, a callback is hung up on and sent again,
    the very same request, up to three tries; after the third it is given
    up. (The timeout is shortened: what is tested is what happens, not when.)"""
    monkeypatch.setattr(sustained, "WECHAT_TIMEOUT_S", 0.2)
    srv = SilentUntil(answer_at)
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        c = await asyncio.wait_for(sustained._client(port, 40, 0.1, 0, channel="wechat", timestamp=1700000000,
                                                     tries=sustained.WECHAT_TRIES), PATIENCE_S)
    finally:
        server.close()
    assert c["sent"] == 4 and c["errors"] == 0
    assert sorted(srv.seen.values()) == [3] * 4  # each callback arrived three times, byte for byte
    assert c["resent"] == 8
    assert (c["ok"], c["gave_up"]) == ((4, 0) if answered else (0, 4))


def _fake_step(capacity: float, tried: list[float]):
    async def step(rate: float, seconds: float) -> dict:
        tried.append(rate)
        return {"offered": round(rate, 1), "step_s": seconds, "pass": rate <= capacity}
    return step


async def _nothing() -> None:
    return None


@pytest.mark.parametrize("capacity", [250.0, 800.0, 900.0, 960.0, 1300.0])
async def test_the_search_narrows_the_gap_between_the_highest_pass_and_the_first_failure(capacity):
    tried: list[float] = []
    steps, best = await sustained._search(_fake_step(capacity, tried), _nothing, time.monotonic())
    climb = [s["offered"] for s in steps if not s.get("refine")]
    assert climb[:3] == [200.0, 260.0, 338.0]  # START_RATE × STEP^k until two steps fail
    assert best["offered"] <= capacity
    # never less than the climb alone found, and within one bisected gap of the capacity
    assert best["offered"] >= max(r for r in climb if r <= capacity)
    assert capacity / best["offered"] < sustained.STEP ** (1 / 2 ** sustained.REFINE_STEPS) + 1e-6
    assert sum(1 for s in steps if s.get("refine")) == sustained.REFINE_STEPS
    assert {s["step_s"] for s in steps} == {sustained.STEP_S, sustained.REFINE_STEP_S}


async def test_the_search_waits_for_the_backlog_before_each_refining_step():
    order: list[str] = []

    async def step(rate: float, seconds: float) -> dict:
        order.append("step")
        return {"offered": round(rate, 1), "pass": rate <= 700}

    async def settle() -> None:
        order.append("settle")

    steps, best = await sustained._search(step, settle, time.monotonic())
    refined = order[len(order) - 2 * sustained.REFINE_STEPS:]
    assert refined == ["settle", "step"] * sustained.REFINE_STEPS
    assert all(s["offered"] > 571.2 for s in steps if s.get("refine"))


async def test_no_pass_means_no_refinement():
    tried: list[float] = []
    steps, best = await sustained._search(_fake_step(100.0, tried), _nothing, time.monotonic())
    assert best is None and len(tried) == 2
