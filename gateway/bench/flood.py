"""The fair-share gate (gateway/admission.py) under an ingest flood, on and off.

The production app (:mod:`gateway.bench.production`) in a process of its
own, its pipeline running, while :data:`TASKS` tasks append the mix through
``Ingest.ingest`` as fast as they can for :data:`SECONDS` (no HTTP: the
flood is far beyond what the open-loop client of ``sustained`` offers).
Run once with the gate (``pipeline.admission_ratio`` at its default) and
once without (0), alternately, :data:`ROUNDS` times; each arm reports entries processed
per second and per CPU second the process got (the machine is shared: the
per-CPU figure is the one that compares), intake per second, and the
gate's counters.

Usage: ``python -m gateway.bench.flood RATIO SECONDS TASKS`` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

SECONDS = 6.0
TASKS = 256
ROUNDS = 2


async def _arm(ratio: str, seconds: float, tasks: int) -> dict:
    os.environ["OMNIGATE_PIPELINE__ADMISSION_RATIO"] = ratio
    from aiohttp import web

    from gateway import keys, logs
    from gateway.bench import production

    with tempfile.TemporaryDirectory(prefix="omnigate-bench-flood-") as d:
        data = Path(d)
        logs.configure("info", "json", stream=open(data / "omnigate.log", "a", encoding="utf-8"))
        app = production.create_app(production.config(data), production.pinned_clock())
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            ingest, worker, load = app[keys.INGEST], app[keys.WORKER], app[keys.LOAD]
            stop = time.monotonic() + seconds
            sent = [0]

            async def flood() -> None:
                while time.monotonic() < stop:
                    sent[0] += 1
                    k = sent[0]
                    await ingest.ingest("api", "api", f"f{k}", production.message(k, prefix="f"))

            done0, cpu0, t0 = worker.done, time.process_time(), time.monotonic()
            await asyncio.gather(*(flood() for _ in range(tasks)))
            wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
            processed = worker.done - done0
            return {"admission_ratio": float(ratio), "ingested_per_s": round(sent[0] / wall, 1),
                    "processed_per_s": round(processed / wall, 1),
                    "processed_per_cpu_s": round(processed / max(cpu, 1e-3), 1), "cpu_share": round(cpu / wall, 2),
                    "backlog_end": load.backlog.pending, "loop_busy": round(load.busy(), 2),
                    "gate": dict(load.gate.stats),
                    "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        finally:
            await runner.cleanup()


async def run() -> dict:
    """Both arms, alternating; the figures of each arm's rounds and their mean per-CPU rate."""
    from gateway.config import PipelineConfig

    default = str(PipelineConfig().admission_ratio)
    arms: dict[str, list[dict]] = {"gate": [], "no_gate": []}
    for _ in range(ROUNDS):
        for name, ratio in (("gate", default), ("no_gate", "0")):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.bench.flood", ratio, str(SECONDS), str(TASKS),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"flood arm failed: {err.decode()[-800:]}")
            arms[name].append(json.loads(out.splitlines()[-1]))

    def mean(name: str, key: str) -> float:
        return round(sum(r[key] for r in arms[name]) / len(arms[name]), 1)

    gate, no_gate = mean("gate", "processed_per_cpu_s"), mean("no_gate", "processed_per_cpu_s")
    return {"what": f"{TASKS} tasks appending the mix through Ingest.ingest as fast as they can for {SECONDS} s "
                    f"while the production pipeline runs; gate (admission_ratio {default}, the default) and no "
                    "gate (0), alternately",
            "processed_per_cpu_s_gate": gate, "processed_per_cpu_s_no_gate": no_gate,
            "gain": round(gate / no_gate, 3) if no_gate else None,
            "processed_per_s_gate": mean("gate", "processed_per_s"),
            "processed_per_s_no_gate": mean("no_gate", "processed_per_s"), "rounds": arms}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_arm(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))))
