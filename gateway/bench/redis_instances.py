"""``omnigate bench`` figures ``redis_ingest`` and ``redis_pipeline``: the
Redis backend with one and with two instances, and its CPU per message
against the SQLite backend, measured in the same run.

Level: the *store*, not HTTP (the HTTP figures of the daemon on Redis
are still to come). Each instance is a process
of its own driving a ``RedisStore`` with 64 concurrent tasks:

- ``redis_ingest``: durable journal appends (the idempotency SET NX, the
  entry and the XADD in one script), answered after Redis ran them;
- ``redis_pipeline``: append, claim through the shared consumer group,
  snapshot, the pure pipeline's decision, the guarded commit script.

Two instances run at once on one Redis (half the messages each); the
scaling ratio is their joint rate over one instance's. The baseline is the
same work on the SQLite backend in one process (SQLite serves one instance).
CPU per message counts the instances' processes and redis-server
(``/proc/<pid>/stat``); on a 2-core machine shared with Redis and the other
instance, scaling is bounded by the cores, not by the design.

redis-server runs from a temporary directory with ``appendonly yes`` and
``appendfsync always`` (an acknowledged append is on disk), on a loopback
port. Usage of the worker side: ``python -m gateway.bench.redis_instances MODE KIND
TARGET PREFIX N``.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N = 4000
CONCURRENCY = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _work(kind: str, store, prefix: str, n: int) -> None:
    from routing.model import Inbound, Sender
    from routing.pipeline import Settings, decide, lookup

    settings = Settings()
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            ext = f"{prefix}{i}"
            r = await store.journal_append("api", "api", ext, b'{"text": "hello"}')
            if kind == "ingest":
                return
            msg = Inbound(channel="api", account="api", external_id=ext, kind="message",
                          sender=Sender("email", f"c{i}@{prefix}bench.example"), text=f"hello {i}")
            look = lookup(msg, settings)
            for _ in range(5):
                snap = await store.snapshot(look, store.clock())
                try:
                    await store.commit(decide(msg, r.journal_id, snap, settings, look))
                    return
                except Exception as exc:  # noqa: BLE001 - a Conflict: decide again
                    if type(exc).__name__ != "Conflict":
                        raise

    async def claimer() -> None:  # the consumer group's side of the pipeline
        if kind != "pipeline" or not hasattr(store, "claim_idle_ms"):
            return
        while True:
            if not await store.claim_pending(0, 256):
                await asyncio.sleep(0.005)

    task = asyncio.create_task(claimer())
    await asyncio.gather(*(one(i) for i in range(n)))
    task.cancel()


async def _worker(mode: str, kind: str, target: str, prefix: str, n: int) -> dict:
    if mode == "redis":
        from gateway.store.redis_store import RedisStore

        store = RedisStore(target, prefix="bench:", consumer=prefix)
    else:
        from gateway.store.sqlite import SQLiteStore

        store = SQLiteStore.in_dir(target)
    t0 = time.perf_counter()
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    await _work(kind, store, prefix, n)
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = time.perf_counter() - t0
    await store.close()
    return {"n": n, "seconds": elapsed,
            "cpu_s": (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)}


def _run_instances(mode: str, kind: str, target: str, count: int, tag: str, redis_pid: int | None) -> dict:
    per = N // count
    r0 = _proc_cpu_s(redis_pid) if redis_pid else 0.0
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "gateway.bench.redis_instances", mode, kind, target, f"{tag}i{i}-", str(per)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
             for i in range(count)]
    outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - t0
    r1 = _proc_cpu_s(redis_pid) if redis_pid else 0.0
    total = sum(o["n"] for o in outs)
    busy = max(o["seconds"] for o in outs)
    return {"rate": total / busy, "wall_s": wall, "cpu_us_per_msg": 1e6 * sum(o["cpu_s"] for o in outs) / total,
            "redis_cpu_us_per_msg": 1e6 * (r1 - r0) / total}


def _measure() -> dict[str, dict]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    root = Path(tempfile.mkdtemp(prefix="omnigate-bench-redis-"))
    port = _free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root),
                               "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                               "--logfile", str(root / "redis.log")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.05)
        out: dict[str, dict] = {}
        for kind in ("ingest", "pipeline"):
            one = _run_instances("redis", kind, url, 1, f"{kind}1", server.pid)
            two = _run_instances("redis", kind, url, 2, f"{kind}2", server.pid)
            sqlite_dir = root / f"sqlite-{kind}"
            base = _run_instances("sqlite", kind, str(sqlite_dir), 1, f"{kind}s", None)
            out[kind] = {"one": one, "two": two, "sqlite": base}
        return out
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _figure(kind: str, m: dict) -> dict:
    one, two, base = m["one"], m["two"], m["sqlite"]
    redis_cpu = one["cpu_us_per_msg"] + one["redis_cpu_us_per_msg"]
    return {
        "value": round(two["rate"], 1), "unit": "msg/s", "baseline": round(base["rate"], 1),
        "baseline_label": "the same work on the SQLite backend, one process",
        "ratio": round(two["rate"] / base["rate"], 3) if base["rate"] else None,
        "detail": {
            "one_instance_msg_s": round(one["rate"], 1), "two_instances_msg_s": round(two["rate"], 1),
            "scaling_two_over_one": round(two["rate"] / one["rate"], 3) if one["rate"] else None,
            "cpu_us_per_msg_redis_backend": round(redis_cpu, 1),
            "cpu_us_per_msg_of_which_redis_server": round(one["redis_cpu_us_per_msg"], 1),
            "cpu_us_per_msg_sqlite_backend": round(base["cpu_us_per_msg"], 1),
            "cpu_ratio_redis_over_sqlite": round(redis_cpu / base["cpu_us_per_msg"], 3) if base["cpu_us_per_msg"] else None,
            "messages": N, "concurrency_per_instance": CONCURRENCY, "cores": os.cpu_count(),
            "level": "store (no HTTP): append / claim, snapshot, decide, commit",
            "durability": "appendonly yes, appendfsync always; SQLite synchronous=FULL",
        },
    }


def figures() -> dict[str, dict]:
    m = _measure()
    return {"redis_ingest": _figure("ingest", m["ingest"]), "redis_pipeline": _figure("pipeline", m["pipeline"])}


def main() -> None:
    mode, kind, target, prefix, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    print(json.dumps(asyncio.run(_worker(mode, kind, target, prefix, n))), flush=True)


if __name__ == "__main__":
    main()
