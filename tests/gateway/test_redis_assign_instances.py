"""Assignment and SLAs with two real ``omnigate serve`` processes on one real
Redis: tickets created through both instances at once are assigned with no
agent ever above capacity (sampled while they are being decided), and a due
SLA breach fires exactly once although both instances' schedulers race for it.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from gateway.store.redis_store import RedisStore
from tests.gateway.conftest import AUTH
from tests.gateway.test_crash import OMNIGATE, START, TOKEN, free_port, stop
from tests.gateway.test_redis_instances import PREFIX, drained, redis, wait_ready  # noqa: F401 - redis: a fixture
from tests.integration.redis import RedisServer

pytestmark = pytest.mark.integration

DEADLINE_S = 150
SENDERS = 40
CAPACITY = {"s-1": 3, "s-2": 3, "s-3": 2, "s-4": 4}  # 12 places for 40 tickets

DIRECTORY = """
teams:
  support: {}
agents:
""" + "".join(f"  - {{id: {a}, name: {a}, teams: [support], presence: online, capacity: {{email: {n}}}}}\n"
              for a, n in CAPACITY.items()) + """
sla_policies:
  - id: fast
    calendar: 24x7
    targets: {first_response: 1m}
    warn_at: 0.5
"""


def serve(tmp_path: Path, name: str, port: int, redis: RedisServer, clock) -> subprocess.Popen:
    env = {**os.environ, "OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_LOG_LEVEL": "warning",
           "OMNIGATE_TEST_CLOCK": clock.isoformat(), "OMNIGATE_REDIS_URL": redis.url,
           "OMNIGATE_DIRECTORY": str(tmp_path / "directory.yaml"),
           "OMNIGATE_RULES_DIR": str(tmp_path / "no-rules")}
    env.pop("OMNIGATE_TEST_CRASH_AT", None)
    with open(tmp_path / f"{name}.log", "ab") as log:
        return subprocess.Popen([OMNIGATE, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                                 str(tmp_path / name)], env=env, stdout=subprocess.DEVNULL, stderr=log)


def over_capacity(agents: list) -> list[str]:
    return [f"{a.id} {cls} {n}/{a.capacity.get(cls, 0)}" for a in agents for cls, n in a.load.items()
            if n > a.capacity.get(cls, 0)]


async def until(check, timeout: float = 60, every: float = 0.2):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(every)


async def test_two_instances_assign_within_capacity_and_fire_a_breach_once(tmp_path, redis):
    (tmp_path / "directory.yaml").write_text(DIRECTORY)
    async with asyncio.timeout(DEADLINE_S):
        ports = {"a": free_port(), "b": free_port()}
        procs = {n: serve(tmp_path, n, p, redis, START) for n, p in ports.items()}
        store = RedisStore(redis.url, prefix=PREFIX, claim_idle_s=3600)
        try:
            for n, p in ports.items():
                await wait_ready(f"http://127.0.0.1:{p}", procs[n])
            samples: list[list[str]] = []
            sending = True

            async def sampler() -> None:
                while sending:
                    samples.append(over_capacity(await store.list_agents()))
                    await asyncio.sleep(0.01)

            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

                async def send(i: int, n: int) -> None:
                    port = ports["ab"[(i + n) % 2]]  # a sender's two messages through both instances
                    msg = {"external_id": f"m{i}-{n}", "sender": {"kind": "email", "value": f"c{i}@assign.test"},
                           "text": f"message {n} of customer {i}"}
                    async with session.post(f"http://127.0.0.1:{port}/channels/api/messages", json=msg,
                                            headers=AUTH) as r:
                        assert r.status == 202, await r.text()

                watch = asyncio.create_task(sampler())
                await asyncio.gather(*(send(i, 0) for i in range(SENDERS)))
                await asyncio.gather(*(send(i, 1) for i in range(SENDERS)))  # follow-ups race the assignment
                counts = await drained(store)
                assert counts["failed"] == 0
                # every ticket synced (the after-commit hook, or the sweep): 12 held, 28 queued

                async def settled():
                    stats = await store.assign_stats()
                    return stats if stats["assigned"] == 12 and stats["queued"] == {"": SENDERS - 12} else None

                await until(settled)
                sending = False
                await watch
            assert len(samples) >= 3 and not [s for s in samples if s], [s for s in samples if s][:3]
            agents = {a.id: a for a in await store.list_agents()}
            assert {a: v.load for a, v in agents.items()} == {a: {"email": n} for a, n in CAPACITY.items()}
            tickets = {e.ticket_id for e in await store.journal_list(limit=1000)}
            assert len(tickets) == SENDERS
            held = [t for a in agents.values() for t in a.tickets]
            assert len(held) == len(set(held)) == 12
            for agent in agents.values():
                for t in agent.tickets:
                    assert (await store.get_ticket(t)).assignee == agent.id

            # an hour later on both instances: every first response is overdue, and both schedulers race
            for n in procs:
                stop(procs[n])
            procs = {n: serve(tmp_path, n, p, redis, START + timedelta(hours=1)) for n, p in ports.items()}
            for n, p in ports.items():
                await wait_ready(f"http://127.0.0.1:{p}", procs[n])

            async def breached():
                stats = await store.assign_stats()
                return stats if stats["sla_breaches"].get("fast", {}).get("first_response") == SENDERS else None

            await until(breached)
            await asyncio.sleep(2.5)  # more scheduler rounds on both instances: nothing fires again
            stats = await store.assign_stats()
            assert stats["sla_breaches"] == {"fast": {"first_response": SENDERS}}
            assert stats["sla_warnings"] == {"fast": {"first_response": SENDERS}}
            for t in tickets:
                page = await store.timeline(ticket_id=t, limit=500)
                fired = [e.data["event"] for e in page.items if e.kind == "sla" and "event" in e.data]
                assert fired == ["warning", "breach"], (t, fired)
                assert (await store.get_ticket(t)).sla.breached == ["first_response"]
        finally:
            await store.close()
            for p in procs.values():
                stop(p)
