"""Overflow steps and SLA timers on an injected clock, through the real store."""

from __future__ import annotations

from datetime import timedelta

from gateway.store.base import REPLY_TOPIC, Delivery, ReplyDraft
from routing.model import utcnow
from tests.assignment.conftest import T0, assignee, directory, entries, local, make_ticket


async def test_overflow_widens_then_lowers_skills_at_the_configured_waits(store, clock):
    for agent in ("a-li", "a-han"):
        await store.set_presence(agent, "offline", T0)
    t = await make_ticket(store, team="billing", skills={"billing": 2})
    assert (await store.assign_next(t, T0)).agent is None

    assert await store.overflow_due(clock.advance(minutes=9, seconds=59)) == 0
    assert await store.overflow_due(clock.advance(seconds=1)) == 1  # 10m: widen to support
    assert await assignee(store, t) is None  # a-wang has billing 1 < 2
    assert await store.overflow_due(clock.advance(minutes=19)) == 0
    assert await store.overflow_due(clock.advance(minutes=1)) == 1  # 30m: billing ≥ 1, priority up
    assert await assignee(store, t) == "a-wang"
    ticket = await store.get_ticket(t)
    assert ticket.priority == "high"
    texts = [e.text for e in await entries(store, t, "assignment")]
    assert texts[1] == "overflow: waited 10m ≥ 10m: widen to support"
    assert texts[2] == "overflow: waited 30m ≥ 30m: lower skill levels by 1; raise priority"
    assert texts[3].startswith("assigned to a-wang") and texts[3].endswith("after overflow")
    assert await store.overflow_due(clock.advance(hours=1)) == 0  # nothing left to do


async def _due(store, created_at, priority="normal"):
    t = await make_ticket(store, created_at=created_at, priority=priority)
    await store.ticket_sync([t], created_at)
    return t, (await store.get_ticket(t)).sla


async def test_sla_due_times_follow_the_chinese_calendar(store):
    # Tue 2025-09-30 17:00: one hour that day, then the National Day holiday (Oct 1-8)
    _, sla = await _due(store, local(2025, 9, 30, 17, 0))
    assert sla.policy == "standard" and sla.first_response_due == local(2025, 10, 9, 10, 0)
    # Fri 2025-10-10 17:00: Saturday 2025-10-11 is a make-up workday (调休)
    _, sla = await _due(store, local(2025, 10, 10, 17, 0))
    assert sla.first_response_due == local(2025, 10, 11, 10, 0)
    # Mon 2026-03-02 11:00: the lunch break 12:00-13:30 does not count
    t, sla = await _due(store, local(2026, 3, 2, 11, 0))
    assert sla.first_response_due == local(2026, 3, 2, 14, 30)
    [entry] = await entries(store, t, "sla")
    assert entry.text == "SLA policy standard: matches every ticket" and entry.data["calendar"] == "cn-office"
    # urgent tickets run on the 24x7 calendar
    _, sla = await _due(store, local(2025, 9, 30, 23, 50), priority="urgent")
    assert sla.policy == "urgent" and sla.first_response_due == local(2025, 10, 1, 0, 5)


async def test_pending_pauses_the_clock_and_open_resumes_it(store, clock):
    t, sla = await _due(store, T0)  # Mon 09:00, 2 business hours
    assert sla.first_response_due == local(2026, 3, 2, 11, 0)
    await store.set_status(t, "pending", clock.advance(minutes=30))
    paused = (await store.get_ticket(t)).sla
    assert paused.first_response_due is None and paused.paused_at == local(2026, 3, 2, 9, 30)
    assert await store.sla_fire_due(clock.advance(hours=5)) == []  # nothing runs while paused
    await store.set_status(t, "open", local(2026, 3, 2, 10, 30))
    resumed = (await store.get_ticket(t)).sla
    # 30 minutes were spent before the pause: 90 left from 10:30 → 12:00 (lunch starts then)
    assert resumed.first_response_due == local(2026, 3, 2, 12, 0) and resumed.paused_at is None


async def test_warning_and_breach_survive_a_restart_and_fire_once(stores):
    store = stores()
    await store.directory_load(directory(), T0)
    t = await make_ticket(store, team="billing", priority="urgent")
    await store.ticket_sync([t], T0)
    assert await assignee(store, t) == "a-han"  # tie on load: never assigned, then by id
    assert await store.sla_warned([t]) == {}  # the console's amber badge: no warning yet
    await store.close()

    store = stores()  # a new process, 20 minutes later
    await store.directory_load(directory(), T0 + timedelta(minutes=20))
    try:
        fired = await store.sla_fire_due(T0 + timedelta(minutes=20))
        assert [(e.kind, e.target) for e in fired] == [("warning", "first_response"), ("breach", "first_response")]
        assert await store.sla_fire_due(T0 + timedelta(minutes=21)) == []
        assert await store.sla_warned([t, "no-such-ticket"]) == {t: {"first_response"}}
        sla = [e for e in await entries(store, t, "sla") if "event" in e.data]
        assert [e.data["event"] for e in sla] == ["warning", "breach"]
        assert sla[1].text.startswith("SLA breached: first response due 2026-03-02T09:15:00+08:00 (policy urgent")
        assert await assignee(store, t) == "a-li"  # the breach reassigns to a lead
        ticket = await store.get_ticket(t)
        assert ticket.sla.breached == ["first_response"]
        stats = await store.assign_stats()
        assert stats["sla_breaches"] == {"urgent": {"first_response": 1}}
        assert stats["sla_warnings"] == {"urgent": {"first_response": 1}}
    finally:
        await store.close()


async def test_a_public_agent_reply_meets_the_first_response(sqlite_store):
    store = sqlite_store  # replies are not on the Redis backend yet (reply_create)
    now = utcnow()  # the replies engine stamps replies with the real time; the store keeps milliseconds
    created = now.replace(microsecond=now.microsecond // 1000 * 1000) - timedelta(minutes=5)
    t, sla = await _due(store, created, priority="urgent")
    assert sla.first_response_due == created + timedelta(minutes=15)
    await store.reply_create(t, ReplyDraft(text="您好，我们在处理", author="a-li"))
    await store.ticket_sync([t], utcnow())
    # queued, not delivered: nobody has been answered yet
    assert (await store.get_ticket(t)).sla.first_response_due == created + timedelta(minutes=15)
    (item,) = await store.outbox_claim(REPLY_TOPIC, 10, 60)
    assert await store.outbox_settle(item, Delivery(status="sent", at=utcnow(), attempts=1))
    await store.ticket_sync([t], utcnow())
    sla = (await store.get_ticket(t)).sla
    assert sla.first_response_due is None and sla.breached == []
    fired = await store.sla_fire_due(created + timedelta(hours=3, minutes=15))
    assert [(e.kind, e.target) for e in fired] == [("warning", "resolution")]  # at 0.8 × 4h; no first response
