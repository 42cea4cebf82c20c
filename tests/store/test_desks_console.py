"""The help-desk sync's and the console's store operations, on every backend
(the ``store`` fixture: SQLite, and a real Redis)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gateway.store.base import NotFound, StoreError
from tests.store.test_contract import inbound, run

T0 = datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc)


async def test_desk_links_both_ways_first_link_wins_and_seen_comments(store):
    assert await store.desk_link("hd", "T1") is None and await store.desk_ticket_of("hd", "101") is None
    await store.desk_link_set("hd", "T1", "101")
    await store.desk_link_set("hd", "T2", 102, owned=True)  # a desk id may come as a number
    await store.desk_link_set("hd", "T1", "999")  # a ticket already linked keeps its link
    await store.desk_link_set("hd", "T3", "101")  # a desk ticket already linked keeps its ticket
    await store.desk_link_set("other", "T1", "555")  # another desk: its own mapping
    assert await store.desk_link("hd", "T1") == "101" and await store.desk_ticket_of("hd", "101") == "T1"
    assert await store.desk_ticket_of("hd", "102") == "T2" and await store.desk_link("hd", "T3") is None
    assert await store.desk_links("hd") == [("T1", "101"), ("T2", "102")]
    assert await store.desk_links("other") == [("T1", "555")]
    assert await store.desk_seen("hd", []) == set()
    await store.desk_seen_add("hd", "c1", "T1", "omnigate")
    await store.desk_seen_add("hd", 7, "T1", "desk")
    await store.desk_seen_add("hd", "c1", "T1", "desk")  # known already: nothing changes
    assert await store.desk_seen("hd", ["c1", "7", "c9"]) == {"c1", "7"}
    assert await store.desk_seen("other", ["c1"]) == set()


async def test_console_sessions_live_until_ended_or_expired(store):
    value, csrf = await store.session_create("ag1", "agent", None, "boot-digest", T0, T0 + timedelta(hours=8))
    s = await store.session_get(value, T0 + timedelta(hours=1))
    assert (s.agent_id, s.role, s.token_id, s.bootstrap, s.csrf) == ("ag1", "agent", None, "boot-digest", csrf)
    assert s.expires_at == T0 + timedelta(hours=8)
    assert await store.session_get(value, T0 + timedelta(hours=8)) is None  # expired
    assert await store.session_get("not-a-session", T0) is None
    other, _ = await store.session_create("ag2", "admin", None, None, T0, T0 + timedelta(hours=8))
    await store.session_end(other, T0 + timedelta(minutes=5))
    assert await store.session_get(other, T0 + timedelta(minutes=6)) is None
    assert await store.session_get(value, T0 + timedelta(minutes=6)) is not None  # the other one lives on


async def test_canned_replies_unique_names_rename_seed_and_delete(store):
    a = await store.canned_put("refund", "Your refund of {order} is on its way", "en", "admin", T0)
    b = await store.canned_put("greeting", "您好 {contact_name}", None, "admin", T0)
    assert (a.name, a.language, a.created_by, a.created_at) == ("refund", "en", "admin", T0)
    assert b.language is None
    assert [c.name for c in await store.canned_list()] == ["greeting", "refund"]  # by name
    assert [c.id for c in await store.canned_list("REFUND")] == [a.id]  # in the name or the text, any case
    assert [c.id for c in await store.canned_list("您好")] == [b.id]
    assert len(await store.canned_list(limit=1)) == 1
    with pytest.raises(StoreError):
        await store.canned_put("refund", "again", None, "admin", T0)
    assert await store.canned_put("refund", "seed", None, "seed", T0, keep_existing=True) is None
    later = T0 + timedelta(minutes=1)
    renamed = await store.canned_put("refund-en", "Refund sent", "en", "admin", later, canned_id=a.id)
    assert (renamed.id, renamed.name, renamed.text, renamed.updated_at, renamed.created_at) == \
        (a.id, "refund-en", "Refund sent", later, T0)
    assert (await store.canned_put("refund", "the old name is free", None, "admin", later)).name == "refund"
    with pytest.raises(NotFound):
        await store.canned_put("x", "y", None, "admin", later, canned_id="missing")
    await store.canned_delete(b.id, "admin", later)
    assert await store.canned_get(b.id) is None
    with pytest.raises(NotFound):
        await store.canned_delete(b.id, "admin", later)
    assert [c.name for c in await store.canned_list()] == ["refund", "refund-en"]


async def test_timeline_tail_follows_the_seq_with_the_tickets_facts(store):
    assert await store.timeline_last_seq() == 0 and await store.timeline_tail(0) == []
    await store.journal_append("api", "api", "k1", b"{}")
    first = await run(store, (await store.journal_append("api", "api", "m1", b"{}")).journal_id, inbound("m1"))
    start = await store.timeline_last_seq()
    await run(store, (await store.journal_append("api", "api", "m2", b"{}")).journal_id,
              inbound("m2", text="and my invoice?"))
    await run(store, (await store.journal_append("api", "api", "m3", b"{}")).journal_id,
              inbound("m3", sender="b@example.cn", text="a new question"))
    tail = await store.timeline_tail(start)
    assert [r.entry.text for r in tail if r.entry.kind == "message_in"] == ["and my invoice?", "a new question"]
    assert [r.seq for r in tail] == sorted(r.seq for r in tail) and all(r.seq > start for r in tail)
    assert tail[-1].seq == await store.timeline_last_seq()
    mine = next(r for r in tail if r.entry.text == "and my invoice?")
    assert (mine.ticket_number, mine.ticket_status) == (first.ticket_number, "new")
    assert [r.seq for r in await store.timeline_tail(start, limit=1)] == [tail[0].seq]
    assert await store.timeline_tail(tail[-1].seq) == []
