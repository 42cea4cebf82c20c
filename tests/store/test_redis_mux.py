"""The auto-pipelining client (``gateway.store.redis_mux``) against a real
redis-server: what one loop turn sends shares one connection and one write,
every caller gets redis-py's own answer (errors included, one caller's error
none of the others'), blocking commands keep to the pool, and a shared
connection that dies or never answers costs a retry, not an answer."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ResponseError, TimeoutError as RedisTimeoutError

from gateway.store.redis_conn import connect
from gateway.store.redis_mux import MuxRedis, shareable

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(redis_server):
    r = connect(redis_server.url, decode_responses=False, socket_timeout=5, health_check_interval=10)
    yield r
    await r.aclose()


async def _clients(r) -> int:
    return sum(1 for c in await r.client_list() if c.get("name") != "monitor")


def test_what_is_shared():
    assert shareable(("EVALSHA", "abc", 0))
    assert shareable(("SCRIPT LOAD", "return 1"))
    assert shareable(("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "STREAMS", "s", ">"))
    assert not shareable(("XREADGROUP", "GROUP", "g", "c", "BLOCK", 100, "STREAMS", "s", ">"))
    assert not shareable(("WAIT", 1, 1000))
    assert not shareable(("BLPOP", "k", 1))
    assert not shareable(("MULTI",))
    assert not shareable((b"watch", b"k"))


async def test_one_turn_shares_one_connection_and_each_caller_gets_its_answer(client, redis_prefix):
    assert isinstance(client, MuxRedis)
    p = redis_prefix
    await client.hset(f"{p}h", mapping={"a": "1", "b": "2"})
    await client.zadd(f"{p}z", {"m": 2.5})
    before = await _clients(client)

    async def one(i: int):
        return await client.incr(f"{p}n{i % 7}"), await client.hgetall(f"{p}h"), await client.zscore(f"{p}z", "m")

    got = await asyncio.gather(*(one(i) for i in range(300)))
    # redis-py's response callbacks ran: a dict for HGETALL, a float for ZSCORE
    assert all(h == {b"a": b"1", b"b": b"2"} and z == 2.5 for _, h, z in got)
    assert sorted(n for n, _, _ in got)[-1] == 43  # 300 increments over 7 counters: 43 on the busiest
    assert sum(1 for n, _, _ in got if n == 1) == 7
    # 300 concurrent callers, one shared connection (the pool's, for CLIENT LIST, already counted)
    assert await _clients(client) <= before + 1


async def test_an_error_reply_is_its_callers_alone(client, redis_prefix):
    p = redis_prefix
    await client.set(f"{p}s", "text")
    ok, wrong = await asyncio.gather(client.get(f"{p}s"), client.incr(f"{p}s"), return_exceptions=True)
    assert ok == b"text"
    assert isinstance(wrong, ResponseError) and "not an integer" in str(wrong)

    pipe = client.pipeline(transaction=False)
    pipe.get(f"{p}s")
    pipe.incr(f"{p}s")
    pipe.exists(f"{p}s")
    with pytest.raises(ResponseError, match="Command # 2"):
        await pipe.execute()
    pipe.get(f"{p}s")
    pipe.incr(f"{p}s")
    pipe.exists(f"{p}s")
    first, error, exists = await pipe.execute(raise_on_error=False)
    assert first == b"text" and isinstance(error, ResponseError) and exists == 1


async def test_a_forgotten_script_is_loaded_again(client, redis_prefix):
    script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await script(keys=[f"{redis_prefix}c"], args=[2]) == 2
    await client.script_flush()
    assert await script(keys=[f"{redis_prefix}c"], args=[3]) == 5  # NOSCRIPT, SCRIPT LOAD, again


async def test_blocking_commands_keep_to_the_pool(client, redis_prefix):
    """A BLPOP waiting a second does not hold the commands behind it."""
    p = redis_prefix
    await client.set(f"{p}k", "v")
    blocked = asyncio.ensure_future(client.blpop([f"{p}empty"], timeout=2))
    await asyncio.sleep(0.05)
    assert await asyncio.wait_for(client.get(f"{p}k"), 1) == b"v"
    assert not blocked.done()
    await client.rpush(f"{p}empty", "x")
    assert await asyncio.wait_for(blocked, 3) == (f"{p}empty".encode(), b"x")


async def test_a_killed_shared_connection_costs_a_retry_not_an_answer(client, redis_prefix):
    p = redis_prefix
    await client.set(f"{p}k", "v")
    assert await client.get(f"{p}k") == b"v"
    killed = 0
    for c in await client.client_list():  # (through the pool: CLIENT is never shared)
        if c.get("cmd") == "get":  # the shared connection: its last command was the GET
            await client.client_kill_filter(_id=c["id"])
            killed += 1
    assert killed == 1
    got = await asyncio.gather(*(client.get(f"{p}k") for _ in range(20)))
    assert got == [b"v"] * 20
    assert await client.get(f"{p}k") == b"v"  # and a new shared connection is open


async def test_a_connection_that_never_answers_times_out(unused_tcp_port):
    """A server that takes the connection's hello and then goes silent: the
    caller gets redis-py's TimeoutError after ``socket_timeout`` (shared
    connection, then once more through the pool), not a wait for ever."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = 0
        while data := await reader.read(4096):
            for _ in range(data.count(b"*")):  # the hello's commands (CLIENT SETINFO …): OK each
                if answered < 2:
                    writer.write(b"+OK\r\n")
                answered += 1
            await writer.drain()

    server = await asyncio.start_server(silent, "127.0.0.1", unused_tcp_port)
    r = connect(f"redis://127.0.0.1:{unused_tcp_port}/0", decode_responses=False, socket_timeout=0.3,
                retry_on_timeout=False)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(r.get("k"), 10)
        assert 0.5 <= loop.time() - t0 < 8  # two waits of 0.3 s: the shared connection's, then the pool's
    finally:
        await r.aclose()
        server.close()
        await server.wait_closed()


async def test_a_readonly_answer_replaces_the_shared_connection(redis_server, tmp_path):
    """A replica (a primary Sentinel demoted) answers writes READONLY: the caller gets
    redis-py's own ReadOnlyError (sent once more through the pool), reads still work,
    and the shared connection is replaced before it is used again."""
    from redis.exceptions import ReadOnlyError

    from tests.integration.redis import RedisServer

    replica = RedisServer(tmp_path, replica_of=redis_server).start()
    r = connect(replica.url, decode_responses=False, socket_timeout=5)
    try:
        assert await r.get("nothing") is None
        first = r._mux._conn
        with pytest.raises(ReadOnlyError):
            await r.set("k", "v")
        assert r._mux._replace
        assert await r.get("nothing") is None  # on a new shared connection
        assert r._mux._conn is not first and not r._mux._replace
    finally:
        await r.aclose()
        replica.stop()
