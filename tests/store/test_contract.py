"""The store contract: what every backend must do (DESIGN.md, Store)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.store.base import Conflict, StoreError
from routing.model import Identity, Inbound, Sender, ThreadHints, utcnow
from routing.pipeline import Settings, decide, lookup


def inbound(ext: str, sender: str = "a@example.cn", text: str = "where is my refund?", **kw) -> Inbound:
    return Inbound(channel="api", account="api", external_id=ext, kind="message",
                   sender=Sender("email", sender, "A"), text=text, **kw)


async def run(store, entry_id: str, msg: Inbound, settings: Settings | None = None, now=None):
    settings = settings or Settings()
    look = lookup(msg, settings)
    snap = await store.snapshot(look, now or utcnow())
    return await store.commit(decide(msg, entry_id, snap, settings, look))


async def test_journal_append_is_idempotent_by_key(store):
    a = await store.journal_append("api", "api", "k1", b"one")
    b = await store.journal_append("api", "api", "k1", b"two")
    c = await store.journal_append("api", "other", "k1", b"three")
    assert a.created and not b.created and c.created
    assert a.journal_id == b.journal_id != c.journal_id
    entry = await store.journal_get(a.journal_id, with_raw=True)
    assert entry.raw == b"one" and entry.status == "pending" and entry.size == 3


_ACK_THEN_DIE = """
import asyncio, os, signal, sys
from gateway.store.sqlite import SQLiteStore

async def main():
    s = SQLiteStore.in_dir(sys.argv[1])
    acked = 0

    async def append(i):
        nonlocal acked
        r = await s.journal_append("api", "api", f"k{i}", b"payload %d" % i)
        print("ACK", r.journal_id, flush=True)  # the acknowledgement
        acked += 1
        if acked == 100:  # more appends still queued for the writer: no close, no flush, no goodbye
            os.kill(os.getpid(), signal.SIGKILL)

    await asyncio.gather(*(append(i) for i in range(400)))

asyncio.run(main())
"""


def test_append_is_durable_when_acknowledged(tmp_path):
    """A writer process killed (SIGKILL) right after acknowledging appends, with
    more in flight: every acknowledged entry is there when the store reopens."""
    import signal
    import subprocess
    import sys

    from gateway.store.sqlite import SQLiteStore

    proc = subprocess.run([sys.executable, "-c", _ACK_THEN_DIE, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    acked = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ACK ")]
    assert len(acked) >= 100

    async def reopen():
        s = SQLiteStore.in_dir(tmp_path)
        try:
            return {e.id: e for e in await s.journal_list(limit=1000, with_raw=True)}
        finally:
            await s.close()

    stored = asyncio.run(reopen())
    assert set(acked) <= set(stored)
    assert all(stored[j].raw.startswith(b"payload ") for j in acked)


async def test_concurrent_appends_share_group_commits(tmp_path):
    """A SQLite backend property (Redis shares fsyncs by itself: one per event-loop turn)."""
    from gateway.store.sqlite import SQLiteStore

    store = SQLiteStore.in_dir(tmp_path)
    before = store.group_commit_stats
    results = await asyncio.gather(*(store.journal_append("api", "api", f"g{i}", b"x") for i in range(200)))
    batches, writes = (a - b for a, b in zip(store.group_commit_stats, before))
    assert len({r.journal_id for r in results}) == 200
    assert writes == 200 and batches < writes  # several requests per transaction
    await store.close()


async def test_claim_fail_requeue(store):
    ids = [(await store.journal_append("api", "api", f"c{i}", b"x")).journal_id for i in range(3)]
    pending = await store.claim_pending(0, 10)
    assert [e.id for e in pending] == ids and all(e.raw == b"x" for e in pending)
    await store.journal_fail(ids[1], "bad payload: no sender")
    assert [e.id for e in await store.claim_pending(0, 10)] == [ids[0], ids[2]]
    failed = await store.journal_list(status="failed")
    assert [(e.id, e.error) for e in failed] == [(ids[1], "bad payload: no sender")]
    assert await store.journal_requeue([ids[1]]) == 1
    assert (await store.journal_get(ids[1])).status == "pending"
    assert (await store.journal_counts())["pending"] == 3


async def test_commit_creates_contact_ticket_and_timeline(store):
    j = (await store.journal_append("api", "api", "m1", b"{}")).journal_id
    r = await run(store, j, inbound("m1"))
    assert r.outcome == "processed" and r.ticket_number == 1000
    ticket = await store.get_ticket(r.ticket_id)
    contact = await store.get_contact(r.contact_id)
    assert ticket.contact_id == contact.id and ticket.status == "new" and ticket.channels == ["api"]
    assert contact.identities == [Identity("email", "a@example.cn")]
    page = await store.timeline(contact_id=contact.id)
    assert [e.kind for e in page.items] == ["message_in"]
    assert page.items[0].data["reasons"]["threading"]["by"] == "new_ticket"
    entry = await store.journal_get(j)
    assert (entry.status, entry.ticket_id, entry.contact_id) == ("processed", ticket.id, contact.id)


async def test_replayed_commit_changes_nothing(store):
    j = (await store.journal_append("api", "api", "m1", b"{}")).journal_id
    first = await run(store, j, inbound("m1"))
    counts = await store.counts()
    again = await run(store, j, inbound("m1"))
    assert (again.outcome, again.ticket_id) == ("processed", first.ticket_id)
    assert await store.counts() == counts


async def test_stale_snapshot_conflicts(store):
    settings = Settings()
    msg = inbound("m2")
    look = lookup(msg, settings)
    j0 = (await store.journal_append("api", "api", "m1", b"{}")).journal_id
    await run(store, j0, inbound("m1"))
    stale = await store.snapshot(look, utcnow())
    await run(store, (await store.journal_append("api", "api", "m3", b"{}")).journal_id, inbound("m3", text="another"))
    j = (await store.journal_append("api", "api", "m2", b"{}")).journal_id
    with pytest.raises(Conflict):
        await store.commit(decide(msg, j, stale, settings, look))
    assert (await store.journal_get(j)).status == "pending"  # nothing of the failed commit stayed


async def test_two_new_contacts_for_one_identity_conflict(store):
    settings = Settings()
    a, b = inbound("x1"), inbound("x2", text="second message")
    snaps = [await store.snapshot(lookup(m, settings), utcnow()) for m in (a, b)]
    ja = (await store.journal_append("api", "api", "x1", b"{}")).journal_id
    jb = (await store.journal_append("api", "api", "x2", b"{}")).journal_id
    await store.commit(decide(a, ja, snaps[0], settings))
    with pytest.raises(Conflict):
        await store.commit(decide(b, jb, snaps[1], settings))


async def test_merge_moves_timeline_and_unmerge_restores(store):
    ja = (await store.journal_append("api", "api", "a", b"{}")).journal_id
    jb = (await store.journal_append("api", "api", "b", b"{}")).journal_id
    ra = await run(store, ja, inbound("a", sender="a@x.cn"))
    rb = await run(store, jb, inbound("b", sender="b@x.cn", text="other text entirely"))
    merged = await store.merge_contacts(ra.contact_id, rb.contact_id, "agent:1", "same person")
    assert {i.value for i in merged.identities} == {"a@x.cn", "b@x.cn"}
    loser = await store.get_contact(rb.contact_id)
    assert loser.merged_into == ra.contact_id
    items = (await store.timeline(contact_id=ra.contact_id)).items
    assert sum(e.kind == "message_in" for e in items) == 2  # moved, not copied
    assert {e.external_id for e in items if e.kind == "message_in"} == {"a", "b"}
    assert (await store.get_ticket(rb.ticket_id)).contact_id == ra.contact_id
    # a merged contact's timeline is its winner's
    assert [e.id for e in (await store.timeline(contact_id=rb.contact_id)).items] == [e.id for e in items]
    with pytest.raises(StoreError):
        await store.merge_contacts(ra.contact_id, rb.contact_id, "agent:1")
    back = await store.unmerge_contact(rb.contact_id, "agent:1", "not the same person")
    assert back.merged_into is None and [i.value for i in back.identities] == ["b@x.cn"]
    b_items = (await store.timeline(contact_id=rb.contact_id)).items
    assert [e.external_id for e in b_items if e.kind == "message_in"] == ["b"]
    assert (await store.get_ticket(rb.ticket_id)).contact_id == rb.contact_id
    a_items = (await store.timeline(contact_id=ra.contact_id)).items
    assert [e.external_id for e in a_items if e.kind == "message_in"] == ["a"]


async def test_timeline_pages_in_order(store):
    for n in range(7):
        j = (await store.journal_append("api", "api", f"p{n}", b"{}")).journal_id
        await run(store, j, inbound(f"p{n}", text=f"message number {n}", sent_at=utcnow() + timedelta(seconds=n)))
    contact_id = (await store.journal_list(limit=1))[0].contact_id
    seen, cursor = [], None
    while True:
        page = await store.timeline(contact_id=contact_id, cursor=cursor, limit=3)
        seen += [e.external_id for e in page.items]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == [f"p{n}" for n in range(7)]


def mail(ext: str, sender: str, **kw) -> Inbound:
    return Inbound(channel="email", account="support", external_id=ext, kind="message",
                   sender=Sender("email", sender), text=f"mail {ext}", **kw)


async def test_thread_refs_and_state(store):
    j = (await store.journal_append("email", "support", "r1", b"{}")).journal_id
    r = await run(store, j, mail("r1", "a@example.cn", thread=ThreadHints(message_id="abc@x"),
                                 recipients=["support@corp.example", "Colleague@x.cn"],
                                 meta={"envelope_to": "support@corp.example"}))
    # the Cc of the first mail is a participant: its answer by headers joins the ticket
    j2 = (await store.journal_append("email", "support", "r2", b"{}")).journal_id
    r2 = await run(store, j2, mail("r2", "colleague@x.cn", thread=ThreadHints(in_reply_to="abc@x")))
    assert r2.ticket_id == r.ticket_id
    # anyone else quoting the same Message-ID opens a ticket of their own
    j3 = (await store.journal_append("email", "support", "r3", b"{}")).journal_id
    r3 = await run(store, j3, mail("r3", "someone-else@x.cn", thread=ThreadHints(in_reply_to="abc@x")))
    assert r3.ticket_id != r.ticket_id
    ticket = await store.get_ticket(r.ticket_id)
    assert ticket.reply_to.to.value == "a@example.cn"  # neither answer moved the reply address
    assert await store.state_get("imap:x") is None
    await store.state_set("imap:x", "1:42")
    await store.state_set("imap:x", "1:43")
    assert await store.state_get("imap:x") == "1:43"


async def test_redeliveries_inside_one_group_commit_get_the_first_entry(store):
    results = await asyncio.gather(*(store.journal_append("api", "api", f"k{i % 25}", b"x") for i in range(100)))
    assert sum(r.created for r in results) == 25
    by_key: dict[str, set] = {}
    for i, r in enumerate(results):
        by_key.setdefault(f"k{i % 25}", set()).add(r.journal_id)
    assert all(len(ids) == 1 for ids in by_key.values())
    assert (await store.journal_counts())["pending"] == 25
