"""assign_next, queues, presence and status through the real SQLite store."""

from __future__ import annotations

import asyncio

from tests.assignment.conftest import T0, assignee, entries, journal_id, make_ticket


async def test_concurrent_assign_next_never_exceeds_capacity(store):
    # team billing: a-li email 2, a-han email 2 → 4 places for 40 tickets decided at once
    tickets = [await make_ticket(store, team="billing") for _ in range(40)]
    decisions = await asyncio.gather(*(store.assign_next(t, T0) for t in tickets))
    agents = {a.id: a for a in await store.list_agents()}
    for agent in agents.values():
        assert agent.load.get("email", 0) <= agent.capacity.get("email", 0)
    # load only grows in this test, so the final load bounds every intermediate one
    assert agents["a-li"].load == {"email": 2} and agents["a-han"].load == {"email": 2}
    assert sum(d.agent is not None for d in decisions) == 4
    queued = [d for d in decisions if d.agent is None]
    assert len(queued) == 36
    assert "at capacity email 2/2" in str(queued[-1].considered)


async def test_least_loaded_spreads_work_evenly(store):
    tickets = [await make_ticket(store, team="chat") for _ in range(15)]
    for t in tickets:
        await store.assign_next(t, T0)
    loads = {a.id: a.load.get("email", 0) for a in await store.list_agents() if a.id.startswith("c-")}
    assert loads == {"c-1": 5, "c-2": 5, "c-3": 5}


async def test_assignment_reason_is_on_the_timeline(store):
    t = await make_ticket(store, team="billing", skills={"billing": 3})
    decision = await store.assign_next(t, T0)
    assert decision.agent == "a-li"
    [entry] = await entries(store, t, "assignment")
    assert entry.text.startswith("assigned to a-li: least loaded")
    assert "a-han lacks billing≥3 (has 2)" in entry.text
    considered = {c["agent"]: c["reasons"] for c in entry.data["considered"]}
    assert considered == {"a-han": [{"code": "skill", "text": "lacks billing≥3 (has 2)"}], "a-li": []}


async def test_solving_frees_capacity_and_drains_the_queue_at_once(store, clock):
    first = await make_ticket(store, team="support")
    for _ in range(2):
        await store.assign_next(await make_ticket(store, team="support"), T0)
    await store.assign_next(first, T0)  # a-wang: email 3/3 now
    waiting = await make_ticket(store, team="support")
    assert (await store.assign_next(waiting, T0)).agent is None
    [queued] = await entries(store, waiting, "assignment")
    assert queued.text.startswith("queued in team support") and "at capacity email 3/3" in queued.text

    assert await store.set_status(first, "solved", clock.advance(minutes=5))
    assert await assignee(store, waiting) == "a-wang"
    ticket = await store.get_ticket(first)
    assert ticket.status == "solved" and ticket.solved_at == clock.now and ticket.assignee == "a-wang"
    [_, from_queue] = await entries(store, waiting, "assignment")
    assert "from the queue after 5m" in from_queue.text


async def test_agent_coming_online_takes_the_queue(store, clock):
    await store.set_presence("a-wang", "offline", T0)
    t = await make_ticket(store, team="support")
    assert (await store.assign_next(t, T0)).agent is None
    await store.set_presence("a-wang", "online", clock.advance(minutes=1))
    assert await assignee(store, t) == "a-wang"


async def test_going_offline_can_return_chats_to_the_queue(store, clock):
    chats = [await make_ticket(store, channel="webchat", team="billing") for _ in range(2)]
    for t in chats:
        await store.assign_next(t, T0)
    holders = {t: await assignee(store, t) for t in chats}
    assert set(holders.values()) == {"a-li", "a-han"}  # least loaded: one each
    returned = await store.set_presence(holders[chats[0]], "offline", clock.advance(minutes=1), return_chats=True)
    assert returned == [chats[0]]
    assert await assignee(store, chats[0]) == holders[chats[1]]  # the other billing agent, chat 2/2 now
    [*_, back] = await entries(store, chats[0], "assignment")
    assert "from the queue" not in back.text and back.data["reason"]["code"] == "least_loaded"


async def test_a_returning_contact_gets_the_agent_who_served_them_last(store, clock):
    first = await make_ticket(store, team="chat")
    assert (await store.assign_next(first, T0)).agent == "c-1"
    for _ in range(3):  # c-2, c-3, then c-1 again: c-1 is the most loaded now
        await store.assign_next(await make_ticket(store, team="chat"), clock.advance(minutes=1))
    contact = (await store.get_ticket(first)).contact_id
    second = await make_ticket(store, team="chat", contact_id=contact, contact_version=1)
    decision = await store.assign_next(second, clock.advance(minutes=1))
    assert decision.agent == "c-1" and decision.reason.code == "sticky"


async def test_assign_next_again_on_a_held_ticket_keeps_one_place(store, clock):
    t = await make_ticket(store, team="support")
    assert (await store.assign_next(t, T0)).agent == "a-wang"
    again = await store.assign_next(t, clock.advance(minutes=1))
    assert again.agent == "a-wang" and again.reason.code == "sticky"
    [wang] = [a for a in await store.list_agents() if a.id == "a-wang"]
    assert wang.load == {"email": 1} and wang.tickets == [t]


async def test_assign_next_again_on_a_queued_ticket_keeps_its_place_and_age(store, clock):
    await store.set_presence("a-wang", "offline", T0)
    t = await make_ticket(store, team="support")
    assert (await store.assign_next(t, T0)).agent is None
    assert (await store.assign_next(t, clock.advance(minutes=2))).agent is None
    [queued] = await entries(store, t, "assignment")  # queued once; the second attempt refreshed the reason
    assert queued.text.startswith("queued in team support")
    await store.set_presence("a-wang", "online", clock.advance(minutes=3))
    assert await assignee(store, t) == "a-wang"
    [_, taken] = await entries(store, t, "assignment")
    assert "from the queue after 5m" in taken.text  # waited since it was first queued


async def test_invalid_status_transition_is_refused(store, clock):
    from gateway.store.base import InvalidTransition

    t = await make_ticket(store, team="support")
    await store.set_status(t, "closed", T0)
    try:
        await store.set_status(t, "open", T0)
    except InvalidTransition as exc:
        assert "closed" in str(exc)
    else:
        raise AssertionError("closed → open must be refused")


async def test_ticket_sync_keeps_the_assignee_and_reassigns_on_team_change(store, clock):
    t = await make_ticket(store, team="billing")
    [decision] = await store.ticket_sync([t], T0)
    first = decision.agent
    assert first in ("a-li", "a-han")
    assert await store.ticket_sync([t], clock.advance(minutes=1)) == []  # a follow-up: nothing changes
    assert await assignee(store, t) == first
    ticket = await store.get_ticket(t)
    # the rules move it to support (what a TicketChange of the pipeline does)
    from routing.state import Commit, TicketChange
    from routing.model import new_id

    await store.commit(Commit(journal_id=await journal_id(store), outcome="processed", message_key=("email", "acct", new_id()),
                              contact_id=ticket.contact_id, contact_expect_version=1, ticket_id=t,
                              ticket_change=TicketChange(id=t, expect_version=2, team="support")))
    [moved] = await store.ticket_sync([t], clock.advance(minutes=1))
    assert moved.agent == "a-wang"
    agents = {a.id: a for a in await store.list_agents()}
    assert agents[first].load.get("email", 0) == 0 and agents["a-wang"].load == {"email": 1}


async def test_the_queue_is_served_by_priority_then_age(store, clock):
    await store.set_presence("a-wang", "offline", T0)  # support: a-wang alone, email 3
    order = ["normal", "low", "urgent", "high", "normal"]
    tickets = []
    for i, priority in enumerate(order):
        t = await make_ticket(store, team="support", priority=priority)
        assert (await store.assign_next(t, clock.advance(minutes=1))).agent is None
        tickets.append(t)
    await store.set_presence("a-wang", "online", clock.advance(minutes=1))
    held = [await assignee(store, t) == "a-wang" for t in tickets]
    # urgent, high, then the oldest normal; the low one and the younger normal wait
    assert held == [True, False, True, True, False]


def test_the_decision_sentence_names_eight_other_agents_and_counts_the_rest() -> None:
    from gateway.store.sqlite_assign import describe
    from routing.assign import Considered, Decision, Reason

    considered = [Considered(f"a{i}", [Reason("capacity", f"at capacity chat {i}/{i}")] if i % 2 else [], i / 10)
                  for i in range(12)]
    text = describe(Decision("t1", "a0", "chat", Reason("least_loaded", "least loaded: chat 0/5"), considered))
    assert text == ("assigned to a0: least loaded: chat 0/5 (not chosen: a1 at capacity chat 1/1; "
                    "a2 eligible at 0.20; a3 at capacity chat 3/3; a4 eligible at 0.40; a5 at capacity chat 5/5; "
                    "a6 eligible at 0.60; a7 at capacity chat 7/7; a8 eligible at 0.80; 3 more)")
    alone = describe(Decision("t1", None, "chat", Reason("none_eligible", "no eligible agent in team x"), []))
    assert alone == "no eligible agent in team x"


async def test_decision_data_is_written_as_the_plain_encoding(sqlite_store):
    """``assign_next`` writes a decision's ``considered`` list joined from each entry's kept JSON
    (``routing.assign.choose_agent_json``): the stored ``data`` text is byte for byte what
    encoding the decision's data without that fast path gives, for a ticket assigned and one
    queued, and again after the agents' load changed; stored as TEXT (``AssignTx.timeline``
    binds the JSON's bytes and casts them)."""
    from gateway.store.sqlite_assign import decision_data, to_json

    def data_texts(conn, ticket_id):
        return [(r[0], r[1]) for r in conn.execute(
            "SELECT typeof(data), data FROM timeline WHERE ticket_id = ? AND kind = 'assignment' ORDER BY seq",
            (ticket_id,))]

    for round_ in range(3):  # the later rounds reuse the kept searches with changed members
        skills = {"billing": 2 + round_ % 2}
        tickets = [await make_ticket(sqlite_store, team="billing", skills=skills) for _ in range(3)]
        for t in tickets:
            decision = await sqlite_store.assign_next(t, T0)
            want = (decision_data(decision, previous=None, why=None) if decision.agent
                    else decision_data(decision, queued=True))
            assert await sqlite_store._read(data_texts, t) == [("text", to_json(want))]
