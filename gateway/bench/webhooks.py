"""``webhook_delivery`` for ``omnigate bench``: events committed to the
outbox → signed POSTs accepted by a local receiver (aiohttp on loopback),
through the real WebhookService (fan-out, per-ticket claims, settle), in
events/s, with the p99 commit-to-delivery latency measured at half that
rate (a burst only measures how long the queue takes to drain). The baseline is the same
number of bare aiohttp POSTs of the same bodies to the same receiver at the
same concurrency (no store, no signing): the ratio is what the delivery
machinery costs."""

from __future__ import annotations

import asyncio
import tempfile
import time
from typing import Any

EVENTS = 3000
TICKETS = 300
BATCH = 50


def _percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def _receiver() -> tuple[Any, str, dict[str, float]]:
    from aiohttp import web

    arrived: dict[str, float] = {}

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        arrived.setdefault(request.headers.get("webhook-id", str(len(arrived))), time.time())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hook", arrived


async def _delivery(events: int = EVENTS, pace_s: float = 0.0) -> tuple[float, list[float]]:
    """Commit ``events`` in batches (``pace_s`` apart: 0 is a burst) while the
    service delivers; (events/s, commit-to-delivery latencies in s)."""
    from gateway.config import WebhookEndpointConfig, WebhooksConfig
    from gateway.store.sqlite import SQLiteStore
    from gateway.store.sqlite_webhooks import insert_events
    from gateway.webhooks.service import WebhookService

    runner, url, arrived = await _receiver()
    with tempfile.TemporaryDirectory() as d:
        store = SQLiteStore.in_dir(d)
        cfg = WebhooksConfig(endpoints={"bench": WebhookEndpointConfig(
            url=url, secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", allow_private=True)})
        svc = WebhookService(store, cfg, poll_s=0.005)
        await svc.start()
        task = asyncio.create_task(svc.run())
        committed: dict[int, float] = {}
        t0 = time.perf_counter()
        for b in range(0, events, BATCH):
            rows = [("message.created", f"T{i % TICKETS}", {"ticket_id": f"T{i % TICKETS}", "n": i, "text": "x" * 200})
                    for i in range(b, b + BATCH)]
            now_ms = int(time.time() * 1000)
            await store._write(lambda conn, rows=rows, now_ms=now_ms: insert_events(conn, rows, now_ms))
            committed[b] = now_ms / 1000
            await asyncio.sleep(pace_s)
        while len(arrived) < events and time.perf_counter() - t0 < 120:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        ids = await store._read(lambda conn: [(r[0], r[1]) for r in conn.execute(
            "SELECT id, created_at FROM outbox ORDER BY seq")])
        await svc.close()
        await store.close()
    await runner.cleanup()
    latencies = [arrived[i] - c / 1000 for i, c in ids if i in arrived]
    return len(arrived) / elapsed, latencies


async def _raw(concurrency: int = 16) -> float:
    import aiohttp

    runner, url, arrived = await _receiver()
    body = b'{"type":"message.created","timestamp":"2026-01-01T00:00:00Z","data":{"text":"' + b"x" * 200 + b'"}}'
    counter = iter(range(EVENTS))
    t0 = time.perf_counter()
    async with aiohttp.ClientSession() as s:

        async def worker() -> None:
            for n in counter:
                async with s.post(url, data=body, headers={"webhook-id": f"r{n}",
                                                           "content-type": "application/json"}) as r:
                    await r.read()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await runner.cleanup()
    return EVENTS / elapsed


async def figures() -> dict:
    rate, _ = await _delivery()
    raw = await _raw()
    # latency at a sustainable load: half the measured rate, paced in batches
    paced_rate = rate / 2
    _, latencies = await _delivery(events=EVENTS // 2, pace_s=BATCH / paced_rate)
    return {"webhook_delivery": {
        "value": round(rate, 1), "unit": "events/s", "baseline": round(raw, 1),
        "baseline_label": "bare aiohttp POSTs of the same bodies to the same receiver, 16 concurrent",
        "ratio": round(rate / raw, 3),
        "detail": {"events": EVENTS, "tickets": TICKETS,
                   "p50_commit_to_delivery_ms": round(_percentile(latencies, 50) * 1000, 1),
                   "p99_commit_to_delivery_ms": round(_percentile(latencies, 99) * 1000, 1),
                   "latency_load_events_s": round(paced_rate, 1),
                   "note": f"rate: {EVENTS} events committed at once in batches of {BATCH} while the service "
                           "delivers (per-ticket order kept); latency: commit → receiver, at half that rate"},
    }}
