"""The commit's fast paths write what the plain ones write: oracle tests.

- The ticket is read once after the commit's write, for both its events'
  snapshot and the sync's ``TicketRow``: each equals what the plain reads
  give, through the real app's worker on the production bench's traffic
  (shipped rules, a directory, SLA policies: new tickets, follow-ups, tags,
  priorities, assignment, auto-replies).
- Event payloads bound as UTF-8 bytes and cast to TEXT are stored as the
  very value a bound ``str`` is.
- A follow-up reads no identity origin: its rows are its ticket's.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import msgspec
from aiohttp import web

from gateway import keys
from gateway.bench import production
from gateway.store import sqlite, sqlite_assign
from gateway.store.sqlite import SQLiteStore
from gateway.store.sqlite_webhooks import OUTBOX_INSERT, ticket_snapshot
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


def test_an_event_payload_bound_as_bytes_is_stored_as_the_str_would_be() -> None:
    """``OUTBOX_INSERT`` (the JSON's bytes, ``CAST(? AS TEXT)``) stores the
    value binding the decoded ``str`` stores: type TEXT, the same bytes, the
    same JSON functions' answers — for texts in any script, escapes, NUL,
    line separators, emoji and empty values."""
    rng = random.Random(11)
    texts = ["", "您好，我的订单还没有到", "Where is my parcel?", 'quote " back \\ slash', "nul \x00 and \x01",
             "line\u2028sep\u2029", "emoji 🚚📦", "العربية", "ключ", "\ud7ff\ue000\uffff", "a" * 5000]
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, id TEXT, topic TEXT, ticket_id TEXT, payload TEXT, "
                 "created_at INTEGER, next_at INTEGER)")
    enc = msgspec.json.Encoder()
    for n in range(2000):
        payload = {"text": rng.choice(texts), "n": rng.randrange(-10**12, 10**12), "nested": {"list": [
            rng.choice(texts) for _ in range(rng.randrange(3))], "none": None, "flag": rng.random() < 0.5}}
        conn.execute(OUTBOX_INSERT, (f"b{n}", "message.created", None, enc.encode(payload), 1, 1))
        conn.execute("INSERT INTO outbox (id, topic, ticket_id, payload, created_at, next_at) VALUES (?,?,?,?,?,?)",
                     (f"s{n}", "message.created", None, enc.encode(payload).decode(), 1, 1))
    rows = conn.execute("SELECT payload, typeof(payload), hex(payload), json_extract(payload, '$.text'), "
                        "length(payload) FROM outbox ORDER BY seq").fetchall()
    for by_bytes, by_str in zip(rows[0::2], rows[1::2]):
        assert by_bytes == by_str
        assert by_bytes[1] == "text"


async def test_a_follow_up_reads_no_identity_origin_and_its_rows_keep_the_tickets(tmp_path: Path) -> None:
    """Whose a commit's rows are (``sqlite._origin``) is read only where a row
    needs it: a new ticket (its rows are the sender identity's original
    contact's) — not a follow-up, whose entries are all its ticket's. After a
    merge, a follow-up from the loser's identity leaves rows its ticket's
    original contact owns, and the unmerge gives them back to it."""
    from tests.store.test_contract import inbound, run

    store = SQLiteStore.in_dir(tmp_path)
    seen: list[str] = []
    try:
        a = await run(store, (await store.journal_append("api", "api", "a", b"{}")).journal_id,
                      inbound("a", sender="a@x.cn"))
        b = await run(store, (await store.journal_append("api", "api", "b", b"{}")).journal_id,
                      inbound("b", sender="b@x.cn", text="other text entirely"))
        await store.merge_contacts(a.contact_id, b.contact_id, "agent:1")
        store._writer.conn.set_trace_callback(seen.append)
        follow = await run(store, (await store.journal_append("api", "api", "b2", b"{}")).journal_id,
                           inbound("b2", sender="b@x.cn", text="and one more thing"))
        store._writer.conn.set_trace_callback(None)
        assert follow.contact_id == a.contact_id and follow.ticket_id in (a.ticket_id, b.ticket_id)
        assert not [sql for sql in seen if "origin_contact_id FROM identities" in sql]
        conn = store._writer.conn
        owner = conn.execute("SELECT origin_contact_id FROM tickets WHERE id = ?", (follow.ticket_id,)).fetchone()[0]
        follow_journal = conn.execute("SELECT id FROM journal WHERE key = 'b2'").fetchone()[0]
        rows = conn.execute("SELECT origin_contact_id FROM timeline WHERE journal_id = ?", (follow_journal,)).fetchall()
        assert rows and {r[0] for r in rows} == {owner}
        await store.unmerge_contact(b.contact_id, "agent:1")
        moved = {r[0] for r in conn.execute("SELECT contact_id FROM timeline WHERE journal_id = ?", (follow_journal,))}
        assert moved == {owner}  # back with the ticket's original contact
    finally:
        await store.close()
