"""The commit's fast paths write what the plain ones write: oracle tests.

- The ticket is read once after the commit's write, for both its events'
  snapshot and the sync's ``TicketRow``: each equals what the plain reads
  give, through the real app's worker on the production bench's traffic
  (shipped rules, a directory, SLA policies: new tickets, follow-ups, tags,
  priorities, assignment, auto-replies).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from aiohttp import web

from gateway import keys
from gateway.bench import production
from gateway.store import sqlite, sqlite_assign
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_webhooks import ticket_snapshot
from tests.clock import FakeClock


async def test_the_ticket_a_commit_reads_once_is_what_the_plain_reads_give(tmp_path: Path, monkeypatch) -> None:
    """Every event's ticket snapshot made from the commit's one read equals
    (values, key order, JSON) what ``ticket_snapshot`` reads at that point,
    and every ``TicketRow`` the sync is handed equals the one it would have
    read (``AssignTx.ticket``)."""
    snapshots: list[tuple[dict, dict | None]] = []
    rows: list[tuple] = []
    payloads = sqlite.event_payloads

    def checked_payloads(conn, events, now=None, written=(), tickets=None):
        for tid, snap in (tickets or {}).items():
            snapshots.append((snap, ticket_snapshot(conn, tid)))
        return payloads(conn, events, now, written, tickets)

    sync_one = sqlite_assign._sync_one

    def checked_sync(tx, ticket_id, row=None):
        if row is not None:
            rows.append((row, tx.ticket(ticket_id)))
        return sync_one(tx, ticket_id, row)

    monkeypatch.setattr(sqlite, "event_payloads", checked_payloads)
    monkeypatch.setattr(sqlite_assign, "_sync_one", checked_sync)
    clock = FakeClock(production.PINNED)
    cfg = production.config(tmp_path, workers=8)
    store = SQLiteStore.in_dir(tmp_path, clock=clock)
    n = 240
    for i in range(n):
        await store.journal_append("api", "api", f"m{i}", production.message(i))
    app = production.create_app(cfg, clock, store=store)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await app[keys.WORKER].drain(timeout=60)
        counts = await store.journal_counts()
        stored = await store._read(lambda conn: conn.execute(
            "SELECT count(*) FROM outbox WHERE json_extract(payload, '$.ticket.id') IS NOT NULL").fetchone()[0])
    finally:
        await runner.cleanup()
    assert counts.get("processed") == n
    assert len(rows) >= n * 0.95 and len(snapshots) >= n * 0.95  # nearly every message writes its ticket
    assert stored >= len(snapshots)
    for got, read in rows:
        assert got == read
    for got, read in snapshots:
        assert got == read and list(got) == list(read)
        assert msgspec.json.encode(got) == msgspec.json.encode(read)
    # the traffic exercised both writes and the columns rules change
    assert {got.stamp[1] == 1 for got, _ in rows} == {True, False}  # new tickets and follow-ups
    assert any(got["tags"] for got, _ in snapshots) and {got["priority"] for got, _ in snapshots} > {"normal"}
    assert any(got.sla for got, _ in rows) and any(got.assignee for got, _ in rows)

