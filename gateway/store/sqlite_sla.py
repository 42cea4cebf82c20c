"""SQLite operations for SLA timers: syncing a ticket's clock, firing what is due, escalating, stats.

The SLA half of the assignment transaction: :class:`Tx` adds to
``sqlite_assign.AssignTx`` (tickets, timeline, outbox, choosing and taking)
what runs the pure deciders of ``routing.sla``, and :class:`SlaOps` makes it
the transaction class of every assignment operation, since status changes
and ticket syncs re-time the SLA in the same transaction. The tables are
those of migration 3 (``sqlite_assign.MIGRATION``); migration 11
(:data:`MIGRATION`) indexes each ticket's replies.

A ticket's clock (policy, statuses, responses, events fired) is one row of
``sla_clocks``; its next warnings and breaches are rows of ``sla_timers``
with their due times, recomputed from the ticket's facts on every sync. A
fired event is deleted in the transaction that fires it, so it fires once.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import msgspec

from gateway.store.sqlite_assign import (
    AssignTx,
    TicketRow,
    decision_data,
    describe,
    from_ms,
    to_json,
    to_ms,
)
from routing.assign import choose_agent, raised_priority
from routing.calendar import BusinessCalendar
from routing.model import OPEN_STATUSES, PRIORITY_RANK
from routing.sla import (
    NotifyWebhook,
    RaisePriority,
    ReassignToLead,
    SlaClock,
    SlaEvent,
    SlaPolicy,
    StatusChange,
    due_events,
    escalation_actions,
    evaluate,
    reply_counts_at,
    select_policy,
    sla_state,
    steady_span,
)

#: Schema migration 11: a ticket's replies without its other entries (rules,
#: customer messages, assignment…), for the response tracking of every sync
#: (``Tx._responses``). Partial: only outgoing messages pay for it.
MIGRATION = """
    CREATE INDEX timeline_ticket_replies ON timeline (ticket_id, at, seq) WHERE kind = 'message_out';
"""

_dec = msgspec.json.Decoder()
_clock_dec = msgspec.json.Decoder(SlaClock)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_LEAST, _MOST = -(2**63), 2**63 - 1  # below and above every ``at`` and ``seq``


def _after(reply: tuple[datetime, int, int]) -> tuple[int, int]:
    """``(a, s)`` such that a customer message's entry comes after ``reply`` in
    the order ``_responses`` takes them exactly when ``(at, seq) > (a, s)``.

    ``reply`` is (the time it counts at, its own entry's ``at`` in ms, its
    ``seq``). A customer message comes after it when its time is later, or
    the same and its entry comes later in the timeline's order (``at``,
    ``seq``); a delivery time may carry microseconds, entries have ms.
    """
    at, entry_at, entry_seq = reply
    ms, us = divmod((at - _EPOCH) // _US, 1000)
    if us or ms < entry_at:  # no customer message has the same time, or it comes before the reply's entry
        return ms, _MOST
    if ms > entry_at:  # the same time as the delivery: after the reply's entry
        return ms, _LEAST
    return ms, entry_seq


class _Timing(NamedTuple):
    """A ticket's SLA as evaluated for one clock (its JSON), policy and calendar.

    ``state`` is the ticket's ``sla`` column and ``timers`` its ``sla_timers``
    rows, sorted; both hold while ``now`` is in ``[since, until)``
    (``routing.sla.steady_span``; ``None``: no bound).
    """

    clock: str
    policy: SlaPolicy
    calendar: BusinessCalendar
    since: datetime | None
    until: datetime | None
    state: str
    timers: list[tuple]


#: ticket id → its last evaluation. A follow-up message mostly leaves the
#: clock as it was: the due times, the state and the timer rows are then
#: the ones computed before, without the calendar arithmetic. An entry is a
#: pure function of what it is checked against (the clock's JSON, the policy
#: and calendar objects of the directory in use, the span of ``now``), so a
#: rolled-back transaction or another store cannot make one wrong.
_timings: dict[str, _Timing] = {}
_TIMINGS_MAX = 8192


def _timing(ticket_id: str, clock: SlaClock, encoded: str, now: datetime, policy: SlaPolicy,
            calendar: BusinessCalendar) -> _Timing:
    """The ticket's SLA state and timer rows at ``now`` (``encoded``: the clock's JSON)."""
    kept = _timings.get(ticket_id)
    if (kept is not None and kept.clock == encoded and kept.policy is policy and kept.calendar is calendar
            and (kept.since is None or kept.since <= now) and (kept.until is None or now < kept.until)):
        return kept
    statuses = evaluate(clock, now, policy, calendar)  # once, for the state and the timers
    timers = sorted((ticket_id, ev.key, ev.kind, ev.target, policy.id, to_ms(ev.since), to_ms(ev.at))
                    for ev in due_events(clock, now, policy, calendar, statuses))
    since, until = steady_span(clock, statuses, now)
    timing = _Timing(encoded, policy, calendar, since, until,
                     to_json(sla_state(clock, now, policy, calendar, statuses)), timers)
    if len(_timings) >= _TIMINGS_MAX:
        _timings.clear()
    _timings[ticket_id] = timing
    return timing


class Tx(AssignTx):
    """The whole assignment transaction: ``AssignTx`` plus the SLA clock, timers and escalations."""

    def sla_sync(self, t: TicketRow) -> None:
        """Recompute the ticket's SLA (policy, state, due events) from its current facts."""
        if self.desk_owned(t.id):  # ownership: desk — the desk times it
            self.conn.execute("DELETE FROM sla_timers WHERE ticket_id = ?", (t.id,))
            self.conn.execute("UPDATE tickets SET sla = NULL WHERE id = ? AND sla IS NOT NULL", (t.id,))
            return
        r = self.conn.execute("SELECT clock FROM sla_clocks WHERE ticket_id = ?", (t.id,)).fetchone()
        if r is None and t.status not in OPEN_STATUSES:
            return  # done before the directory came (first sweep of an older store): nothing is owed
        clock = _clock_dec.decode(r[0]) if r else SlaClock(
            t.id, "", t.created_at, statuses=[StatusChange(t.created_at, t.status)])
        if clock.statuses[-1].status != t.status:
            clock.statuses.append(StatusChange(self.now, t.status))
        clock.first_response_at, clock.awaiting_since = self._responses(t)
        match = select_policy(self.d.sla_policies, t.priority, t.tier, t.channel)
        if match is None:
            self._sla_clear(t, clock)
            return
        policy = match.policy
        if policy.id != clock.policy:
            self.timeline(t.id, "sla", f"SLA {match.reason}", {"policy": policy.id, "reason": match.reason,
                                                               "calendar": policy.calendar})
            clock.policy = policy.id
        encoded = to_json(clock)
        timing = _timing(t.id, clock, encoded, self.now, policy, self.d.calendars[policy.calendar])
        if timing.state != t.sla:  # a follow-up mostly leaves the due times as they were
            self.conn.execute("UPDATE tickets SET sla = ? WHERE id = ?", (timing.state, t.id))
        if r is None or encoded != r[0]:
            self._save_clock(clock, encoded)
        # a follow-up message mostly leaves the timers as they are: rewrite them only when they changed
        if r is None or timing.timers != sorted(self.conn.execute(
                "SELECT ticket_id, key, kind, target, policy, since, due_at FROM sla_timers WHERE ticket_id = ?",
                (t.id,))):
            self.conn.execute("DELETE FROM sla_timers WHERE ticket_id = ?", (t.id,))
            self.conn.executemany(
                "INSERT INTO sla_timers (ticket_id, key, kind, target, policy, since, due_at) VALUES (?,?,?,?,?,?,?)",
                timing.timers)

    def _sla_clear(self, t: TicketRow, clock: SlaClock) -> None:
        if clock.policy:
            self.timeline(t.id, "sla", "no SLA policy matches any more", {"policy": None})
        clock.policy = ""
        self._save_clock(clock)
        self.conn.execute("UPDATE tickets SET sla = NULL WHERE id = ?", (t.id,))
        self.conn.execute("DELETE FROM sla_timers WHERE ticket_id = ?", (t.id,))

    def _save_clock(self, clock: SlaClock, encoded: str | None = None) -> None:
        self.conn.execute("INSERT OR REPLACE INTO sla_clocks (ticket_id, policy, clock) VALUES (?,?,?)",
                          (clock.ticket_id, clock.policy or None, encoded if encoded is not None else to_json(clock)))

    def _responses(self, t: TicketRow) -> tuple[datetime | None, datetime | None]:
        """(first response, first customer message not answered since the last response).

        A response is a public agent reply that was delivered (or accepted
        by the channel), at the time it was (``routing.sla.reply_counts_at``):
        a queued, retrying or failed reply answers nobody.
        ``tickets.first_response_at`` counts too, whoever set it.

        Entries count in order of their time (a response's delivery time),
        ties in the timeline's own order (``at``, ``seq``). Only the ticket's
        outgoing messages are read (the partial index of :data:`MIGRATION`)
        and judged: the customer message that starts the next-response clock
        is the first one after the last response, one lookup in the
        ``timeline_ticket`` index (:func:`_after`; times are aware, a
        delivery's comes from the outbox's clock). So the work per sync does
        not grow with the conversation's other entries. No summary is kept
        between syncs: a reply's delivery is updated in place by several
        writers (the send, platform reports), which no cursor would see.
        """
        replies = []  # (time it counts at, its entry's at in ms, seq), in the timeline's order
        for at_ms, seq, data in self.conn.execute(
                "SELECT at, seq, data FROM timeline WHERE ticket_id = ? AND kind = 'message_out' ORDER BY at, seq",
                (t.id,)):
            at = reply_counts_at(from_ms(at_ms), _dec.decode(data) if data else {})
            if at is not None:
                replies.append((at, at_ms, seq))
        earliest = last = None  # among equal times, the first and the last in the timeline's order
        for reply in replies:
            if earliest is None or reply[0] < earliest[0]:
                earliest = reply
            if last is None or reply[0] >= last[0]:
                last = reply
        first = t.first_response_at or (earliest[0] if earliest is not None else None)
        if first is None:
            return None, None  # before the first response, only the first-response clock runs
        after = _after(last) if last is not None else (_LEAST, _LEAST)
        r = self.conn.execute(
            "SELECT at FROM timeline WHERE ticket_id = ? AND kind = 'message_in' AND (at, seq) > (?, ?) "
            "ORDER BY at, seq LIMIT 1", (t.id, *after)).fetchone()
        awaiting = from_ms(r[0]) if r else None
        if last is None and awaiting is not None and awaiting <= first:
            awaiting = None  # before the first response, only the first-response clock runs
        return first, awaiting

    def fire_due(self, limit: int) -> list[SlaEvent]:
        """Fire every SLA event due at ``now`` (each once), after re-checking its ticket's facts."""
        tickets = [r[0] for r in self.conn.execute(
            "SELECT DISTINCT ticket_id FROM sla_timers WHERE due_at <= ? ORDER BY due_at LIMIT ?",
            (self.now_ms, limit))]
        fired = []
        for ticket_id in tickets:
            t = self.ticket(ticket_id)
            if t is None:
                self.conn.execute("DELETE FROM sla_timers WHERE ticket_id = ?", (ticket_id,))
                continue
            self.sla_sync(t)  # a reply or status change not synced yet must not fire a stale event
            due = self.conn.execute(
                "SELECT key, kind, target, policy, since, due_at FROM sla_timers WHERE ticket_id = ? AND due_at <= ? "
                "ORDER BY due_at", (ticket_id, self.now_ms)).fetchall()
            for key, kind, target, policy_id, since, due_at in due:
                event = SlaEvent(kind, target, from_ms(due_at), from_ms(since))
                self._fire(t, self.d.policy(policy_id), event, key)
                fired.append(event)
            if due:
                t = self.ticket(ticket_id)
                assert t is not None
                self.sla_sync(t)
        return fired

    def _fire(self, t: TicketRow, policy: SlaPolicy, event: SlaEvent, key: str) -> None:
        self.conn.execute("DELETE FROM sla_timers WHERE ticket_id = ? AND key = ?", (t.id, key))
        r = self.conn.execute("SELECT clock FROM sla_clocks WHERE ticket_id = ?", (t.id,)).fetchone()
        clock = _clock_dec.decode(r[0])
        clock.fired.append(key)
        self._save_clock(clock)
        self.conn.execute(
            "INSERT INTO sla_events (ticket_id, policy, kind, target, due_at, fired_at) VALUES (?,?,?,?,?,?)",
            (t.id, policy.id, event.kind, event.target, to_ms(event.at), self.now_ms))
        target = event.target.replace("_", " ")
        word = "breached" if event.kind == "breach" else "warning"
        local = event.at.astimezone(self.d.calendars[policy.calendar].tz).isoformat()
        text = f"SLA {word}: {target} due {local} (policy {policy.id}, calendar {policy.calendar})"
        payload = {"ticket_id": t.id, "policy": policy.id, "target": event.target, "due_at": event.at.isoformat(),
                   "assignee": t.assignee, "priority": t.priority}
        self.timeline(t.id, "sla", text, {**payload, "event": event.kind})
        self.outbox("sla.breached" if event.kind == "breach" else "sla.warning", t.id, payload)
        for action in escalation_actions(policy, event):
            self._escalate(t.id, action, event, payload)

    def _escalate(self, ticket_id: str, action: Any, event: SlaEvent, payload: dict) -> None:
        t = self.ticket(ticket_id)
        assert t is not None
        why = f"SLA {event.kind} of {event.target.replace('_', ' ')}"
        match action:
            case RaisePriority(to=to):
                raised = raised_priority(t.priority, to)
                if raised != t.priority:
                    self.touch_ticket(t.id, priority=raised)
                    self.conn.execute("UPDATE assign_queue SET priority = ?, rank = ? WHERE ticket_id = ?",
                                      (raised, PRIORITY_RANK[raised], t.id))
                    self.timeline(t.id, "sla", f"priority {t.priority} → {raised}: {why}",
                                  {"action": "raise_priority", "from": t.priority, "to": raised})
                    self.outbox("ticket.updated", t.id, {"ticket_id": t.id, "changes": {
                        "priority": {"from": t.priority, "to": raised}}, "reason": why})
            case ReassignToLead(team=team):
                self._to_lead(t, team or t.team, why)
            case NotifyWebhook(name=name):
                self.outbox("sla.escalation", t.id, {**payload, "event": event.kind, "webhook": name})

    def _to_lead(self, t: TicketRow, team: str | None, why: str) -> None:
        lead = msgspec.structs.replace(self.demand(t), team=team, role="lead", last_agent=None)
        state = self.state(lead.teams())
        decision = choose_agent(state, lead)
        if decision.agent is None or decision.agent == t.assignee:
            text = "already with a lead" if decision.agent else f"no lead available: {describe(decision)}"
            self.timeline(t.id, "sla", f"{why}: reassign to a lead: {text}", decision_data(decision))
            return
        self.release(t.id)
        state = self.state(lead.teams())  # the released load counts again
        self.take(t, choose_agent(state, lead), state, f"{why}: reassigned to a lead")


# ---------------------------------------------------------------- stats


def _seconds_summary(conn: sqlite3.Connection, column: str) -> dict[str, float | int]:
    count, total, worst = conn.execute(
        f"SELECT count(*), coalesce(sum({column} - created_at), 0), coalesce(max({column} - created_at), 0) "
        f"FROM tickets WHERE {column} IS NOT NULL").fetchone()
    return {"count": count, "sum_s": total / 1000, "avg_s": total / 1000 / count if count else 0.0,
            "max_s": worst / 1000}


def _stats(conn: sqlite3.Connection) -> dict:
    sla: dict[str, dict[str, dict[str, int]]] = {"breach": {}, "warning": {}}
    for kind, policy, target, n in conn.execute(
            "SELECT kind, policy, target, count(*) FROM sla_events GROUP BY kind, policy, target"):
        sla.setdefault(kind, {}).setdefault(policy, {})[target] = n
    queues = {team or "": n for team, n in conn.execute("SELECT team, count(*) FROM assign_queue GROUP BY team")}
    presence = dict(conn.execute("SELECT presence, count(*) FROM agents GROUP BY presence").fetchall())
    return {
        "first_response": _seconds_summary(conn, "first_response_at"),
        "resolution": _seconds_summary(conn, "solved_at"),
        "sla_breaches": sla["breach"],
        "sla_warnings": sla["warning"],
        "queued": queues,
        "agents": presence,
        "assigned": conn.execute("SELECT count(*) FROM assignments WHERE released_at IS NULL").fetchone()[0],
    }


# ---------------------------------------------------------------- the mixin


class SlaOps:
    """Mixed into SQLiteStore with ``sqlite_assign.AssignOps``: firing SLA events, and the stats."""

    _tx_type = Tx

    async def sla_fire_due(self, now: datetime, limit: int = 200) -> list[SlaEvent]:
        return await self._tx(now, Tx.fire_due, limit)  # type: ignore[attr-defined]

    async def assign_stats(self) -> dict:
        return await self._read(_stats)  # type: ignore[attr-defined]
