"""The API channel's refusal for load answered as the request is parsed
(gateway/fast_refusal.py), against the real server over raw keep-alive
connections: the same bytes as the handler's refusal, answers in request
order, connections that stay sound for the next request, and nothing but a
complete, authenticated ``POST /channels/api/messages`` on an idle
connection answered there. Starvation is injected into the gate."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from gateway import fast_refusal, keys
from gateway.app import create_app
from tests.gateway.conftest import TOKEN, business_hours, make_config

PATH = "/channels/api/messages"
BODY = json.dumps({"external_id": "f1", "sender": {"kind": "email", "value": "a@example.com"},
                   "text": "hello"}).encode()


def post(body: bytes = BODY, *, path: str = PATH, token: str | None = TOKEN, version: str = "1.1",
         extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    return (f"POST {path} HTTP/{version}\r\nHost: gw\r\n{auth}Content-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode()


class Conn:
    """One raw HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def raw_response(self, head_only: bool = False) -> bytes:
        head = await self.reader.readuntil(b"\r\n\r\n")
        if head_only:  # the answer to HEAD has no body whatever its Content-Length
            return head
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return head + await self.reader.readexactly(length)

    async def response(self, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        raw = await self.raw_response(head_only)
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        return int(lines[0].split()[1]), headers, body

    async def statuses(self, n: int) -> list[int]:
        return [(await self.response())[0] for _ in range(n)]


@pytest.fixture
async def server(aiohttp_server, tmp_path):
    """(app, open a connection, test server) of a running gateway whose gate is starved
    with no credit free, until ``app[keys.LOAD].gate.backlog`` says otherwise."""
    app = create_app(make_config(tmp_path, pipeline={"backlog_retry_after_s": 12}), clock=business_hours())
    gate = app[keys.LOAD].gate
    gate.backlog, gate.busy = (lambda: 10**6), (lambda: 1.0)
    gate.burst = gate.credits = 0.0
    srv = await aiohttp_server(app)
    opened: list[Conn] = []

    async def connect() -> Conn:
        opened.append(Conn(*await asyncio.open_connection(srv.host, srv.port)))
        return opened[-1]

    yield app, connect, srv
    for conn in opened:
        conn.writer.close()


def fast(app) -> int:
    return app[fast_refusal.REFUSAL].count


def without_date(raw: bytes) -> bytes:
    return b"\r\n".join(line for line in raw.split(b"\r\n") if not line.startswith(b"Date: "))


def test_this_aiohttp_supports_the_fast_refusal():
    assert fast_refusal.supported()  # else refusals would silently take the ordinary path


async def test_a_refusal_answered_as_parsed_is_the_handlers_refusal_byte_for_byte(server):
    app, connect, _ = server
    conn = await connect()
    await conn.send(post())
    answered_fast = await conn.raw_response()
    assert fast(app) == 1
    # the body still arriving: the handler answers (before reading it), the ordinary way
    slow = await connect()
    request = post()
    await slow.send(request[:-5])
    answered_by_handler = await slow.raw_response()
    assert fast(app) == 1
    assert without_date(answered_fast) == without_date(answered_by_handler)
    head, _, body = answered_fast.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"\r\nRetry-After: 12\r\n" in head and b"\r\nContent-Type: application/problem+json\r\n" in head
    assert json.loads(body) == {"type": "about:blank", "title": "Overloaded", "status": 503,
                                "detail": "the pipeline is behind and this process is saturated: retry after 12 s"}
    assert app[keys.LOAD].gate.shed_count == 2
    await conn.send(get("/metrics"))  # counted the same either way
    _, _, metrics = await conn.response()
    assert b'omnigate_rejected_total{channel="api",reason="overloaded"} 2.0' in metrics


async def test_refused_then_accepted_on_the_same_keep_alive_connection(server):
    app, connect, _ = server
    conn = await connect()
    for _ in range(3):
        await conn.send(post())
        assert (await conn.response())[0] == 503
    app[keys.LOAD].gate.backlog = lambda: 0  # the pipeline caught up
    await conn.send(post())
    status, _, body = await conn.response()
    assert status == 202 and json.loads(body)["journal_id"]
    assert fast(app) == 3 and app[keys.LOAD].gate.shed_count == 3
    assert len(await app[keys.STORE].journal_list(limit=10)) == 1
    await conn.send(get("/healthz"))
    assert (await conn.response())[0] == 200


async def test_pipelined_requests_are_answered_in_order(server):
    app, connect, _ = server
    conn = await connect()
    # refusable ones at the head are answered as parsed; from the first other request on,
    # the rest wait their turn in aiohttp's queue and the handler refuses them
    await conn.send(post() + post() + get("/healthz") + post() + get("/nowhere") + post())
    assert await conn.statuses(6) == [503, 503, 200, 503, 404, 503]
    assert fast(app) == 2 and app[keys.LOAD].gate.shed_count == 4
    # a request ahead of them in the same packet: all take the ordinary path, in order
    await conn.send(get("/healthz") + post() + post())
    assert await conn.statuses(3) == [200, 503, 503]
    assert fast(app) == 2


async def test_a_body_in_many_segments_is_refused_by_the_handler_and_the_connection_stays_sound(server):
    app, connect, _ = server
    conn = await connect()
    request = post(BODY * 20)  # a longer body, sent a few bytes at a time
    head_end = request.index(b"\r\n\r\n") + 4
    await conn.send(request[:head_end])
    assert (await conn.response())[0] == 503  # refused before its body is read
    body = request[head_end:]
    for k in range(0, len(body), 7):
        await conn.send(body[k:k + 7])
    await conn.send(get("/healthz"))  # the connection carries on after the discarded body
    assert (await conn.response())[0] == 200
    await conn.send(post())  # and is idle again: the next refusal is answered as parsed
    assert (await conn.response())[0] == 503
    assert fast(app) == 1 and app[keys.LOAD].gate.shed_count == 2
    assert await app[keys.STORE].journal_list(limit=10) == []


async def test_only_authenticated_keep_alive_posts_to_the_api_channel_are_answered_as_parsed(server):
    app, connect, _ = server
    gate = app[keys.LOAD].gate
    conn = await connect()
    await conn.send(post(token="wrong") + post(token=None))  # authentication still comes first
    assert await conn.statuses(2) == [401, 401]
    await conn.send(get(PATH, "HEAD"))
    assert (await conn.response(head_only=True))[0] == 405
    await conn.send(get(PATH) + post(path="/channels/api/messagesx") + get("/healthz"))
    assert await conn.statuses(3) == [405, 404, 200]
    assert gate.shed_count == 0
    # the same route another way: query string, "Connection: close" — the handler refuses them
    await conn.send(post(path=PATH + "?via=proxy"))
    assert (await conn.response())[0] == 503
    await conn.send(post(extra="Connection: close\r\n"))
    status, headers, _ = await conn.response()
    assert status == 503 and headers["connection"] == "close"
    assert await conn.reader.read() == b""  # and the connection is closed as asked
    http10 = await connect()
    await http10.send(post(version="1.0"))
    assert (await http10.response())[0] == 503
    assert fast(app) == 0 and gate.shed_count == 3


async def test_nothing_is_answered_as_parsed_while_the_pipeline_keeps_up(server):
    app, connect, _ = server
    app[keys.LOAD].gate.backlog = lambda: 0
    conn = await connect()
    await conn.send(post() + post(BODY.replace(b"f1", b"f2")))
    assert await conn.statuses(2) == [202, 202]
    assert fast(app) == 0 and app[keys.LOAD].gate.shed_count == 0


async def test_refusals_keep_the_connection_from_timing_out_as_idle(server):
    app, connect, srv = server
    conn = await connect()
    await conn.send(get("/healthz"))
    assert (await conn.response())[0] == 200
    (protocol,) = srv.runner.server.connections
    loop = asyncio.get_running_loop()
    before = loop.time()
    await conn.send(post())
    assert (await conn.response())[0] == 503 and fast(app) == 1
    # aiohttp closes a connection idle past keepalive_timeout: a refusal is activity, as any request is
    assert protocol._next_keepalive_close_time >= before + protocol.keepalive_timeout


# ---------------------------------------------------------------- the decision made binding


def starved_with(app, credits: float) -> None:
    """The gate starved with ``credits`` free (and as many shedding credits)."""
    gate = app[keys.LOAD].gate
    gate.burst = gate.credits = gate.shed_credits = credits


async def attached(srv) -> tuple[fast_refusal.RefusingRequestHandler, Conn]:
    """A server connection whose protocol the test drives by hand (its
    ``data_received`` called directly, as the transport would), and the
    client end of it."""
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = Conn(*await asyncio.open_connection(*listener.getsockname()[:2]))
        accepted, _ = listener.accept()
    _, protocol = await loop.connect_accepted_socket(srv.runner.server, sock=accepted)
    return protocol, client


async def test_a_request_admitted_as_parsed_keeps_its_credit_and_is_not_asked_again(server):
    """Two requests parsed in one loop iteration with one credit free: the
    first takes it as it is parsed, so the second is refused there too —
    not let through and refused by the handler once the first spoke for the
    credit — and the first's append takes no second credit."""
    app, _, srv = server
    starved_with(app, 1.0)
    gate = app[keys.LOAD].gate
    (first, first_client), (second, second_client) = await attached(srv), await attached(srv)
    first.data_received(post())
    second.data_received(post(BODY.replace(b"f1", b"f2")))
    assert gate.reserved == 1 and gate.credits == 0.0 and fast(app) == 1
    assert (await second_client.response())[0] == 503
    assert (await first_client.response())[0] == 202
    assert gate.shed_count == 1 and gate.stats["credited"] == 1 and gate.released == 0
    assert len(await app[keys.STORE].journal_list(limit=10)) == 1
    for conn in (first_client, second_client):
        conn.writer.close()


@pytest.mark.parametrize("body, status", [(b"not json", 400), (BODY[:-1] + b', "text": "twice"}', 400)])
async def test_a_request_admitted_as_parsed_and_refused_by_its_handler_gives_the_credit_back(server, body, status):
    app, connect, _ = server
    starved_with(app, 1.0)
    gate = app[keys.LOAD].gate
    conn = await connect()
    await conn.send(post(body))
    assert (await conn.response())[0] == status
    assert gate.reserved == 1 and gate.released == 1 and gate.credits == 1.0 and gate.shed_credits == 1.0
    await conn.send(post())  # the credit is there for the next one
    assert (await conn.response())[0] == 202
    assert gate.reserved == 2 and gate.credits == 0.0 and gate.stats["credited"] == 1


async def test_a_request_admitted_as_parsed_over_the_backlog_limit_gives_the_credit_back(server):
    app, connect, _ = server
    starved_with(app, 1.0)
    gate, backlog = app[keys.LOAD].gate, app[keys.LOAD].backlog
    backlog.limit, backlog._sampled = 1, 5
    conn = await connect()
    await conn.send(post())
    status, headers, body = await conn.response()
    assert status == 503 and json.loads(body)["title"] == "Backlog full"
    assert gate.reserved == 1 and gate.released == 1 and gate.credits == 1.0


async def test_a_connection_closed_before_its_request_was_handled_gives_the_credit_back(server):
    app, _, srv = server
    starved_with(app, 1.0)
    gate = app[keys.LOAD].gate
    protocol, client = await attached(srv)
    protocol.data_received(post())
    assert gate.reserved == 1 and gate.credits == 0.0
    protocol.connection_lost(None)  # before the request loop took the request: it is dropped
    assert gate.released == 1 and gate.credits == 1.0 and gate.stats["credited"] == 0
    assert protocol._reserved is None
    client.writer.close()
    for _ in range(3):
        await asyncio.sleep(0)
    assert await app[keys.STORE].journal_list(limit=10) == []


@pytest.mark.parametrize("iterations", [1, 2, 3, 5, 10])
async def test_whenever_the_connection_closes_one_credit_is_spent_only_for_an_append(server, iterations):
    """The connection goes away some loop iterations after the request was
    parsed: before the request loop took it, after, before or after its
    handler claimed the credit (aiohttp may still run a handler whose
    connection closed). Whatever the moment, a credit is spent only for an
    entry appended, and never two."""
    app, _, srv = server
    starved_with(app, 1.0)
    gate = app[keys.LOAD].gate
    protocol, client = await attached(srv)
    protocol.data_received(post())
    for _ in range(iterations):
        await asyncio.sleep(0)
    protocol.connection_lost(None)
    client.writer.close()
    for _ in range(20):  # a handler still due gets its turns
        await asyncio.sleep(0.01)
    appended = len(await app[keys.STORE].journal_list(limit=10))
    assert gate.credits + appended == 1.0 and gate.stats["credited"] == appended and gate.shed_count == 0
    assert gate.reserved == 1 and protocol._reserved is None


async def test_a_reservation_its_handler_never_claimed_is_given_back_with_the_next(server):
    """Defensive: a connection is idle again only after its request was
    handled, so a reservation still held then is nobody's."""
    app, _, srv = server
    starved_with(app, 2.0)
    gate = app[keys.LOAD].gate
    protocol, client = await attached(srv)
    protocol._reserved = object()  # as if taken for a request whose handler never ran
    gate.credits = gate.shed_credits = 1.0
    protocol.data_received(post())
    assert gate.released == 1 and gate.reserved == 1 and gate.credits == 1.0
    assert (await client.response())[0] == 202
    client.writer.close()
