"""SQLite operations for SLA timers: syncing a ticket's clock, firing what is due, escalating, stats.

The SLA half of the assignment transaction: :class:`Tx` adds to
``sqlite_assign.AssignTx`` (tickets, timeline, outbox, choosing and taking)
what runs the pure deciders of ``routing.sla``, and :class:`SlaOps` makes it
the transaction class of every assignment operation, since status changes
and ticket syncs re-time the SLA in the same transaction. The tables are
those of migration 3 (``sqlite_assign.MIGRATION``).

A ticket's clock (policy, statuses, responses, events fired) is one row of
``sla_clocks``; its next warnings and breaches are rows of ``sla_timers``
with their due times, recomputed from the ticket's facts on every sync. A
fired event is deleted in the transaction that fires it, so it fires once.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

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
from routing.model import OPEN_STATUSES, PRIORITY_RANK, TimelineEntry
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
    response_verdict,
    select_policy,
    sla_state,
)

_dec = msgspec.json.Decoder()
_clock_dec = msgspec.json.Decoder(SlaClock)


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
        calendar = self.d.calendars[policy.calendar]
        statuses = evaluate(clock, self.now, policy, calendar)  # once, for the state and the timers
        state = to_json(sla_state(clock, self.now, policy, calendar, statuses))
        if state != t.sla:  # a follow-up mostly leaves the due times as they were
            self.conn.execute("UPDATE tickets SET sla = ? WHERE id = ?", (state, t.id))
        encoded = to_json(clock)
        if r is None or encoded != r[0]:
            self._save_clock(clock, encoded)
        timers = [(t.id, ev.key, ev.kind, ev.target, policy.id, to_ms(ev.since), to_ms(ev.at))
                  for ev in due_events(clock, self.now, policy, calendar, statuses)]
        # a follow-up message mostly leaves the timers as they are: rewrite them only when they changed
        if r is None or sorted(timers) != sorted(self.conn.execute(
                "SELECT ticket_id, key, kind, target, policy, since, due_at FROM sla_timers WHERE ticket_id = ?",
                (t.id,))):
            self.conn.execute("DELETE FROM sla_timers WHERE ticket_id = ?", (t.id,))
            self.conn.executemany(
                "INSERT INTO sla_timers (ticket_id, key, kind, target, policy, since, due_at) VALUES (?,?,?,?,?,?,?)",
                timers)

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

        A response is a public agent reply (``routing.sla.response_verdict``)
        that was delivered (or accepted by the channel), at the time it was:
        a queued, retrying or failed reply answers nobody.
        ``tickets.first_response_at`` counts too, whoever set it.
        """
        first, last_reply, awaiting = t.first_response_at, None, None
        events = []
        for kind, at_ms, data in self.conn.execute(
            "SELECT kind, at, data FROM timeline WHERE ticket_id = ? AND kind IN ('message_in', 'message_out') "
            "ORDER BY at, seq", (t.id,)):
            at = from_ms(at_ms)
            if kind == "message_in":
                events.append((at, False))
                continue
            fields = _dec.decode(data) if data else {}
            if not response_verdict(TimelineEntry("", "", kind, at, data=fields)).counts:
                continue
            delivery = fields.get("delivery")
            if isinstance(delivery, dict):
                if delivery.get("status") != "sent":
                    continue
                at = datetime.fromisoformat(delivery["at"]) if delivery.get("at") else at
            events.append((at, True))
        for at, reply in sorted(events, key=lambda e: e[0]):
            if not reply:
                awaiting = awaiting or at
            else:
                first = first or at
                last_reply, awaiting = at, None
        if first is None or (last_reply is None and awaiting is not None and awaiting <= first):
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
