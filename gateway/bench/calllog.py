"""``omnigate bench`` figure ``calllog_rows``: an Asterisk Master.csv tailed by
a running gateway (the real app: tailer, journal, pipeline with the shipped
rules, SQLite commits), from the moment the rows are written to the file
until every one is a committed call on a timeline,
in rows/s. The raw baseline reads and splits the same CSV and inserts the
rows into a bare SQLite table in the tailer's batches, durably
(``synchronous=FULL``), with nothing else: what a minimal CDR loader costs."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sqlite3
import tempfile
import time
from pathlib import Path

ROWS = 3000
CALLERS = 200
BATCH = 256
PATIENCE_S = 240.0


def _row(n: int) -> str:
    disposition = ("ANSWERED", "NO ANSWER", "BUSY")[n % 3]
    return (f'"","1380013{n % CALLERS:04d}","4008001234","from-trunk","","SIP/trunk-{n:06d}","","Dial","",'
            f'"2026-11-30 10:00:00","","2026-11-30 10:00:20",20,0,"{disposition}","DOCUMENTATION","1700000000.{n}",""\n')


async def _gateway_rate(tmp: Path, cdr: Path) -> tuple[float, dict]:
    from aiohttp import web

    from gateway import keys
    from gateway.app import create_app
    from gateway.config import load

    rules = Path(__file__).resolve().parents[1] / "rules"
    env = {"OMNIGATE_API_TOKEN": "bench", "OMNIGATE_DATA_DIR": str(tmp / "data"), "OMNIGATE_LOG_LEVEL": "warning",
           "OMNIGATE_RULES_DIR": str(rules) if rules.is_dir() else str(tmp / "no-rules")}
    flags = {"phone": {"accounts": {"pbx": {"source": "asterisk", "cdr_path": str(cdr)}}, "poll_interval": 0.02}}
    app = create_app(load(None, environ=env, flags=flags))
    store = app[keys.STORE]
    runner = web.AppRunner(app)
    await runner.setup()  # starts the store, the worker and the tailer (on an empty file)
    try:
        rows = "".join(_row(n) for n in range(ROWS))
        t0 = time.perf_counter()
        with open(cdr, "a") as fh:  # the PBX writes the rows: from here to committed calls is measured
            fh.write(rows)
        deadline = time.monotonic() + PATIENCE_S
        while True:
            counts = await store.journal_counts()
            if counts.get("processed", 0) + counts.get("failed", 0) >= ROWS or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
    finally:
        await runner.cleanup()
    return ROWS / elapsed, counts


def _raw_rate(cdr: Path, tmp: Path) -> float:
    conn = sqlite3.connect(tmp / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE cdr (uniqueid TEXT PRIMARY KEY, row TEXT)")
    t0 = time.perf_counter()
    text = cdr.read_text()
    rows = list(csv.reader(io.StringIO(text)))
    for i in range(0, len(rows), BATCH):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO cdr VALUES (?, ?)", [(r[16], ",".join(r)) for r in rows[i:i + BATCH]])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(rows) / elapsed


async def figures() -> dict[str, dict]:
    with tempfile.TemporaryDirectory(prefix="omnigate-calllog-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cdr = tmp / "Master.csv"
        cdr.write_text("")
        value, counts = await _gateway_rate(tmp, cdr)
        baseline = await asyncio.to_thread(_raw_rate, cdr, tmp)
    return {
        "calllog_rows": {
            "value": round(value, 1),
            "unit": "rows/s",
            "baseline": round(baseline, 1),
            "baseline_label": "csv split + batched durable INSERT into a bare SQLite table",
            "ratio": round(value / baseline, 4),
            "detail": {"rows": ROWS, "callers": CALLERS, "journal": counts, "cpus": os.cpu_count(),
                       "what": "Master.csv tailed → journal → pipeline (shipped rules) → committed call entries"},
        }
    }
