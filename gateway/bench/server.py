"""HTTP servers for ``omnigate bench``, each run in its own process.

- ``bare``: an aiohttp handler that reads the body and answers 202 — the
  framework's ceiling on this machine;
- ``sqlite``: the same handler doing one group-committed, fsync'd SQLite
  insert per request (a minimal writer thread, independent of omnigate's
  store) — the durable-ack ceiling;
- ``omnigate``: the real gateway (``create_app``) with the pipeline off, so
  the figure is the ingest path alone: auth, validation, journal, 202 — with
  a WeChat Official Account (safe mode, AES) and a Telegram bot configured
  (:data:`BENCH_CHANNELS`), whose callbacks are measured the same way.

- ``production``: the real gateway in the production configuration
  (:mod:`gateway.bench.production`: shipped rules, directory, info-level
  JSON logs to ``DATA_DIR/omnigate.log``, metrics), pipeline on — what the
  ``sustained`` figure loads; it writes the gate's counters and its own
  intake latency buckets (:class:`IntakeTimes`) and its clock to
  ``DATA_DIR/admission.json`` every second; the bench's WeChat account
  (:data:`BENCH_CHANNELS`) is configured too.

Usage: ``python -m gateway.bench.server MODE PORT DATA_DIR``.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import queue
import sqlite3
import sys
import threading
from pathlib import Path

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger


def _bare_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"journal_id": "0"}, status=202)

    app = web.Application()
    app.router.add_post("/channels/api/messages", handler)
    return app


def _sqlite_app(data_dir: Path) -> web.Application:
    q: queue.SimpleQueue = queue.SimpleQueue()
    conn = sqlite3.connect(data_dir / "baseline.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")

    def writer() -> None:
        while True:
            batch = [q.get()]
            while True:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO t (body) VALUES (?)", [(b,) for b, _, _ in batch])
            conn.execute("COMMIT")
            by_loop: dict = {}
            for _, loop, fut in batch:
                by_loop.setdefault(loop, []).append(fut)
            for loop, futs in by_loop.items():
                loop.call_soon_threadsafe(lambda fs=futs: [f.set_result(None) for f in fs if not f.done()])

    threading.Thread(target=writer, daemon=True).start()

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        q.put((body, loop, fut))
        await fut
        return web.json_response({"journal_id": "0"}, status=202)

    app = web.Application()
    app.router.add_post("/channels/api/messages", handler)
    return app


#: The bench's channel accounts. The AES key is wechatpy's public test key.
BENCH_CHANNELS = {
    "wechat": {"accounts": {"bench": {"appid": "wxbench0000000001", "token": "bench-token-wx",
                                      "encoding_aes_key": "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
                                      "app_secret": "bench-secret"}},
               "api_base": "http://127.0.0.1:9"},
    "telegram": {"bots": {"bench": {"token": "123456:bench-token-telegram", "secret_token": "bench-secret-tg",
                                    "mode": "webhook"}},
                 "api_base": "http://127.0.0.1:9"},
}


def omnigate_app(data_dir: Path, channels: dict | None = None) -> web.Application:
    """The real gateway with the pipeline off, no rules, warning-level JSON
    logs and ``channels`` configured (:data:`BENCH_CHANNELS` by default)."""
    from gateway.app import create_app
    from gateway.config import load

    config = load(None, environ={"OMNIGATE_API_TOKEN": "bench-token", "OMNIGATE_DATA_DIR": str(data_dir),
                                 "OMNIGATE_PIPELINE__WORKERS": "0", "OMNIGATE_LOG_LEVEL": "warning",
                                 "OMNIGATE_RULES_DIR": str(data_dir / "no-rules")},
                  flags={"channels": BENCH_CHANNELS if channels is None else channels})
    from gateway import logs

    logs.configure("warning", "json")
    return create_app(config)


def _production_app(data_dir: Path) -> web.Application:
    from gateway import logs
    from gateway.bench import production

    logs.configure("info", "json", stream=open(data_dir / "omnigate.log", "a", encoding="utf-8"))
    # the bench's WeChat account too: the ``sustained`` figure floods it past capacity (never refused)
    app = production.create_app(production.config(data_dir, channels={"wechat": BENCH_CHANNELS["wechat"]}),
                                production.pinned_clock())
    intake = app[INTAKE_TIMES] = IntakeTimes()
    app.cleanup_ctx.append(lambda app: _admission_stats(app, data_dir / "admission.json", intake))
    return app


class IntakeTimes:
    """The server's own intake latency: seconds from aiohttp taking the
    request (its head parsed) to its answer written, for every
    ``/channels/`` request, counted in log-spaced buckets (each bound 1.2 ×
    the last, from 0.5 ms), cumulative, so that a reader takes the
    difference between two readings for the requests in between
    (:func:`intake_percentile`). Time a request waits before aiohttp takes
    it (the kernel's queue, a busy loop) is not in it: the load client's
    latency, from each request's scheduled time, has the whole. A refusal
    answered as it is parsed (gateway/fast_refusal.py) never reaches
    aiohttp's request handling and is not counted: it takes no time there.

    Recorded by aiohttp's access-log hook (:meth:`access_logger`), not an app
    middleware: aiohttp builds the middleware chain for every request
    (``gateway.http_util.guard`` says what that costs), and the bench would
    charge it to every intake and refusal it measures."""

    BOUNDS_MS = [0.5 * 1.2 ** k for k in range(64)]

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS_MS) + 1)

    def record(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.BOUNDS_MS, seconds * 1000)] += 1

    def access_logger(self) -> type[AbstractAccessLogger]:
        """The ``access_log_class`` for ``web.run_app`` that records each
        ``/channels/`` request's time here."""
        times = self

        class Recorder(AbstractAccessLogger):
            def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
                if request.path.startswith("/channels/"):
                    times.record(time)

        return Recorder


#: The production server's :class:`IntakeTimes` (``main`` hands it to aiohttp's access-log hook).
INTAKE_TIMES = web.AppKey("bench_intake_times", IntakeTimes)


def intake_percentile(before: list[int] | None, after: list[int], p: float) -> float | None:
    """The ``p``-th percentile (ms, a bucket's upper bound: within 20 %) of the
    intakes counted between two readings of :class:`IntakeTimes`."""
    counts = [a - b for a, b in zip(after, before or [0] * len(after))]
    n = sum(counts)
    if not n:
        return None
    seen = 0
    for bound, count in zip(IntakeTimes.BOUNDS_MS + [float("inf")], counts):
        seen += count
        if seen >= p / 100 * n:
            return round(bound, 1) if bound != float("inf") else None
    return None


async def _admission_stats(app: web.Application, path: Path, intake: IntakeTimes):  # type: ignore[no-untyped-def]
    """Write the fair-share gate's counters (gateway/admission.py) and the
    intake latency buckets every second, for the ``sustained`` figure's report."""
    import json

    from gateway import keys
    from gateway.fast_refusal import REFUSAL

    load = app[keys.LOAD]

    async def loop() -> None:
        while True:
            await asyncio.sleep(1.0)
            path.write_text(json.dumps({"ratio": load.gate.ratio, "max_delay_s": load.gate.max_delay_s,
                                        **load.gate.stats, "shed": load.gate.shed_count,
                                        # of those, answered as parsed (gateway/fast_refusal.py)
                                        "shed_as_parsed": getattr(app.get(REFUSAL), "count", 0),
                                        # credits taken as requests were parsed, and given back unused
                                        "reserved": load.gate.reserved, "released": load.gate.released,
                                        # starvations begun (gateway/admission.py, AdmissionGate.starved)
                                        "episodes": load.gate.episodes, "backlog": load.backlog.pending,
                                        "loop_busy": round(load.busy(), 2), "intake_buckets": intake.counts,
                                        # the pinned clock: WeChat callbacks are stamped near it
                                        "clock": app[keys.CLOCK]().timestamp()}))

    task = asyncio.create_task(loop())
    yield
    task.cancel()


def main() -> None:
    mode, port, data_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    data_dir.mkdir(parents=True, exist_ok=True)
    app = {"bare": _bare_app, "sqlite": lambda: _sqlite_app(data_dir), "omnigate": lambda: omnigate_app(data_dir),
           "production": lambda: _production_app(data_dir)}[mode]()
    intake = app.get(INTAKE_TIMES)
    if intake is None:
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    else:
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=logging.getLogger("omnigate.bench"),
                    access_log_class=intake.access_logger())


if __name__ == "__main__":
    main()
