"""``omnigate bench --only redis_api_list``: ticket list pages on the Redis
backend at 100,000 tickets (the queries and data shape of ``api_list``).

A redis-server of its own (temporary directory, no persistence: the fill is
not what is measured) is filled straight through pipelined writes: each
ticket's hash, then the APPLY script's reindex (the same code every write
runs), so the list indexes are exactly what the write path keeps. SLA
states are on the open tickets (a resolution due between a day ago and
three days ahead). Each query of ``api_list.QUERIES`` runs ``ROUNDS`` times
through ``tickets_list`` (page of 50, first pages and a few deeper ones);
the baseline, in the same run, is a page of 50 tickets read by id (one
pipelined ``HMGET`` each: the cheapest page there is), and the timeline
figure is a page of 50 entries of a 5,000-entry ticket timeline, from the
middle, both ways.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec

from gateway.bench.api_list import AGENTS, DAY_MS, NOW_MS, OPEN, PAGE, QUERIES, ROUNDS, T0_MS, TEAMS, _pct

N_TICKETS = 100_000
TIMELINE = 5_000


async def _fill(store, n: int, seed: int = 7) -> list[str]:
    from gateway.store.redis_store import Tx
    from routing.model import SlaState, new_id

    rnd = random.Random(seed)
    k = store.k
    statuses = ["new"] * 10 + ["open"] * 25 + ["pending"] * 10 + ["solved"] * 35 + ["closed"] * 20
    priorities = ["urgent"] * 5 + ["high"] * 15 + ["normal"] * 60 + ["low"] * 20
    ids: list[str] = []
    batch = 1000
    for start in range(0, n, batch):
        pipe = store.r.pipeline(transaction=False)
        progs = []
        for i in range(start, min(n, start + batch)):
            created = T0_MS + rnd.randrange(90 * DAY_MS)
            updated = min(NOW_MS, created + rnd.randrange(5 * DAY_MS))
            tid, cid = new_id(), new_id()
            status = rnd.choice(statuses)
            tags = ["vip"] if rnd.random() < 0.05 else (["refund"] if rnd.random() < 0.2 else [])
            fields = {"number": 1000 + i, "contact_id": cid, "origin_contact_id": cid, "subject": "bench ticket",
                      "status": status, "priority": rnd.choice(priorities), "team": rnd.choice(TEAMS),
                      "tags": msgspec.json.encode(tags).decode(), "channels": '["email"]', "skills": "{}",
                      "created_at": created, "updated_at": updated, "last_message_at": updated, "version": 1}
            if status != "new":
                fields["assignee"] = rnd.choice(AGENTS)
            if status in OPEN:
                due = NOW_MS + rnd.randrange(-DAY_MS, 3 * DAY_MS)
                fields["sla"] = msgspec.json.encode(SlaState(policy="standard", resolution_due=_dt(due))).decode()
            pipe.hset(k.ticket(tid), mapping=fields)
            tx = Tx()
            tx.reindex(k.ticket(tid), tid, k.ticket_index_base)
            progs.append(tx)
            ids.append(tid)
        await pipe.execute()
        pipe = store.r.pipeline(transaction=False)
        for tx in progs:
            await store._apply(keys=tx.keys, args=[tx.program()], client=pipe)
        await pipe.execute()
    return ids


def _dt(ms: int):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


async def _timeline(store) -> tuple[list[float], list[float]]:
    """A ticket with TIMELINE notes; pages of 50 from the middle forward and backward."""
    from gateway.store.base import ReplyDraft
    from gateway.store.redis_store import Tx
    from routing.model import TimelineEntry, new_id

    tid = "T-timeline"
    k = store.k
    await store.r.hset(k.ticket(tid), mapping={"number": 1, "contact_id": "C-t", "status": "open",
                                                 "created_at": T0_MS, "updated_at": T0_MS, "version": 1,
                                                 "channels": "[]", "tags": "[]"})
    for start in range(0, TIMELINE, 500):
        tx = Tx()
        for i in range(start, start + 500):
            e = TimelineEntry(id=new_id(), contact_id="C-t", kind="note" if i % 3 else "message_in",
                              at=_dt(T0_MS + i * 1000), ticket_id=tid, text=f"entry {i}")
            store._add_entry(tx, e, i + 1, "C-t")
        await store._run(tx)
    del ReplyDraft
    fwd, back = [], []
    mid = (T0_MS + TIMELINE // 2 * 1000, TIMELINE // 2 + 1)
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        rows = await store.timeline_rows(ticket_id=tid, position=mid, limit=PAGE + 1)
        fwd.append((time.perf_counter() - t0) * 1000)
        assert len(rows) == PAGE + 1
        t0 = time.perf_counter()
        rows = await store.timeline_rows(ticket_id=tid, position=mid, backward=True, kinds=["message_in"],
                                         limit=PAGE + 1)
        back.append((time.perf_counter() - t0) * 1000)
    return fwd, back


async def _measure(url: str) -> dict:
    from gateway.store.redis_store import RedisStore

    store = RedisStore(url, prefix="bench:")
    try:
        t0 = time.perf_counter()
        ids = await _fill(store, N_TICKETS)
        fill_s = time.perf_counter() - t0
        rnd = random.Random(3)
        base = []
        for _ in range(ROUNDS):
            page = rnd.sample(ids, PAGE)
            t0 = time.perf_counter()
            await store._records(page)
            base.append((time.perf_counter() - t0) * 1000)
        detail: dict[str, dict] = {}
        worst = 0.0
        for name, (qs, q) in QUERIES.items():
            times, pages, after, n = [], 0, None, 0
            for _ in range(ROUNDS):
                t0 = time.perf_counter()
                items, last = await store.tickets_list(q, after=after, limit=PAGE)
                times.append((time.perf_counter() - t0) * 1000)
                n = len(items)
                after = last if last and pages < 5 else None
                pages = pages + 1 if after else 0
            detail[name] = {"query": qs, "p50_ms": round(_pct(times, 50), 2), "p95_ms": round(_pct(times, 95), 2),
                            "page": n}
            worst = max(worst, _pct(times, 50))
        t0 = time.perf_counter()
        counts = await store.ticket_counts(["all"] + [f"s:{s}" for s in OPEN] + [f"t:{t}" for t in TEAMS])
        counts_ms = (time.perf_counter() - t0) * 1000
        fwd, back = await _timeline(store)
        return {"base": base, "worst": worst, "detail": detail, "fill_s": fill_s, "counts_ms": counts_ms,
                "counts": counts, "timeline_fwd": fwd, "timeline_back": back}
    finally:
        await store.close()


async def figures() -> dict[str, dict]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    root = Path(tempfile.mkdtemp(prefix="omnigate-bench-rlist-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root),
                               "--appendonly", "no", "--save", "", "--logfile", str(root / "redis.log")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                await asyncio.sleep(0.05)
        m = await _measure(f"redis://127.0.0.1:{port}/0")
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
    base = _pct(m["base"], 50)
    return {"redis_api_ticket_list_100k": {
        "value": round(m["worst"], 2), "unit": "ms (p50 of the slowest query, page of 50)",
        "baseline": round(base, 2), "baseline_label": "a page of 50 tickets read by id (pipelined HMGET)",
        "ratio": round(m["worst"] / base, 2) if base else None,
        "detail": {"tickets": N_TICKETS, "fill_s": round(m["fill_s"], 1), "rounds": ROUNDS, "queries": m["detail"],
                   "counts_ms": round(m["counts_ms"], 2), "counts": m["counts"],
                   "timeline_page_forward_p50_ms": round(_pct(m["timeline_fwd"], 50), 2),
                   "timeline_page_backward_one_kind_p50_ms": round(_pct(m["timeline_back"], 50), 2),
                   "timeline_entries": TIMELINE},
    }}


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(asyncio.run(figures()), indent=2, ensure_ascii=False))
