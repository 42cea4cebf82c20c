"""``omnigate bench --only api_list``: ``GET /api/v1/tickets`` at 100,000 tickets.

The store is filled straight through SQL (not timed; the write path has its
own figures): 100k tickets over 90 days in 10 teams, 200 assignees, the
status mix of a help desk that keeps its history (10 % new, 25 % open, 10 %
pending, 35 % solved, 20 % closed), a quarter of them tagged, and SLA breach
timers for the open ones. Then each query of :data:`QUERIES` runs
:data:`ROUNDS` times through the store (``tickets_list``, page of 50) and
through HTTP (a real app on a loopback port, bootstrap token), and the figure
is the p50/p95 latency. The baseline, measured in the same run, is a page of
50 tickets read by primary key (the cheapest read of a page there is).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import msgspec

from gateway.store.sqlite_tickets import TicketQuery

N_TICKETS = 100_000
ROUNDS = 60
PAGE = 50
TEAMS = [f"team-{i}" for i in range(10)]
AGENTS = [f"agent-{i}" for i in range(200)]
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY_MS = 86_400_000
NOW_MS = T0_MS + 90 * DAY_MS
OPEN = ["new", "open", "pending"]

#: name → (query string, the store query, the caller's visibility)
QUERIES: dict[str, tuple[str, TicketQuery]] = {
    "team_queue": ("status=new,open,pending&team=team-3",
                   TicketQuery(status=OPEN, team=["team-3"])),
    "all_open_by_priority": ("status=new,open,pending", TicketQuery(status=OPEN)),
    "recently_updated": ("sort=updated", TicketQuery(sort="updated")),
    "assignee_open": ("assignee=agent-7&status=open", TicketQuery(assignee=["agent-7"], status=["open"])),
    "agent_view": ("status=open (as an agent of team-3)",
                   TicketQuery(status=["open"], visible_teams=["team-3"], visible_agent="agent-7")),
    "tag": ("tag=vip&status=new,open,pending", TicketQuery(tag="vip", status=OPEN)),
    "sla_breaching_60m": ("sla_breaching_within=60", TicketQuery(sla_due_before=NOW_MS + 3_600_000)),
}


def fill(path: str, n: int = N_TICKETS, seed: int = 7) -> list[str]:
    """``n`` tickets (and their contacts, SLA timers) in the store at ``path``; returns their ids."""
    from routing.model import new_id

    rnd = random.Random(seed)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    ids = []
    tickets, contacts, timers = [], [], []
    statuses = ["new"] * 10 + ["open"] * 25 + ["pending"] * 10 + ["solved"] * 35 + ["closed"] * 20
    priorities = ["urgent"] * 5 + ["high"] * 15 + ["normal"] * 60 + ["low"] * 20
    for i in range(n):
        created = T0_MS + rnd.randrange(90 * DAY_MS)
        updated = min(NOW_MS, created + rnd.randrange(5 * DAY_MS))
        tid, cid = new_id(created), new_id(created)
        status = rnd.choice(statuses)
        tags = ["vip"] if rnd.random() < 0.05 else (["refund"] if rnd.random() < 0.2 else [])
        assignee = rnd.choice(AGENTS) if status != "new" else None
        tickets.append((tid, 1000 + i, cid, cid, "bench ticket", status, rnd.choice(priorities), rnd.choice(TEAMS),
                        assignee, msgspec.json.encode(tags).decode(), '["email"]', created, updated, updated))
        contacts.append((cid, f"customer {i}", created, created))
        if status in OPEN:
            timers.append((tid, "resolution", "breach", "resolution", "standard", created,
                           NOW_MS + rnd.randrange(-DAY_MS, 3 * DAY_MS)))
        ids.append(tid)
    conn.executemany("INSERT INTO contacts (id, name, created_at, updated_at) VALUES (?,?,?,?)", contacts)
    conn.executemany(
        "INSERT INTO tickets (id, number, contact_id, origin_contact_id, subject, status, priority, team, assignee, "
        "tags, channels, created_at, updated_at, last_message_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", tickets)
    conn.executemany("INSERT INTO sla_timers (ticket_id, key, kind, target, policy, since, due_at) "
                     "VALUES (?,?,?,?,?,?,?)", timers)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return ids


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def _store_latency(store, q: TicketQuery) -> tuple[list[float], int]:
    times, pages = [], 0
    after = None
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        items, last = await store.tickets_list(q, after=after, limit=PAGE)
        times.append((time.perf_counter() - t0) * 1000)
        after = last if last and pages < 5 else None  # first pages and a few deeper ones
        pages = pages + 1 if after else 0
    return times, len(items)


async def _by_pk(store, ids: list[str]) -> list[float]:
    from gateway.store.sqlite_tickets import _record, _record_cols

    rnd = random.Random(3)
    times = []

    def read(conn, page):
        return [_record(r) for r in conn.execute(
            f"SELECT {_record_cols()} FROM tickets WHERE id IN ({','.join('?' * len(page))})", page)]

    for _ in range(ROUNDS):
        page = rnd.sample(ids, PAGE)
        t0 = time.perf_counter()
        await store._read(read, page)
        times.append((time.perf_counter() - t0) * 1000)
    return times


async def _http_latency(data_dir: str) -> dict[str, float]:
    import aiohttp
    from aiohttp import web

    from gateway.app import create_app
    from gateway.config import load

    config = load(None, environ={"OMNIGATE_API_TOKEN": "bench-token", "OMNIGATE_DATA_DIR": data_dir,
                                 "OMNIGATE_RULES_DIR": str(Path(data_dir) / "no-rules"),
                                 "OMNIGATE_LOG_LEVEL": "warning", "OMNIGATE_REST__RATE_LIMIT_PER_MINUTE": "0"})
    from gateway import logs

    logs.configure("warning", "console")
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    out = {}
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer bench-token"}) as s:
            for name, (qs, _) in QUERIES.items():
                if "(" in qs:
                    continue
                times = []
                for _ in range(ROUNDS):
                    t0 = time.perf_counter()
                    async with s.get(f"http://127.0.0.1:{port}/api/v1/tickets?{qs}&limit={PAGE}") as r:
                        await r.read()
                        assert r.status == 200, await r.text()
                    times.append((time.perf_counter() - t0) * 1000)
                out[name] = round(_pct(times, 50), 2)
    finally:
        await runner.cleanup()
    return out


async def figures() -> dict[str, dict]:
    from gateway.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="omnigate-bench-api-") as d:
        store = SQLiteStore.in_dir(d)
        t0 = time.perf_counter()
        ids = await asyncio.to_thread(fill, store.path)
        fill_s = time.perf_counter() - t0
        detail: dict[str, dict] = {}
        worst_p50 = 0.0
        try:
            base = await _by_pk(store, ids)
            for name, (qs, q) in QUERIES.items():
                times, n = await _store_latency(store, q)
                detail[name] = {"query": qs, "p50_ms": round(_pct(times, 50), 2), "p95_ms": round(_pct(times, 95), 2),
                                "page": n}
                worst_p50 = max(worst_p50, _pct(times, 50))
        finally:
            await store.close()
        http = await _http_latency(d)
        for name, p50 in http.items():
            detail[name]["http_p50_ms"] = p50
    base_p50 = _pct(base, 50)
    return {"api_ticket_list_100k": {
        "value": round(worst_p50, 2), "unit": "ms (p50 of the slowest query, page of 50)",
        "baseline": round(base_p50, 2), "baseline_label": "a page of 50 tickets read by primary key",
        "ratio": round(worst_p50 / base_p50, 2) if base_p50 else None,
        "detail": {"tickets": N_TICKETS, "fill_s": round(fill_s, 1), "rounds": ROUNDS, "queries": detail},
    }}


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(asyncio.run(figures()), indent=2, ensure_ascii=False))
