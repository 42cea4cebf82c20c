"""Assignment and SLA in the pipeline commit's own transaction (``sync_in_commit``)."""

from __future__ import annotations

import asyncio

from gateway.store.base import Conflict
from gateway.store.sqlite_sla import Tx
from routing.model import Identity, ReplyTarget, new_id
from routing.state import Commit, NewContact, NewTicket
from tests.assignment.conftest import T0, assignee, entries, make_ticket


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



def _new_ticket_commit(contact_id: str | None = None, contact_version: int | None = None,
                       skills: dict[str, int] | None = None) -> Commit:
    """A new billing ticket's commit, by default for a skill nobody has (its sync queues it: the
    ticket's row is not touched, so its stamp is the commit's); with ``contact_id`` (a contact
    that does not exist) it conflicts."""
    cid, tid = contact_id or new_id(), new_id()
    return Commit(
        journal_id=new_id(), outcome="processed", message_key=("email", "acct", new_id()), contact_id=cid,
        new_contact=NewContact(cid, "Customer", T0) if contact_id is None else None,
        contact_expect_version=contact_version, ticket_id=tid,
        new_ticket=NewTicket(id=tid, subject="help", channel="email", created_at=T0,
                             reply_to=ReplyTarget("email", "acct", Identity("email", f"{cid.lower()}@example.com")),
                             team="billing", skills=skills or {"billing": 9}))


async def test_a_sync_that_fails_when_its_commit_runs_again_is_owed_to_the_sweep(sqlite_store, clock, monkeypatch):
    """Pipeline commits queued together share one savepoint; when one conflicts,
    the others run again one savepoint each. A sync that succeeded in the first
    run and fails in the second must leave its ticket to the sweep."""
    store = sqlite_store
    store.sync_in_commit(clock)
    real, calls = Tx.sla_sync, []

    def sla_sync(self, t):
        calls.append(t.id)
        if len(calls) > 1:
            raise RuntimeError("the second run's sync fails")
        return real(self, t)

    monkeypatch.setattr(Tx, "sla_sync", sla_sync)
    good, stale = _new_ticket_commit(), _new_ticket_commit(contact_id="gone", contact_version=1)
    before = store.group_commit_stats[0]
    out = await asyncio.gather(store.commit(good), store.commit(stale), return_exceptions=True)
    assert store.group_commit_stats[0] == before + 1  # one group: the two shared a savepoint
    assert out[0].outcome == "processed" and isinstance(out[1], Conflict)
    assert calls == [good.ticket_id, good.ticket_id]  # synced, then run again and failed
    queued = store._writer.conn.execute("SELECT count(*) FROM assign_queue WHERE ticket_id = ?",
                                        (good.ticket_id,)).fetchone()[0]
    assert queued == 0  # the failed sync rolled back alone
    changed, _ = await store.changed_tickets(None)
    assert changed == [good.ticket_id]  # owed to the sweep


async def test_a_take_in_a_run_rolled_back_leaves_the_agent_cache_right(sqlite_store, clock):
    """A commit whose sync takes an agent, a stale commit, another commit for the
    same agent, all in one run: the run is rolled back and run again, and the
    last commit sees the agent's load as the held rows give it (one ticket), not
    with the rolled-back take counted as well."""
    store = sqlite_store
    store.sync_in_commit(clock)
    first, stale, second = (_new_ticket_commit(skills={"billing": 3}),
                            _new_ticket_commit(contact_id="gone", contact_version=1),
                            _new_ticket_commit(skills={"billing": 3}))
    before = store.group_commit_stats[0]
    out = await asyncio.gather(*(store.commit(c) for c in (first, stale, second)), return_exceptions=True)
    assert store.group_commit_stats[0] == before + 1
    assert isinstance(out[1], Conflict)
    # a-li takes two emails and only she has billing 3: a cache that still counted
    # the rolled-back take would find her full and queue the second ticket
    assert [await assignee(store, c.ticket_id) for c in (first, second)] == ["a-li", "a-li"]


async def test_commits_sharing_a_savepoint_sync_without_one_of_their_own(sqlite_store, clock):
    """In a run of commits under one savepoint the sync opens none (a failure
    replays the run, below); a commit alone in its savepoint still does."""
    store = sqlite_store
    store.sync_in_commit(clock)
    seen: list[str] = []
    conn = store._writer.conn
    conn.set_trace_callback(seen.append)
    try:
        first, second = _new_ticket_commit(skills={"billing": 3}), _new_ticket_commit(skills={"billing": 3})
        await asyncio.gather(store.commit(first), store.commit(second))
        shared = list(seen)
        seen.clear()
        alone = _new_ticket_commit(skills={"billing": 3})
        await store.commit(alone)
    finally:
        conn.set_trace_callback(None)
    assert shared.count("SAVEPOINT run") == 1 and "SAVEPOINT sync" not in shared
    assert seen.count("SAVEPOINT w") == 1 and seen.count("SAVEPOINT sync") == 1
    assert [await assignee(store, c.ticket_id) for c in (first, second)] == ["a-li", "a-li"]
    assert conn.execute("SELECT count(*) FROM sla_clocks WHERE ticket_id IN (?, ?, ?)",
                        (first.ticket_id, second.ticket_id, alone.ticket_id)).fetchone()[0] == 3  # all synced


async def test_a_sync_failing_in_a_shared_run_is_rolled_back_alone(sqlite_store, clock, monkeypatch, caplog):
    """The second of three commits sharing a savepoint has a sync that fails: the
    run is run again one savepoint per commit, every message is committed, only
    that sync is undone (its ticket neither assigned nor timed, owed to the
    sweep), the others are synced — as when each sync had its own savepoint."""
    store = sqlite_store
    store.sync_in_commit(clock)
    commits = [_new_ticket_commit(skills={"billing": 3}) for _ in range(3)]
    real, calls = Tx.sla_sync, []

    def sla_sync(self, t):
        calls.append(t.id)
        if t.id == commits[1].ticket_id:
            raise RuntimeError("this ticket's sync fails")
        return real(self, t)

    monkeypatch.setattr(Tx, "sla_sync", sla_sync)
    before = store.group_commit_stats[0]
    out = await asyncio.gather(*(store.commit(c) for c in commits))
    assert store.group_commit_stats[0] == before + 1
    assert [o.outcome for o in out] == ["processed"] * 3
    # first pass: the first synced, the second failed; second pass: each again
    assert calls == [commits[0].ticket_id, commits[1].ticket_id, *(c.ticket_id for c in commits)]
    conn = store._writer.conn
    assert [await assignee(store, c.ticket_id) for c in commits] == ["a-li", None, "a-li"]
    timed = [conn.execute("SELECT count(*) FROM sla_clocks WHERE ticket_id = ?", (c.ticket_id,)).fetchone()[0]
             for c in commits]
    assert timed == [1, 0, 1]
    assert conn.execute("SELECT count(*) FROM tickets WHERE id IN (?, ?, ?)",
                        tuple(c.ticket_id for c in commits)).fetchone()[0] == 3
    changed, _ = await store.changed_tickets(None)
    assert changed == [commits[1].ticket_id]  # owed to the sweep
