"""``omnigate bench --only redis_assign_next``: assignment decisions per second
through the Redis backend, against the SQLite backend in the same run.

The workload is ``assign_store``'s (``gateway.bench.assign``: 500 agents in 10
teams, tickets with a team, a channel class, a priority and half the time a
required skill), cut to :data:`TICKETS` tickets. The tickets are committed
through each store first (not timed); then :data:`CONCURRENCY` tasks each
take the next ticket and await ``store.assign_next`` until every ticket is
decided or ``assign_store``'s budget (:data:`gateway.bench.assign_store.BUDGET_S`) has passed.

On Redis each decision is one *assignment step* (``gateway/store/redis_assign.py``):
the ``assign`` lease, the reads (ticket, held, queue; the team's presence and
load from the instance's cache where it holds them), the pure chooser, one fenced APPLY script (load guard, assignment,
timeline entry, outbox event, lease release). Steps are serialised across
instances by the lease, so this is also the ceiling of every instance
together. The baseline is the same decisions on the SQLite backend
(``synchronous=FULL``, group commit) in the same run. redis-server runs
with ``appendonly yes`` and ``appendfsync always`` on a loopback port.
``detail.over_capacity`` must be 0.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from gateway.bench import assign as assign_bench
from gateway.bench.assign_store import CONCURRENCY, _decide_all, _directory, _peak_load, _ticket_commit

TICKETS = 2000
_COMMIT_CHUNK = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu_s(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run(store, directory, demands, redis_pid: int | None = None) -> dict:
    await store.directory_load(directory, assign_bench.NOW)
    for i in range(0, len(demands), _COMMIT_CHUNK):
        commits = []
        for d in demands[i:i + _COMMIT_CHUNK]:
            c = _ticket_commit(d)
            if store.backend == "redis":  # the Redis commit settles a journal entry
                r = await store.journal_append(c.message_key[0], "bench", d.ticket_id, b"{}")
                c = type(c)(**{**{f: getattr(c, f) for f in c.__struct_fields__}, "journal_id": r.journal_id})
            commits.append(c)
        await asyncio.gather(*(store.commit(c) for c in commits))
    c0, r0 = _cpu_s(), _proc_cpu_s(redis_pid) if redis_pid else 0.0
    assigned, queued, seconds, _, _ = await _decide_all(store, [x.ticket_id for x in demands])
    cpu, redis_cpu = _cpu_s() - c0, (_proc_cpu_s(redis_pid) - r0) if redis_pid else 0.0
    peak, over = _peak_load(await store.list_agents())
    decided = assigned + queued
    return {"rate": decided / seconds, "decided": decided, "assigned": assigned, "queued": queued,
            "seconds": seconds, "peak": peak, "over": over, "cpu_us": 1e6 * cpu / decided,
            "redis_cpu_us": 1e6 * redis_cpu / decided}


async def _measure() -> tuple[dict, dict, int]:
    from gateway.store.redis_store import RedisStore
    from gateway.store.sqlite import SQLiteStore

    state, demands = assign_bench.workload()
    demands = demands[:TICKETS]
    directory = _directory(list(state.agents.values()))
    root = Path(tempfile.mkdtemp(prefix="omnigate-bench-rassign-"))
    port = _free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root),
                               "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                               "--logfile", str(root / "redis.log")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                await asyncio.sleep(0.05)
        store = RedisStore(f"redis://127.0.0.1:{port}/0", prefix="bench:")
        try:
            redis = await _run(store, directory, demands, server.pid)
        finally:
            await store.close()
        sqlite_store = SQLiteStore.in_dir(root / "sqlite")
        try:
            sqlite = await _run(sqlite_store, directory, demands)
        finally:
            await sqlite_store.close()
        return redis, sqlite, len(state.agents)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


async def figures() -> dict[str, dict]:
    redis, sqlite, agents = await _measure()
    return {"redis_assign_next": {
        "value": round(redis["rate"], 1), "unit": "decisions/s", "baseline": round(sqlite["rate"], 1),
        "baseline_label": "the same assign_next decisions on the SQLite backend, one process",
        "ratio": round(redis["rate"] / sqlite["rate"], 3) if sqlite["rate"] else None,
        "detail": {"agents": agents, "tickets": TICKETS, "decided": redis["decided"], "assigned": redis["assigned"],
                   "queued": redis["queued"], "seconds": round(redis["seconds"], 2), "concurrency": CONCURRENCY,
                   "max_load_vs_capacity": round(redis["peak"], 3), "over_capacity": redis["over"],
                   "cpu_us_per_decision_redis_backend": round(redis["cpu_us"] + redis["redis_cpu_us"], 1),
                   "cpu_us_per_decision_of_which_redis_server": round(redis["redis_cpu_us"], 1),
                   "cpu_us_per_decision_sqlite_backend": round(sqlite["cpu_us"], 1),
                   "sqlite_over_capacity": sqlite["over"],
                   "durability": "appendonly yes, appendfsync always; SQLite synchronous=FULL"},
    }}


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(asyncio.run(figures()), indent=2, ensure_ascii=False))
