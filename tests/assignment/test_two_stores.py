"""Two stores on one state (two instances on one Redis; two processes on one
SQLite folder) deciding at once: no agent above capacity, each due SLA event
fired by exactly one of them, each overflow step taken once."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

from tests.assignment.conftest import T0, directory, entries, make_ticket


async def _two(stores):
    a, b = stores(), stores()
    for s in (a, b):
        await s.directory_load(directory(), T0)
    return a, b


async def test_two_stores_assigning_at_once_never_exceed_capacity(stores):
    a, b = await _two(stores)
    tickets = [await make_ticket(a, team="billing") for _ in range(30)]
    decisions = await asyncio.gather(*(s.assign_next(t, T0) for t, s in zip(tickets, [a, b] * 15)))
    assert sum(d.agent is not None for d in decisions) == 4  # a-li 2 + a-han 2 email places
    for view in (await a.list_agents(), await b.list_agents()):
        loads = {x.id: x.load for x in view if x.id.startswith("a-")}
        assert loads == {"a-li": {"email": 2}, "a-han": {"email": 2}, "a-wang": {}}
    held = [t for x in await b.list_agents() for t in x.tickets]
    assert len(held) == len(set(held)) == 4


async def test_a_due_sla_event_fires_on_exactly_one_store(stores):
    a, b = await _two(stores)
    tickets = [await make_ticket(a, team="billing", priority="urgent") for _ in range(6)]
    await b.ticket_sync(tickets, T0)
    later = T0 + timedelta(minutes=20)  # first response (15m) breached, its warning due too
    results = await asyncio.gather(*(s.sla_fire_due(later) for s in (a, b, a, b)))
    fired = Counter((e.kind, e.target) for r in results for e in r)
    assert fired == {("warning", "first_response"): 6, ("breach", "first_response"): 6}
    for t in tickets:
        events = [e.data["event"] for e in await entries(a, t, "sla") if "event" in e.data]
        assert events == ["warning", "breach"]
    assert (await a.assign_stats())["sla_breaches"] == {"urgent": {"first_response": 6}}


async def test_an_overflow_step_is_taken_once(stores):
    a, b = await _two(stores)
    for agent in ("a-li", "a-han"):
        await a.set_presence(agent, "offline", T0)
    t = await make_ticket(a, team="billing", skills={"billing": 2})
    assert (await b.assign_next(t, T0)).agent is None
    moved = await asyncio.gather(*(s.overflow_due(T0 + timedelta(minutes=10)) for s in (a, b, a, b)))
    assert sum(moved) == 1
    texts = [e.text for e in await entries(b, t, "assignment")]
    assert texts.count("overflow: waited 10m ≥ 10m: widen to support") == 1
