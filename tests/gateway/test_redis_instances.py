"""Several real ``omnigate serve`` processes on one real Redis (AOF,
``appendfsync always``): they behave as one.

- 1,000 messages sent to two instances, one killed with SIGKILL mid-stream
  and restarted: every acknowledged message is committed exactly once (one
  message key, one timeline entry), none failed, and the dead instance's
  claimed-but-unfinished entries are finished.
- Redis killed mid-stream and started again on its AOF: the gateways answer
  503 while it is down, reconnect by themselves, and lose nothing they
  acknowledged.

The daemons run without a directory (assignment and SLAs across instances:
``test_redis_assign_instances.py``); results are read straight from Redis
with a ``RedisStore``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from gateway.store.redis_store import RedisStore
from tests.conftest import need
from tests.gateway.conftest import AUTH
from tests.gateway.test_crash import OMNIGATE, START, TOKEN, free_port, stop
from tests.integration.redis import RedisServer, redis_binary

pytestmark = pytest.mark.integration

DEADLINE_S = 420  # the whole test: a hang fails it (pytest-timeout stops the suite at 600)
PREFIX = "og:"


@pytest.fixture
def redis(tmp_path):
    need("redis-server", redis_binary() is not None, "it is not installed")
    root = tmp_path / "redis"
    root.mkdir()
    server = RedisServer(root).start()
    yield server
    server.stop()


def serve(tmp_path: Path, name: str, port: int, redis: RedisServer) -> subprocess.Popen:
    """One instance; its log goes to a file (a pipe nobody reads would fill
    up with the Redis-down tracebacks and block the daemon)."""
    env = {**os.environ, "OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_LOG_LEVEL": "warning",
           "OMNIGATE_TEST_CLOCK": START.isoformat(), "OMNIGATE_REDIS_URL": redis.url,
           "OMNIGATE_STORE__REDIS_CLAIM_IDLE_S": "2", "OMNIGATE_RULES_DIR": str(tmp_path / "no-rules")}
    env.pop("OMNIGATE_TEST_CRASH_AT", None)
    with open(tmp_path / f"{name}.log", "ab") as log:
        return subprocess.Popen([OMNIGATE, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                                 str(tmp_path / name)], env=env, stdout=subprocess.DEVNULL, stderr=log)


async def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as s:
        while asyncio.get_running_loop().time() < deadline:
            assert proc.poll() is None, f"omnigate serve exited with {proc.returncode} (see its log)"
            try:
                async with s.get(f"{base}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError("omnigate serve did not come up")


def body(ext: str, n: int) -> dict:
    return {"external_id": ext, "sender": {"kind": "email", "value": f"c{n % 13}@redis.test"},
            "text": f"message {ext} about order {n}"}


async def drained(store: RedisStore, stall_s: float = 45) -> dict:
    """The journal's counts once nothing is pending. Fails when the backlog
    stops shrinking for ``stall_s`` (a stuck pipeline), not after a fixed
    total: on a loaded machine two daemons may need minutes for a long
    backlog, and that is no bug (the test's ``DEADLINE_S`` still bounds it)."""
    loop = asyncio.get_running_loop()
    best, since = None, loop.time()
    while True:
        counts = await store.journal_counts()
        if counts["pending"] == 0:
            return counts
        if best is None or counts["pending"] < best:
            best, since = counts["pending"], loop.time()
        assert loop.time() - since < stall_s, f"journal not drained, no progress for {stall_s:g}s: {counts}"
        await asyncio.sleep(0.2)


async def exactly_once(store: RedisStore, acked: dict[str, str]) -> None:
    """Each acknowledged message: its entry processed (or a duplicate of the
    same message), one message key, one timeline entry of its own."""
    entries = {e.id: e for e in await store.journal_list(limit=100_000)}
    assert set(acked.values()) <= set(entries), "an acknowledged message was lost"
    assert not [e for e in entries.values() if e.status in ("failed", "pending")]
    contacts = {entries[j].contact_id for j in acked.values()}
    seen: Counter = Counter()
    for cid in contacts:
        cursor = None
        while True:
            page = await store.timeline(contact_id=cid, cursor=cursor, limit=500)
            seen.update(e.external_id for e in page.items if e.kind == "message_in")
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        assert len(await store.tickets_of(cid)) == 1, "a ticket was created twice"
    assert set(acked) <= set(seen)
    assert max(seen.values()) == 1, [e for e, n in seen.items() if n > 1][:5]


async def test_two_instances_one_killed_mid_stream_lose_nothing_and_duplicate_nothing(tmp_path, redis):
    async with asyncio.timeout(DEADLINE_S):
        ports = {"a": free_port(), "b": free_port()}
        procs = {n: serve(tmp_path, n, p, redis) for n, p in ports.items()}
        store = RedisStore(redis.url, prefix=PREFIX, claim_idle_s=3600)
        try:
            for n, p in ports.items():
                await wait_ready(f"http://127.0.0.1:{p}", procs[n])
            acked: dict[str, str] = {}
            killed = asyncio.Event()

            async def send(session: aiohttp.ClientSession, i: int) -> None:
                ext = f"m{i}"
                targets = ["a", "b"] if i % 2 else ["b", "a"]
                # a platform redelivers until acknowledged: for 90 s here (the survivor may shed with 503
                # while the killed instance's backlog is not yet claimed)
                give_up, last = time.monotonic() + 90, None
                for attempt in itertools.count():
                    if time.monotonic() > give_up:
                        break
                    target = targets[attempt % 2] if killed.is_set() or attempt else targets[0]
                    if target == "a" and procs["a"].poll() is not None:
                        target = "b"
                    try:
                        async with session.post(f"http://127.0.0.1:{ports[target]}/channels/api/messages",
                                                json=body(ext, i), headers=AUTH) as r:
                            last = r.status
                            if r.status == 202:
                                acked[ext] = (await r.json())["journal_id"]
                                return
                    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                        last = type(exc).__name__
                    await asyncio.sleep(0.05)
                raise AssertionError(f"{ext} never acknowledged (last answer: {last})")

            async def killer() -> None:
                while len(acked) < 300:
                    await asyncio.sleep(0.01)
                os.kill(procs["a"].pid, signal.SIGKILL)
                procs["a"].wait()
                killed.set()

            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                sem = asyncio.Semaphore(16)

                async def bounded(i: int) -> None:
                    async with sem:
                        await send(session, i)

                kill_task = asyncio.create_task(killer())
                await asyncio.gather(*(bounded(i) for i in range(1000)))
                await kill_task
            assert procs["a"].returncode == -signal.SIGKILL
            assert len(acked) == 1000
            procs["a"] = serve(tmp_path, "a", ports["a"], redis)  # restarted: takes its own entries back
            await wait_ready(f"http://127.0.0.1:{ports['a']}", procs["a"])
            counts = await drained(store)
            assert counts["failed"] == 0
            await exactly_once(store, acked)
            assert (await store.r.xpending(store.k.stream, store.k.group))["pending"] == 0
        finally:
            await store.close()
            for p in procs.values():
                stop(p)


async def test_redis_restarted_mid_stream_answers_503_then_loses_nothing(tmp_path, redis):
    async with asyncio.timeout(DEADLINE_S):
        ports = {"a": free_port(), "b": free_port()}
        procs = {n: serve(tmp_path, n, p, redis) for n, p in ports.items()}
        store = RedisStore(redis.url, prefix=PREFIX, claim_idle_s=3600)
        try:
            for n, p in ports.items():
                await wait_ready(f"http://127.0.0.1:{p}", procs[n])
            acked: dict[str, str] = {}
            statuses: Counter = Counter()
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

                async def send(i: int) -> None:
                    ext = f"r{i}"
                    for attempt in range(400):
                        port = ports["a" if (i + attempt) % 2 else "b"]
                        try:
                            async with session.post(f"http://127.0.0.1:{port}/channels/api/messages",
                                                    json=body(ext, i), headers=AUTH) as r:
                                statuses[r.status] += 1
                                if r.status == 202:
                                    acked[ext] = (await r.json())["journal_id"]
                                    return
                                assert r.status == 503, (r.status, await r.text())
                        except (aiohttp.ClientError, asyncio.TimeoutError):
                            statuses["error"] += 1
                        await asyncio.sleep(0.05)
                    raise AssertionError(f"{ext} never acknowledged")

                first = await asyncio.gather(*(send(i) for i in range(100)))
                assert len(first) == 100
                redis.kill()  # SIGKILL: no shutdown save, the AOF is all there is
                down = asyncio.gather(*(send(i) for i in range(100, 110)), return_exceptions=True)
                while statuses[503] < 20:  # every instance answers 503 while Redis is down
                    await asyncio.sleep(0.05)
                assert not any(ext in acked for ext in (f"r{i}" for i in range(100, 110)))
                redis.start()
                down_results = await down
                assert not [d for d in down_results if isinstance(d, Exception)], down_results
                await asyncio.gather(*(send(i) for i in range(110, 200)))
            assert len(acked) == 200
            assert statuses["error"] == 0, "a gateway stopped answering while Redis was down"
            await drained(store)
            await exactly_once(store, acked)
        finally:
            await store.close()
            for p in procs.values():
                stop(p)

