"""Event snapshots (gateway/store/sqlite_webhooks.py) as their fast paths
write them are what the plain ones write: oracle tests."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import msgspec

from gateway.store import sqlite_webhooks
from gateway.store.sqlite import SQLiteStore, _insert_timeline, dt
from gateway.store.sqlite_webhooks import _ISO_FAST_END, _enc, _iso, message_snapshot, written_message_snapshot
from routing.model import Attachment, Inbound, Sender, TimelineEntry, new_id, utcnow
from routing.pipeline import Settings, decide, lookup


def test_event_times_are_the_datetimes_isoformat_for_every_millisecond() -> None:
    """``_iso`` (the second's text cached, the milliseconds looked up) writes
    what ``dt(v).isoformat()`` writes: whole seconds without a fraction, years
    before 1000, before 1970, around the fast range's end and far beyond it
    (where the float ``v / 1000`` shows in the microseconds: kept as it was)."""
    rng = random.Random(5)
    values = [0, 1, 999, 1000, 1001, -1, -999, -1000, -1001, _ISO_FAST_END - 1, _ISO_FAST_END,
              _ISO_FAST_END + 1, -62_135_596_800_000, 253_402_300_799_999, 1_764_558_001_000]
    for lo, hi in ((0, 2_000_000_000_000), (1_700_000_000_000, 1_800_000_000_000), (-62_135_596_800_000, 0),
                   (_ISO_FAST_END - 10**9, _ISO_FAST_END + 10**9), (0, 253_402_300_799_999)):
        values += [rng.randrange(lo, hi) for _ in range(20_000)]
        values += [rng.randrange(lo // 1000, hi // 1000) * 1000 for _ in range(2_000)]  # whole seconds
    for v in values:
        assert _iso(v) == dt(v).isoformat(), v
    assert _iso(None) is None


def _random_entry(rng: random.Random, n: int) -> TimelineEntry:
    texts = ["", "where is my refund?", "您好，我的订单还没有到", "line\nbreak \"quoted\" \\ tab\t\x01", "emoji 🚚 \u2028"]
    data: dict = {}
    for key, values in (("author", ["agent-1", None]), ("auto", [True, False, "auto_reply"]), ("public", [True]),
                        ("delivery", [{"status": "sent", "at": datetime(2026, 3, 2, 2, 0, 1, 5, tzinfo=timezone.utc),
                                       "attempts": (1, 2)}, {}]),
                        ("sent_at", [datetime(2026, 3, 2, 10, 0, tzinfo=timezone(timedelta(hours=8))).isoformat(),
                                     datetime(2025, 1, 1, tzinfo=timezone.utc)]),
                        ("text_hash", ["h" * 16]), ("reasons", [{"thread": "window"}]),
                        ("call", [{"direction": "outbound"}, {"status": "missed"}])):
        if rng.random() < 0.5:
            data[key] = rng.choice(values)
    attachments = [Attachment(name=rng.choice([None, "发票.pdf", "a.png"]), content_type="application/pdf",
                              size=rng.randrange(0, 10**7), sha256=f"{rng.getrandbits(256):064x}",
                              storage_ref=rng.choice([None, "sha256/ab"]), inline=rng.random() < 0.5)
                   for _ in range(rng.choice([0, 0, 1, 3]))]
    tz = timezone(timedelta(minutes=rng.choice([0, 480, -300, 330])))
    at = datetime(2026, 3, 2, tzinfo=timezone.utc) + timedelta(microseconds=rng.randrange(-10**13, 10**13))
    return TimelineEntry(
        id=new_id(), contact_id=f"c{n % 3}", kind=rng.choice(["message_in", "message_out", "note", "call", "rule"]),
        at=at.astimezone(tz), ticket_id=rng.choice([None, "t1"]), channel=rng.choice([None, "api", "email"]),
        journal_id=rng.choice([None, "j1"]), external_id=rng.choice([None, f"m{n}"]),
        subject=rng.choice([None, "", "订单查询"]), text=rng.choice(texts + [None]), attachments=attachments, data=data,
        edited_at=rng.choice([None, at]))


async def test_a_message_snapshot_made_from_the_written_entry_is_the_one_read_back(tmp_path) -> None:
    """An entry the commit has just inserted (``_insert_timeline``, as
    ``_apply_commit`` writes it) gives, from the entry itself, the JSON that
    reading its row back gives: random entries with attachments, data keys the
    snapshot copies (datetimes and tuples among them), every kind (a call's
    direction may live in its data: it is read back), times in any offset."""
    store = SQLiteStore.in_dir(tmp_path)
    rng = random.Random(3)
    entries = [_random_entry(rng, n) for n in range(400)]

    def check(conn) -> int:
        made = 0
        for e in entries:
            _insert_timeline(conn, e)
            fast = written_message_snapshot(e)
            if fast is None:
                assert e.kind not in ("message_in", "message_out", "note") and "call" in e.data
                continue
            assert _enc.encode(fast) == _enc.encode(message_snapshot(conn, e.id)), e
            made += 1
        return made

    try:
        assert await store._write(check) > 300
    finally:
        await store.close()


def inbound(ext: str, **kw) -> Inbound:
    return Inbound(channel="api", account="api", external_id=ext, kind="message",
                   sender=Sender("email", "a@example.cn", "A"), **kw)


async def test_committed_messages_carry_the_snapshot_of_their_row_without_reading_it(tmp_path, monkeypatch) -> None:
    """Through the store's commit: each ``message.created`` carries what
    reading its timeline row gives, and the row was not read for it (an
    edit's ``message.edited`` still is: that row changed)."""
    reads: list[str] = []
    read = sqlite_webhooks.message_snapshot
    monkeypatch.setattr(sqlite_webhooks, "message_snapshot", lambda conn, tid: reads.append(tid) or read(conn, tid))
    store = SQLiteStore.in_dir(tmp_path)
    settings = Settings()
    pdf = Attachment(name="发票.pdf", content_type="application/pdf", size=3, sha256="0" * 64)
    messages = [inbound("m1", text="您好", subject="订单", attachments=[pdf]),
                inbound("m2", text="and my invoice?", sent_at=datetime(2026, 3, 2, 9, tzinfo=timezone(timedelta(hours=8)))),
                inbound("m3", text="sent from the app", meta={"direction": "outbound", "agent": "agent-7"}),
                inbound("m4", text="where is my refund, edited", edits="m2")]
    try:
        for m in messages:
            entry = (await store.journal_append("api", "api", m.external_id, b"{}")).journal_id
            look = lookup(m, settings)
            await store.commit(decide(m, entry, await store.snapshot(look, utcnow()), settings, look))

        def outbox(conn) -> list[tuple[str, dict, dict | None]]:
            rows = conn.execute("SELECT topic, payload FROM outbox ORDER BY seq").fetchall()
            return [(t, msgspec.json.decode(p)["message"], message_snapshot(conn, msgspec.json.decode(p)["message"]["id"]))
                    for t, p in rows if t.startswith("message.")]

        events = await store._read(outbox)
    finally:
        await store.close()
    created = [(snap, now) for topic, snap, now in events if topic == "message.created"]
    assert [snap["external_id"] for snap, _ in created] == ["m1", "m2", "m3"]
    assert len(reads) == 1  # the edit's: the created ones were made from their entries
    for snap, now in created[:1] + created[2:]:  # m2 was edited since
        assert snap == now and list(snap) == list(now)
    assert created[0][0]["attachments"] == [{"name": "发票.pdf", "content_type": "application/pdf", "size": 3,
                                             "sha256": "0" * 64}]
    assert created[2][0]["direction"] == "outbound" and created[2][0]["author"] == "agent-7"
    edited = next(snap for topic, snap, _ in events if topic == "message.edited")
    assert edited["text"] == "where is my refund, edited" and edited["edited_at"] is not None
