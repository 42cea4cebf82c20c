"""Pipeline figures: journal entry → committed ticket, in this process.

- ``pipeline``: the production configuration (:mod:`gateway.bench.production`:
  the shipped rules, a directory with teams, online agents and SLA policies,
  info-level JSON logs to a file, metrics on) — the real app's worker, its
  after-commit assignment and SLA, auto-replies and outbox included;
- ``pipeline_bare``: the same messages through a bare ``Pipeline`` (no
  rules, no directory, warning-level logs, no metrics), labelled as such.

Both drain :data:`MESSAGES` entries journaled beforehand (the realistic mix:
a quarter from new customers, the rest follow-ups) and report the rate, the
claim → committed latency and the CPU per message (all threads of this
process). The baseline is the write floor measured in the same run:
:data:`CONCURRENCY` tasks each awaiting one group-committed, fsync'd SQLite
insert per message.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway.bench import production
from gateway.bench.load import percentile, raw_insert_rate
from gateway.config import PipelineConfig

MESSAGES = 6000
#: the shipped ``pipeline.workers``
CONCURRENCY = PipelineConfig().workers


async def _prefill(store: Any, bodies: list[bytes]) -> None:
    for chunk in range(0, len(bodies), 500):
        await asyncio.gather(*(store.journal_append("api", "api", f"m{i}", bodies[i])
                               for i in range(chunk, min(len(bodies), chunk + 500))))


def _timed(pipe: Any, latencies: list[float]) -> None:
    original = pipe.process

    async def timed(entry: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        result = await original(entry, **kw)
        latencies.append(time.perf_counter() - t0)
        return result

    pipe.process = timed


async def _production(bodies: list[bytes]) -> dict:
    from aiohttp import web

    from gateway import keys, logs
    from gateway.store.sqlite import SQLiteStore

    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="omnigate-bench-pipeline-") as d:
        cfg = production.config(Path(d), workers=CONCURRENCY)
        clock = production.pinned_clock()
        store = SQLiteStore.in_dir(d, synchronous=cfg.store.synchronous, group_commit_max=cfg.store.group_commit_max,
                                   readers=cfg.store.readers, first_ticket_number=cfg.threading.first_ticket_number,
                                   clock=clock)
        await _prefill(store, bodies)
        with open(Path(d) / "omnigate.log", "w", encoding="utf-8") as log_file:
            logs.configure("info", "json", stream=log_file)
            try:
                app = production.create_app(cfg, clock, store=store)
                worker = app[keys.WORKER]
                _timed(worker.pipeline, latencies)
                runner = web.AppRunner(app)
                cpu0, t0 = time.process_time(), time.perf_counter()
                await runner.setup()  # loads the directory, starts the worker
                await worker.drain(timeout=240)
                elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
                counts = await store.journal_counts()
                stats = await store.assign_stats()
                tables = await store.counts()
                await runner.cleanup()
            finally:
                logs.configure("warning", "json")
        log_lines = sum(1 for _ in open(Path(d) / "omnigate.log", encoding="utf-8"))
    n = len(bodies)
    return {"rate": n / elapsed, "cpu_us": cpu / n * 1e6, "latencies": latencies, "journal": counts,
            "tickets": tables.get("tickets"), "log_lines": log_lines,
            "assigned": {k: v for k, v in stats.items() if not isinstance(v, (dict, list))}}


async def _bare(bodies: list[bytes]) -> dict:
    from gateway.store.sqlite import SQLiteStore
    from gateway.worker import Pipeline, Worker
    from routing.pipeline import Settings

    latencies: list[float] = []
    with tempfile.TemporaryDirectory(prefix="omnigate-bench-bare-") as d:
        store = SQLiteStore.in_dir(d)
        await _prefill(store, bodies)
        pipe = Pipeline(store, Settings())
        _timed(pipe, latencies)
        worker = Worker(pipe, concurrency=CONCURRENCY)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await worker.start()
        await worker.drain(timeout=240)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        await worker.stop()
        counts = await store.journal_counts()
        tables = await store.counts()
        await store.close()
    n = len(bodies)
    return {"rate": n / elapsed, "cpu_us": cpu / n * 1e6, "latencies": latencies, "journal": counts,
            "tickets": tables.get("tickets")}


def _figure(r: dict, raw: float, what: str, extra: dict) -> dict:
    return {
        "value": round(r["rate"], 1), "unit": "msg/s", "baseline": round(raw, 1),
        "baseline_label": f"{CONCURRENCY} tasks awaiting one group-committed fsync'd SQLite insert each",
        "ratio": round(r["rate"] / raw, 3),
        "detail": {"what": what, "messages": MESSAGES, "cpu_us_per_msg": round(r["cpu_us"], 1),
                   "p50_ms": round(percentile(r["latencies"], 50) * 1000, 2),
                   "p99_ms": round(percentile(r["latencies"], 99) * 1000, 2),
                   "journal": r["journal"], "tickets": r["tickets"], "mix": production.MIX,
                   "note": f"latency is claim → committed, {CONCURRENCY} concurrent pipeline tasks", **extra},
    }


async def _in_child(mode: str) -> dict:
    """Run one side in its own interpreter (structlog caches its loggers, with
    their level and stream, on first use: one process per configuration)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.bench.pipeline", mode,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"pipeline bench ({mode}) failed: {err.decode()[-800:]}")
    return json.loads(out)


async def figures() -> dict[str, dict]:
    bodies = [production.message(i) for i in range(MESSAGES)]
    prod = await _in_child("production")
    bare = await _in_child("bare")
    raw = await raw_insert_rate(MESSAGES, bodies, CONCURRENCY)
    return {
        "pipeline": _figure(prod, raw, "production configuration: shipped rules, directory (teams, online agents, "
                            "SLA policies), info-level JSON logs to a file, metrics; assignment, SLA, auto-replies",
                            {"log_lines": prod["log_lines"], "assignment": prod["assigned"]}),
        "pipeline_bare": _figure(bare, raw, "bare: no rules, no directory, warning-level logs, no metrics", {}),
    }


def main() -> None:
    mode = sys.argv[1]
    from gateway import logs

    logs.configure("warning", "json")
    bodies = [production.message(i) for i in range(MESSAGES)]
    result = asyncio.run(_production(bodies) if mode == "production" else _bare(bodies))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
