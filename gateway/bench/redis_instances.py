"""``omnigate bench`` figures ``redis_ingest`` and ``redis_pipeline``: real
``omnigate serve`` processes on one Redis, one and two of them, loaded over
HTTP by a client in a process of its own, against one ``omnigate serve`` on
SQLite in the same run.

Each configuration gets :data:`N` distinct API-channel messages
(``POST /channels/api/messages``, 997 senders), sent as fast as
:data:`CONCURRENCY` keep-alive connections per instance allow, spread over
the instances:

- ``redis_ingest``: the instances run no workers (``pipeline.workers: 0``,
  ingest-only nodes): the rate of durable 202s (the journal append script on
  Redis with ``appendfsync always``; SQLite's group commit with
  ``synchronous=FULL``);
- ``redis_pipeline``: workers on, no rules or directory (the backends'
  bare pipelines; assignment on Redis is ``redis_assign``'s figure; the
  SQLite baseline runs the same bare configuration): messages per second from the first request to the
  last entry processed (read from the store), so the figure is the slower
  of ingest and processing, end to end.

The value is the two-instance rate; the baseline the SQLite instance's;
``detail`` has the one-instance rate, the scaling ratio (two over one), and
CPU per message: the gateways' processes (``/proc/<pid>/stat``) and
redis-server's, against the SQLite daemon's. On this machine two gateways,
redis-server and the load client share 2 cores, so the scaling ratio says
how the design behaves when cores are short, not what a machine with a
core per instance gives (the ≥ 1.8× aim); CPU per message is the steadier
number.

The load client: ``python -m gateway.bench.redis_instances client PORTS N FIRST``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.bench.load import api_request, free_port, percentile, read_response, wait_port

N = 3000
CONCURRENCY = 32  # keep-alive connections per instance
TOKEN = "bench-token"
PROCESS_DEADLINE_S = 120.0


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the load client (its own process)


async def _client(ports: list[int], n: int, first: int) -> dict:
    """Send messages ``first`` … ``first + n - 1`` spread over ``ports``; 2xx answers count."""
    counter = [first]
    end = first + n
    latencies: list[float] = []
    errors = [0]

    async def conn(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while counter[0] < end:
                i = counter[0]
                counter[0] += 1
                t0 = time.perf_counter()
                writer.write(api_request(i))
                head, _ = await read_response(reader)
                if head[9:10] == b"2":
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[0] += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn(p) for p in ports for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - t0
    return {"ok": len(latencies), "errors": errors[0], "seconds": elapsed,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000}


# ---------------------------------------------------------------- the driver


class _Run:
    """``count`` ``omnigate serve`` processes on one backend."""

    def __init__(self, root: Path, count: int, *, redis_url: str | None, prefix: str, workers: int):
        self.root, self.count, self.redis_url, self.prefix = root, count, redis_url, prefix
        # shedding off: these figures are capacities, every request must be taken (the load client
        # sends each message once); the intake is held back by the gate's delay instead of a 503
        self.env = {**os.environ, "OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_LOG_LEVEL": "warning",
                    "OMNIGATE_RULES_DIR": str(root / "no-rules"), "OMNIGATE_PIPELINE__WORKERS": str(workers),
                    "OMNIGATE_PIPELINE__ADMISSION_SHED": "false"}
        if redis_url:
            self.env.update({"OMNIGATE_REDIS_URL": redis_url, "OMNIGATE_STORE__REDIS_PREFIX": prefix})
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[subprocess.Popen] = []

    async def __aenter__(self) -> "_Run":
        for i, port in enumerate(self.ports):
            d = self.root / f"{self.prefix}{i}"
            d.mkdir(parents=True)
            with open(d / "stderr.log", "wb") as err:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "gateway.cli", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                     str(d)], env=self.env, stdout=subprocess.DEVNULL, stderr=err,
                    cwd=Path(__file__).resolve().parents[2]))
        for port, proc in zip(self.ports, self.procs):
            await wait_port(port, proc)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()

    def cpu_s(self) -> float:
        return sum(_proc_cpu_s(p.pid) for p in self.procs)

    async def pending(self, expected: int) -> int:
        """Entries not processed yet out of ``expected`` sent (not yet journaled counts as pending)."""
        if self.redis_url:
            from gateway.store.redis_store import RedisStore

            s = RedisStore(self.redis_url, prefix=self.prefix)
            try:
                c = await s.journal_counts()
                return c["pending"] + (expected - sum(c.values()))
            finally:
                await s.close()
        db = sqlite3.connect(f"file:{self.root / f'{self.prefix}0' / 'omnigate.db'}?mode=ro", uri=True)
        try:
            total, pending = db.execute("SELECT count(*), sum(status = 'pending') FROM journal").fetchone()
            return (pending or 0) + (expected - total)
        finally:
            db.close()


async def _measure_one(root: Path, kind: str, count: int, redis_url: str | None, redis_pid: int | None,
                       tag: str) -> dict:
    async with _Run(root, count, redis_url=redis_url, prefix=f"b{tag}:", workers=0 if kind == "ingest" else 8) as run:
        # warm-up (connections, imports, the consumer group): not counted
        _all_taken(await _client_proc(run.ports, 50 * count, 10_000_000), 50 * count)
        if kind == "pipeline":
            await _wait_processed(run, 50 * count)
        cpu0, r0, t0 = run.cpu_s(), (_proc_cpu_s(redis_pid) if redis_pid else 0.0), time.perf_counter()
        sent = _all_taken(await _client_proc(run.ports, N, 0), N)
        if kind == "pipeline":
            await _wait_processed(run, N + 50 * count)
        elapsed = time.perf_counter() - t0 if kind == "pipeline" else sent["seconds"]
        cpu = run.cpu_s() - cpu0
        r1 = _proc_cpu_s(redis_pid) if redis_pid else 0.0
    return {"rate": sent["ok"] / elapsed, "seconds": elapsed, "errors": sent["errors"],
            "p99_ms": sent["p99_ms"], "cpu_us_per_msg": 1e6 * cpu / N, "redis_cpu_us_per_msg": 1e6 * (r1 - r0) / N}


def _all_taken(sent: dict, n: int) -> dict:
    """The client's answer, if every one of its ``n`` requests got a 2xx:
    a refused message is never journaled, and the wait for the last one
    processed would only run out of time."""
    if sent["errors"]:
        raise RuntimeError(f"{sent['errors']} of {n} requests were refused: the figure would count messages never sent")
    return sent


async def _wait_processed(run: _Run, expected_total: int) -> None:
    deadline = time.monotonic() + PROCESS_DEADLINE_S
    while time.monotonic() < deadline:
        if await run.pending(expected_total) == 0:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the pipeline did not finish {expected_total} messages in {PROCESS_DEADLINE_S} s")


async def _client_proc(ports: list[int], n: int, first: int) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.bench.redis_instances", "client", ",".join(map(str, ports)), str(n), str(first),
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    out, _ = await proc.communicate()
    return json.loads(out.decode().strip().splitlines()[-1])


async def _measure() -> dict[str, dict]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    root = Path(tempfile.mkdtemp(prefix="omnigate-bench-redis-"))
    port = free_port()
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root),
                               "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                               "--logfile", str(root / "redis.log")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        await wait_port(port, server)
        out: dict[str, dict] = {}
        for kind in ("ingest", "pipeline"):
            base = await _measure_one(root, kind, 1, None, None, f"{kind}s")
            one = await _measure_one(root, kind, 1, url, server.pid, f"{kind}1")
            two = await _measure_one(root, kind, 2, url, server.pid, f"{kind}2")
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
        "baseline_label": "one omnigate serve on SQLite, same load",
        "ratio": round(two["rate"] / base["rate"], 3) if base["rate"] else None,
        "detail": {
            "one_instance_msg_s": round(one["rate"], 1), "two_instances_msg_s": round(two["rate"], 1),
            "sqlite_msg_s": round(base["rate"], 1),
            "scaling_two_over_one": round(two["rate"] / one["rate"], 3) if one["rate"] else None,
            "cpu_us_per_msg_gateway_on_redis": round(one["cpu_us_per_msg"], 1),
            "cpu_us_per_msg_redis_server": round(one["redis_cpu_us_per_msg"], 1),
            "cpu_us_per_msg_redis_backend_total": round(redis_cpu, 1),
            "cpu_us_per_msg_two_instances_total": round(two["cpu_us_per_msg"] + two["redis_cpu_us_per_msg"], 1),
            "cpu_us_per_msg_sqlite": round(base["cpu_us_per_msg"], 1),
            "cpu_ratio_redis_over_sqlite": round(redis_cpu / base["cpu_us_per_msg"], 3) if base["cpu_us_per_msg"] else None,
            "p99_ms_one_two_sqlite": [round(one["p99_ms"], 1), round(two["p99_ms"], 1), round(base["p99_ms"], 1)],
            "errors": one["errors"] + two["errors"] + base["errors"],
            "messages": N, "connections_per_instance": CONCURRENCY, "cores": os.cpu_count(),
            "level": "HTTP: omnigate serve processes, a load client process; "
                     + ("ingest-only nodes (202 = durable)" if kind == "ingest"
                        else "first request to last entry processed (no rules, no directory)"),
            "note": "gateways, redis-server and the load client share the machine's cores: the scaling ratio "
                    "is bounded by them (the >= 1.8x aim is for a core per instance)",
            "durability": "redis appendonly yes, appendfsync always; SQLite synchronous=FULL",
        },
    }


async def figures() -> dict[str, dict]:
    m = await _measure()
    return {"redis_ingest": _figure("ingest", m["ingest"]), "redis_pipeline": _figure("pipeline", m["pipeline"])}


def main() -> None:
    if sys.argv[1] == "client":
        ports = [int(p) for p in sys.argv[2].split(",")]
        print(json.dumps(asyncio.run(_client(ports, int(sys.argv[3]), int(sys.argv[4])))), flush=True)


if __name__ == "__main__":
    main()
