"""``omnigate bench --only console_page`` (group ``console`` in
``gateway/bench/runner.py``): the console's ticket page for a customer with
1,000 timeline entries (10 tickets over WeChat, email and
Telegram: messages, replies with delivery status, notes, rule and assignment
reasons), signed in as an admin, through a real app on a loopback port.

The store is filled straight through SQL (not timed). The figure is the p50
and p95 of the page's server time (the handler's own time, read from the
``Server-Timing`` header a bench-only middleware adds), over :data:`ROUNDS`
requests; the budget is 200 ms. The baseline, in the same run, is
``GET /healthz``'s server time (the cheapest page there is).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

ROUNDS = 40
ENTRIES = 1000
TOKEN = "bench-console-token"
BUDGET_MS = 200.0


def fill(path: str, n: int = ENTRIES) -> int:
    """One contact, 10 tickets, ``n`` timeline entries; returns the first ticket's number."""
    from routing.model import new_id

    enc = msgspec.json.Encoder()
    conn = sqlite3.connect(path)
    t0 = 1_764_547_200_000  # 2025-12-01T00:00:00Z
    cid = new_id()
    conn.execute("INSERT INTO contacts (id, name, created_at, updated_at) VALUES (?, ?, ?, ?)", (cid, "李磊", t0, t0))
    tickets = []
    channels = ["wechat", "email", "telegram"]
    for i in range(10):
        tid = new_id()
        tickets.append(tid)
        conn.execute("INSERT INTO tickets (id, number, contact_id, origin_contact_id, subject, status, priority, team, "
                     "channels, created_at, updated_at, last_message_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     (tid, 5000 + i, cid, cid, f"退款 {i}", "open", "normal", "billing",
                      enc.encode([channels[i % 3]]).decode(), t0, t0, t0))
    kinds = ["message_in", "rule", "assignment", "message_out", "note"]
    for j in range(n):
        kind = kinds[j % len(kinds)]
        tid = tickets[j % 10]
        data: dict[str, Any] = {}
        text = f"第 {j} 条：订单 2025{j:04d} 重复扣款，请退款。"
        if kind == "rule":
            data = {"rule": "billing-refund", "title": "refunds", "matched": ["keyword 退款"]}
            text = "rule billing-refund: refunds — keyword 退款"
        elif kind == "assignment":
            data = {"agent": "a-wang", "reason": {"code": "chosen", "text": "skill billing, load 2/5"}}
            text = "assigned to a-wang: skill billing, load 2/5"
        elif kind == "message_out":
            data = {"author": "a-wang", "delivery": {"status": "sent"}}
        elif kind == "note":
            data = {"author": "a-wang", "mentions": ["a-li"]}
            text = f"@a-li 请看第 {j} 条"
        conn.execute("INSERT INTO timeline (id, contact_id, origin_contact_id, ticket_id, kind, at, channel, text, data) "
                     "VALUES (?,?,?,?,?,?,?,?,?)", (new_id(), cid, cid, tid, kind, t0 + j * 60_000,
                                                    channels[(j % 10) % 3], text, enc.encode(data).decode()))
    conn.commit()
    conn.close()
    return 5000


async def figures() -> dict[str, dict]:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.app import create_app
    from gateway.config import load
    from gateway.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="omnigate-bench-console-") as d:
        data = Path(d) / "data"
        SQLiteStore.in_dir(data)  # migrate
        await asyncio.sleep(0)
        number = fill(str(data / "omnigate.db"))
        env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(data), "OMNIGATE_RULES_DIR": str(Path(d) / "none")}
        app = create_app(load(None, environ=env, flags={}))

        @web.middleware
        async def server_timing(request: web.Request, handler: Any) -> web.StreamResponse:
            t = time.perf_counter()
            resp = await handler(request)
            resp.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - t) * 1000:.3f}"
            return resp

        app.middlewares.append(server_timing)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            page = await client.get("/console/login")
            pre = re.search(r'name="csrf" value="([^"]+)"', await page.text()).group(1)
            resp = await client.post("/console/login", data={"csrf": pre, "token": TOKEN}, allow_redirects=False)
            assert resp.status == 303, await resp.text()

            async def server_ms(path: str) -> list[float]:
                out = []
                for _ in range(ROUNDS):
                    r = await client.get(path)
                    body = await r.read()
                    assert r.status == 200 and body, (path, r.status)
                    out.append(float(r.headers["Server-Timing"].split("dur=")[1]))
                return out

            await server_ms(f"/console/tickets/{number}")  # warm
            page_ms = await server_ms(f"/console/tickets/{number}")
            base_ms = await server_ms("/healthz")
        finally:
            await client.close()
    p50, p95 = statistics.median(page_ms), sorted(page_ms)[int(len(page_ms) * 0.95) - 1]
    b50 = statistics.median(base_ms)
    return {"console_page": {
        "value": round(p95, 2), "unit": "ms", "baseline": round(b50, 3),
        "baseline_label": "p95 server time of the page vs. GET /healthz server time (p50), same app",
        "ratio": round(p95 / b50, 1) if b50 else None,
        "detail": {"timeline_entries": ENTRIES, "tickets": 10, "rounds": ROUNDS, "p50_ms": round(p50, 2),
                   "p95_ms": round(p95, 2), "budget_ms": BUDGET_MS, "within_budget": p95 <= BUDGET_MS},
    }}


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(asyncio.run(figures()), indent=2, ensure_ascii=False))
