"""Assignment and SLA in the pipeline commit's own transaction (``sync_in_commit``)."""

from __future__ import annotations

from tests.assignment.conftest import assignee, entries, make_ticket


async def test_a_commit_assigns_and_times_the_ticket_in_its_own_transaction(sqlite_store, clock):
    store = sqlite_store
    store.sync_in_commit(clock)
    before = store.group_commit_stats
    t = await make_ticket(store, team="billing", skills={"billing": 3})
    batches, writes = (a - b for a, b in zip(store.group_commit_stats, before))
    assert (batches, writes) == (1, 1)  # one write: the message, its assignment and its SLA
    assert await assignee(store, t) == "a-li"
    [entry] = await entries(store, t, "assignment")
    assert entry.text.startswith("assigned to a-li")
    ticket = await store.get_ticket(t)
    assert ticket.sla is not None and ticket.sla.policy == "standard" and ticket.sla.first_response_due is not None


async def test_without_it_the_commit_leaves_assignment_to_the_hook(sqlite_store):
    store = sqlite_store
    t = await make_ticket(store, team="billing", skills={"billing": 3})
    assert await assignee(store, t) is None


async def test_the_sweep_skips_tickets_synced_in_their_commit_but_not_later_changes(sqlite_store, clock):
    store = sqlite_store
    store.sync_in_commit(clock)
    synced = await make_ticket(store, team="billing")
    changed, cursor = await store.changed_tickets(None)
    assert synced not in changed and cursor is not None  # nothing owed, the cursor still moves
    other = await make_ticket(store, team="support")
    await store.set_status(other, "pending", clock())  # a change after the commit: owed to the sweep
    changed, _ = await store.changed_tickets(cursor)
    assert changed == [other]


async def test_a_sync_that_changes_nothing_reads_the_ticket_and_its_desk_link_once_and_writes_no_sla(
        sqlite_store, clock):
    store = sqlite_store
    store.sync_in_commit(clock)
    t = await make_ticket(store, team="billing", skills={"billing": 3})  # assigned and timed in its commit
    seen: list[str] = []
    conn = store._writer.conn
    conn.set_trace_callback(seen.append)
    try:
        await store.ticket_sync([t], clock())  # what a follow-up's sync does: nothing changes
    finally:
        conn.set_trace_callback(None)
    assert sum("FROM tickets t LEFT JOIN contacts" in sql for sql in seen) == 1
    assert sum("FROM desk_links" in sql for sql in seen) == 1
    assert not [sql for sql in seen if sql.startswith("UPDATE tickets SET sla")]  # the same due times
    clock.advance(minutes=5)
    seen.clear()
    conn.set_trace_callback(seen.append)
    try:
        await store.set_status(t, "pending", clock())  # a change that moves the SLA: written
    finally:
        conn.set_trace_callback(None)
    assert [sql for sql in seen if sql.startswith("UPDATE tickets SET sla")]
    assert (await store.get_ticket(t)).sla.paused_at is not None
    assert await assignee(store, t) == "a-li"

