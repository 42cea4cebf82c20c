"""SQLite operations for agents, presence, assignment queues and SLA timers.

Each public operation of :class:`AssignOps` is ONE write transaction on the
store's writer thread (see ``gateway/store/sqlite.py``): it reads what it
needs, runs the pure deciders of ``routing.assign`` and ``routing.sla``, and
writes the outcome — ticket, agent load, queue, timers, timeline entries with
their reasons, outbox events — atomically. The writer runs one transaction at
a time, so a decision always sees the load every earlier decision left: no
agent is ever filled above capacity, however many pipeline workers assign at
once.

Load is not a counter: it is the number of *held* rows in ``assignments``
(``released_at IS NULL``) per agent and capacity class, so taking and freeing
capacity are idempotent row updates that cannot drift.

Everything time-based (overflow steps, SLA warnings and breaches) is a due
time in a table (``assign_queue.overflow_at``, ``sla_timers.due_at``): a
scheduler asks for what is due at ``now``, so a restart forgets nothing and a
fired event is deleted in the transaction that fires it (it fires once).
Every operation takes ``now`` from its caller: tests drive the clock.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import Any, NamedTuple

import msgspec

from gateway.store.base import AgentView, InvalidTransition, NotFound, StoreError
from routing.assign import (
    AgentState,
    AssignmentState,
    Decision,
    Demand,
    OverflowStep,
    apply_decision,
    apply_overflow,
    channel_class,
    choose_agent,
    overflow_due,
    raised_priority,
)
from routing.directory import Directory
from routing.model import OPEN_STATUSES, PRIORITY_RANK, Agent, TimelineEntry, new_id
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
    response_verdict,
    select_policy,
    sla_state,
)

#: Schema migration 3 (agents, queues, SLA timers). Applied once, in order.
MIGRATION = """
    CREATE TABLE agents (
        id               TEXT PRIMARY KEY,
        name             TEXT NOT NULL,
        login            TEXT,
        roles            TEXT NOT NULL,
        teams            TEXT NOT NULL,
        skills           TEXT NOT NULL,
        capacity         TEXT NOT NULL,
        presence         TEXT NOT NULL,
        presence_at      INTEGER,
        last_assigned_at INTEGER,
        updated_at       INTEGER NOT NULL
    );
    CREATE TABLE agent_teams (
        team     TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        PRIMARY KEY (team, agent_id)
    ) WITHOUT ROWID;

    -- one row per ticket ever assigned; held while released_at IS NULL
    CREATE TABLE assignments (
        ticket_id   TEXT PRIMARY KEY,
        agent_id    TEXT NOT NULL,
        class       TEXT NOT NULL,
        team        TEXT,
        skills      TEXT NOT NULL,
        assigned_at INTEGER NOT NULL,
        released_at INTEGER
    );
    CREATE INDEX assignments_held ON assignments (agent_id, class) WHERE released_at IS NULL;

    -- tickets nobody could take yet; the demand as widened by overflow
    CREATE TABLE assign_queue (
        ticket_id     TEXT PRIMARY KEY,
        team          TEXT,
        base_skills   TEXT NOT NULL,
        also_teams    TEXT NOT NULL DEFAULT '[]',
        skills        TEXT NOT NULL,
        priority      TEXT NOT NULL,
        rank          INTEGER NOT NULL,
        class         TEXT NOT NULL,
        last_agent    TEXT,
        queued_at     INTEGER NOT NULL,
        overflow_done INTEGER NOT NULL DEFAULT 0,
        overflow_at   INTEGER,
        reason        TEXT
    );
    CREATE INDEX assign_queue_order ON assign_queue (rank, queued_at);
    CREATE INDEX assign_queue_overflow ON assign_queue (overflow_at) WHERE overflow_at IS NOT NULL;

    CREATE TABLE sla_clocks (
        ticket_id TEXT PRIMARY KEY,
        policy    TEXT,
        clock     TEXT NOT NULL
    );
    CREATE TABLE sla_timers (
        ticket_id TEXT NOT NULL,
        key       TEXT NOT NULL,
        kind      TEXT NOT NULL,
        target    TEXT NOT NULL,
        policy    TEXT NOT NULL,
        since     INTEGER NOT NULL,
        due_at    INTEGER NOT NULL,
        PRIMARY KEY (ticket_id, key)
    ) WITHOUT ROWID;
    CREATE INDEX sla_timers_due ON sla_timers (due_at);
    CREATE TABLE sla_events (
        seq       INTEGER PRIMARY KEY AUTOINCREMENT,
        ticket_id TEXT NOT NULL,
        policy    TEXT NOT NULL,
        kind      TEXT NOT NULL,
        target    TEXT NOT NULL,
        due_at    INTEGER NOT NULL,
        fired_at  INTEGER NOT NULL
    );
    CREATE INDEX sla_events_kind ON sla_events (kind, policy, target);

    -- the scheduler's sweep of tickets changed since it last looked
    CREATE INDEX tickets_updated ON tickets (updated_at);
"""

#: Status changes an agent may make (``new`` is only ever the pipeline's).
TRANSITIONS: dict[str, frozenset[str]] = {
    "new": frozenset({"open", "pending", "solved", "closed"}),
    "open": frozenset({"pending", "solved", "closed"}),
    "pending": frozenset({"open", "solved", "closed"}),
    "solved": frozenset({"open", "pending", "closed"}),
    "closed": frozenset(),  # a customer message after closing opens a follow-up ticket
}
RELEASING: frozenset[str] = frozenset({"solved", "closed"})

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
_clock_dec = msgspec.json.Decoder(SlaClock)
_SHOWN_OTHERS = 8  # agents named in a decision's timeline sentence
_DRAIN_LIMIT = 1000  # queued tickets looked at per drain (one transaction stays short)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _dt(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, tz=timezone.utc)


def _j(value: Any) -> str:
    return _enc.encode(value).decode()


# ---------------------------------------------------------------- rows


class _TicketRow(NamedTuple):
    id: str
    contact_id: str
    status: str
    priority: str
    team: str | None
    skills: dict[str, int]
    assignee: str | None
    channel: str
    created_at: datetime
    first_response_at: datetime | None
    tier: str | None


_TICKET_SQL = (
    "SELECT t.id, t.contact_id, t.status, t.priority, t.team, t.skills, t.assignee, "
    "coalesce(json_extract(t.reply_to, '$.channel'), json_extract(t.channels, '$[0]'), ''), "
    "t.created_at, t.first_response_at, c.tier FROM tickets t LEFT JOIN contacts c ON c.id = t.contact_id "
    "WHERE t.id = ?"
)


class _Held(NamedTuple):
    agent: str
    cls: str
    team: str | None
    skills: dict[str, int]


class _Queued(NamedTuple):
    demand: Demand
    base_skills: dict[str, int]
    overflow_done: int


_QUEUE_COLS = "ticket_id, team, base_skills, also_teams, skills, priority, class, last_agent, queued_at, overflow_done"


def _queued(r: tuple) -> _Queued:
    demand = Demand(
        ticket_id=r[0], capacity_class=r[6], queued_at=_dt(r[8]), team=r[1], also_teams=tuple(_dec.decode(r[3])),
        skills=_dec.decode(r[4]), priority=r[5], last_agent=r[7],
    )
    return _Queued(demand, _dec.decode(r[2]), r[9])


def _describe(decision: Decision) -> str:
    """The timeline sentence: the decision's reason, then why not each other agent."""
    others = [
        f"{c.agent} {', '.join(r.text for r in c.reasons)}" if c.reasons else f"{c.agent} eligible at {c.load:.2f}"
        for c in decision.considered
        if c.agent != decision.agent
    ]
    head = f"assigned to {decision.agent}: {decision.reason.text}" if decision.agent else decision.reason.text
    if len(others) > _SHOWN_OTHERS:  # the entry's data lists every agent; the sentence stays readable
        others = [*others[:_SHOWN_OTHERS], f"{len(others) - _SHOWN_OTHERS} more"]
    return head + (f" (not chosen: {'; '.join(others)})" if others else "")


def _decision_data(decision: Decision, **extra: Any) -> dict:
    return {
        "agent": decision.agent,
        "reason": msgspec.to_builtins(decision.reason),
        "capacity_class": decision.capacity_class,
        "considered": msgspec.to_builtins(decision.considered),
        **extra,
    }


# ---------------------------------------------------------------- one transaction


class _Tx:
    """One write transaction: the connection, the directory and the time it runs at."""

    def __init__(self, conn: sqlite3.Connection, directory: Directory, now: datetime) -> None:
        self.conn, self.d, self.now, self.now_ms = conn, directory, now, _ms(now)

    # -- reads

    def ticket(self, ticket_id: str) -> _TicketRow | None:
        r = self.conn.execute(_TICKET_SQL, (ticket_id,)).fetchone()
        if r is None:
            return None
        return _TicketRow(r[0], r[1], r[2], r[3], r[4], _dec.decode(r[5]), r[6], r[7], _dt(r[8]), _dt(r[9]), r[10])

    def held(self, ticket_id: str) -> _Held | None:
        r = self.conn.execute(
            "SELECT agent_id, class, team, skills FROM assignments WHERE ticket_id = ? AND released_at IS NULL",
            (ticket_id,),
        ).fetchone()
        return _Held(r[0], r[1], r[2], _dec.decode(r[3])) if r else None

    def queued(self, ticket_id: str) -> _Queued | None:
        r = self.conn.execute(f"SELECT {_QUEUE_COLS} FROM assign_queue WHERE ticket_id = ?", (ticket_id,)).fetchone()
        return _queued(r) if r else None

    def state(self, teams: frozenset[str] | None = None) -> AssignmentState:
        """The chooser's view of the members of ``teams`` (every agent when None or empty)."""
        members, args = "", ()
        if teams:
            members = f"IN (SELECT agent_id FROM agent_teams WHERE team IN ({','.join('?' * len(teams))}))"
            args = tuple(sorted(teams))
        rows = self.conn.execute(
            "SELECT id, teams, skills, capacity, presence, roles, last_assigned_at FROM agents "
            + (f"WHERE id {members}" if members else ""), args
        ).fetchall()
        load: dict[str, dict[str, int]] = {}
        for agent, cls, n in self.conn.execute(
            "SELECT agent_id, class, count(*) FROM assignments WHERE released_at IS NULL "
            + (f"AND agent_id {members} " if members else "") + "GROUP BY agent_id, class", args
        ):
            load.setdefault(agent, {})[cls] = n
        return AssignmentState.of(
            AgentState(
                id=r[0], teams=frozenset(_dec.decode(r[1])), skills=_dec.decode(r[2]), capacity=_dec.decode(r[3]),
                presence=r[4], roles=frozenset(_dec.decode(r[5])), load=load.get(r[0], {}),
                last_assigned_at=_dt(r[6]),
            )
            for r in rows
        )

    def contact_last_agent(self, t: _TicketRow) -> str | None:
        """Who served this contact last (another ticket), for sticky assignment."""
        r = self.conn.execute(
            "SELECT a.agent_id FROM assignments a JOIN tickets t ON t.id = a.ticket_id "
            "WHERE t.contact_id = ? AND a.ticket_id != ? ORDER BY a.assigned_at DESC LIMIT 1",
            (t.contact_id, t.id),
        ).fetchone()
        return r[0] if r else None

    def demand(self, t: _TicketRow, last_agent: str | None = None, role: str | None = None) -> Demand:
        team = self.d.teams.get(t.team) if t.team else None
        sticky = team.sticky if team is not None else True
        return Demand(
            ticket_id=t.id, capacity_class=channel_class(t.channel, self.d.channel_classes), queued_at=self.now,
            team=t.team, skills=dict(t.skills), priority=t.priority,
            last_agent=last_agent if sticky else None, role=role,
        )

    def overflow_steps(self, team: str | None) -> list[OverflowStep]:
        cfg = self.d.teams.get(team) if team else None
        return list(cfg.overflow) if cfg is not None else []

    # -- writes shared by every operation

    def timeline(self, ticket_id: str, kind: str, text: str, data: dict) -> None:
        """A timeline entry on the ticket, owned like the ticket (contact and origin)."""
        self.conn.execute(
            "INSERT INTO timeline (id, contact_id, origin_contact_id, ticket_id, kind, at, text, data) "
            "SELECT ?, contact_id, origin_contact_id, id, ?, ?, ?, ? FROM tickets WHERE id = ?",
            (new_id(self.now_ms), kind, self.now_ms, text, _j(data), ticket_id),
        )

    def outbox(self, topic: str, ticket_id: str | None, payload: dict) -> None:
        self.conn.execute(
            "INSERT INTO outbox (id, topic, ticket_id, payload, created_at, next_at) VALUES (?,?,?,?,?,?)",
            (new_id(self.now_ms), topic, ticket_id, _j(payload), self.now_ms, self.now_ms),
        )

    def touch_ticket(self, ticket_id: str, **columns: Any) -> None:
        """Update ticket columns; bumps the version so a pipeline commit decided before retries."""
        sets = ", ".join(f"{col} = ?" for col in columns)
        self.conn.execute(
            f"UPDATE tickets SET {sets}, version = version + 1, updated_at = ? WHERE id = ?",
            (*columns.values(), self.now_ms, ticket_id),
        )

    # -- assignment

    def take(self, t: _TicketRow, decision: Decision, state: AssignmentState, why: str | None = None
             ) -> AssignmentState:
        """Give the ticket to the decided agent (load, assignee, timeline, event); the state after."""
        agent = decision.agent
        assert agent is not None
        after = apply_decision(state, decision, self.now)  # raises rather than over-fill: a stale state is a bug
        self.conn.execute(
            "INSERT OR REPLACE INTO assignments (ticket_id, agent_id, class, team, skills, assigned_at) "
            "VALUES (?,?,?,?,?,?)",
            (t.id, agent, decision.capacity_class, t.team, _j(t.skills), self.now_ms),
        )
        self.conn.execute("UPDATE agents SET last_assigned_at = ? WHERE id = ?", (self.now_ms, agent))
        self.conn.execute("DELETE FROM assign_queue WHERE ticket_id = ?", (t.id,))
        self.touch_ticket(t.id, assignee=agent)
        text = _describe(decision) + (f" — {why}" if why else "")
        self.timeline(t.id, "assignment", text, _decision_data(decision, previous=t.assignee, why=why))
        self.outbox("ticket.assigned", t.id, {
            "ticket_id": t.id, "agent_id": agent, "previous": t.assignee, "reason": decision.reason.code,
        })
        return after

    def pin(self, t: _TicketRow, agent: str, why: str) -> None:
        """Hold capacity for an assignee a rule named (explicit: capacity does not refuse it)."""
        cls = channel_class(t.channel, self.d.channel_classes)
        self.conn.execute(
            "INSERT OR REPLACE INTO assignments (ticket_id, agent_id, class, team, skills, assigned_at) "
            "VALUES (?,?,?,?,?,?)",
            (t.id, agent, cls, t.team, _j(t.skills), self.now_ms),
        )
        self.conn.execute("UPDATE agents SET last_assigned_at = ? WHERE id = ?", (self.now_ms, agent))
        self.conn.execute("DELETE FROM assign_queue WHERE ticket_id = ?", (t.id,))
        self.timeline(t.id, "assignment", f"assigned to {agent}: {why}",
                      {"agent": agent, "reason": {"code": "pinned", "text": why}, "capacity_class": cls})

    def release(self, ticket_id: str) -> str | None:
        """Free the ticket's capacity; returns the agent it was held by."""
        r = self.conn.execute(
            "UPDATE assignments SET released_at = ? WHERE ticket_id = ? AND released_at IS NULL RETURNING agent_id",
            (self.now_ms, ticket_id),
        ).fetchone()
        return r[0] if r else None

    def assign(self, t: _TicketRow, demand: Demand, why: str | None = None) -> Decision:
        """Choose for ``demand``: take the ticket, or queue it saying why."""
        state = self.state(demand.teams())
        decision = choose_agent(state, demand)
        if decision.agent is not None:
            self.take(t, decision, state, why)
        else:
            self.enqueue(t, demand, decision)
        return decision

    def enqueue(self, t: _TicketRow, demand: Demand, decision: Decision) -> None:
        """Queue the ticket (once: a later failed attempt only refreshes the reason)."""
        reason = _describe(decision)
        if self.conn.execute("UPDATE assign_queue SET reason = ? WHERE ticket_id = ?", (reason, t.id)).rowcount:
            return
        steps = self.overflow_steps(demand.team)
        self.conn.execute(
            "INSERT INTO assign_queue (ticket_id, team, base_skills, also_teams, skills, priority, rank, class, "
            "last_agent, queued_at, overflow_at, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (t.id, demand.team, _j(t.skills), _j(list(demand.also_teams)), _j(demand.skills), demand.priority,
             PRIORITY_RANK.get(demand.priority, len(PRIORITY_RANK)), demand.capacity_class, demand.last_agent,
             _ms(demand.queued_at), _ms(demand.queued_at + steps[0].wait()) if steps else None, reason),
        )
        where = f"team {demand.team}" if demand.team else "the general queue"
        self.timeline(t.id, "assignment", f"queued in {where}: {reason}", _decision_data(decision, queued=True))

    def ensure(self, t: _TicketRow) -> Decision | None:
        """Bring the ticket's assignment in line with the ticket (idempotent).

        Open ticket held by its assignee with unchanged team/skills: nothing.
        A rule named another assignee: pin. Team or skills changed: choose
        again (the previous agent is preferred if still eligible). Not held
        and not queued: choose (a reopened ticket prefers its last agent).
        """
        if t.status not in OPEN_STATUSES:
            self.release(t.id)
            self.conn.execute("DELETE FROM assign_queue WHERE ticket_id = ?", (t.id,))
            return None
        held = self.held(t.id)
        if held is not None:
            if t.assignee and t.assignee != held.agent:
                self.pin(t, t.assignee, "named by a routing rule")
                return None
            if held.team == t.team and held.skills == t.skills:
                return None
            self.release(t.id)
            return self.assign(t, self.demand(t, held.agent), f"team/skills changed to {self._wants(t)}")
        queued = self.queued(t.id)
        if queued is not None:
            if queued.demand.team == t.team and queued.base_skills == t.skills:
                return None
            self.conn.execute("DELETE FROM assign_queue WHERE ticket_id = ?", (t.id,))
            return self.assign(t, self.demand(t, queued.demand.last_agent), f"team/skills changed to {self._wants(t)}")
        previous = self.conn.execute("SELECT agent_id FROM assignments WHERE ticket_id = ?", (t.id,)).fetchone()
        if previous is None and t.assignee:
            self.pin(t, t.assignee, "named by a routing rule")
            return None
        last = previous[0] if previous else self.contact_last_agent(t)
        return self.assign(t, self.demand(t, last), "reopened" if previous else None)

    @staticmethod
    def _wants(t: _TicketRow) -> str:
        skills = ", ".join(f"{s}≥{lvl}" for s, lvl in sorted(t.skills.items()))
        return f"team {t.team or '-'}" + (f", skills {skills}" if skills else "")

    def drain(self, teams: frozenset[str] | None = None) -> list[Decision]:
        """Serve the queue in order (priority, then age) for agents of ``teams`` (all when None).

        One state for the whole drain, updated after each decision, so the
        queue is served as :func:`routing.assign.drain_queue` would.
        """
        rows = self.conn.execute(
            f"SELECT {_QUEUE_COLS} FROM assign_queue ORDER BY rank, queued_at, ticket_id LIMIT ?", (_DRAIN_LIMIT,)
        ).fetchall()
        state = self.state(None)
        decisions = []
        for q in map(_queued, rows):
            wanted = q.demand.teams()
            if teams is not None and wanted and not wanted & teams:
                continue
            decision = choose_agent(state, q.demand)
            if decision.agent is None:
                continue
            t = self.ticket(q.demand.ticket_id)
            if t is None or t.status not in OPEN_STATUSES:
                self.conn.execute("DELETE FROM assign_queue WHERE ticket_id = ?", (q.demand.ticket_id,))
                continue
            waited = int((self.now - q.demand.queued_at).total_seconds() // 60)
            state = self.take(t, decision, state, f"from the queue after {waited}m")
            decisions.append(decision)
        return decisions

    def teams_of(self, agent_id: str) -> frozenset[str]:
        return frozenset(r[0] for r in self.conn.execute("SELECT team FROM agent_teams WHERE agent_id = ?",
                                                         (agent_id,)))

    # -- overflow

    def overflow(self, limit: int) -> int:
        """Take every overflow step that is due; returns how many tickets moved."""
        rows = self.conn.execute(
            f"SELECT {_QUEUE_COLS} FROM assign_queue WHERE overflow_at <= ? ORDER BY overflow_at LIMIT ?",
            (self.now_ms, limit),
        ).fetchall()
        for q in map(_queued, rows):
            self._overflow_one(q)
        return len(rows)

    def _overflow_one(self, q: _Queued) -> None:
        d = q.demand
        steps = self.overflow_steps(d.team)
        due = overflow_due(steps, d.queued_at, self.now, q.overflow_done)
        widened = apply_overflow(d, [s.step for s in due])
        done = q.overflow_done + len(due)
        nxt = _ms(d.queued_at + steps[done].wait()) if done < len(steps) else None
        self.conn.execute(
            "UPDATE assign_queue SET also_teams = ?, skills = ?, priority = ?, rank = ?, overflow_done = ?, "
            "overflow_at = ? WHERE ticket_id = ?",
            (_j(list(widened.also_teams)), _j(widened.skills), widened.priority,
             PRIORITY_RANK.get(widened.priority, len(PRIORITY_RANK)), done, nxt, d.ticket_id),
        )
        for step in due:
            self.timeline(d.ticket_id, "assignment", f"overflow: {step.text}",
                          {"overflow_step": step.index, "after": str(step.step.after)})
        if widened.priority != d.priority:
            self.touch_ticket(d.ticket_id, priority=widened.priority)
        t = self.ticket(d.ticket_id)
        if t is None:
            return
        state = self.state(widened.teams())
        decision = choose_agent(state, widened)
        if decision.agent is not None:
            self.take(t, decision, state, "after overflow")
        else:
            self.conn.execute("UPDATE assign_queue SET reason = ? WHERE ticket_id = ?",
                              (_describe(decision), d.ticket_id))

    # -- status

    def set_status(self, ticket_id: str, status: str, actor: str) -> bool:
        """Change the status (False when it already is); frees or retakes capacity, re-times the SLA."""
        t = self.ticket(ticket_id)
        if t is None:
            raise NotFound(f"ticket {ticket_id} not found")
        if status == t.status:
            return False
        if status not in TRANSITIONS[t.status]:
            allowed = ", ".join(sorted(TRANSITIONS[t.status])) or "nothing (closed is final)"
            raise InvalidTransition(f"ticket {ticket_id} is {t.status}: it can become {allowed}, not {status}")
        columns: dict[str, Any] = {"status": status}
        if status == "solved":
            columns["solved_at"] = self.now_ms
        elif status == "closed":
            columns["closed_at"] = self.now_ms
        else:
            columns["solved_at"] = None
        self.touch_ticket(ticket_id, **columns)
        self.timeline(ticket_id, "status", f"status: {t.status} → {status} by {actor}",
                      {"from": t.status, "to": status, "actor": actor})
        self.outbox("ticket.status_changed", ticket_id, {"ticket_id": ticket_id, "from": t.status, "to": status,
                                                          "actor": actor})
        freed = self.release(ticket_id) if status in RELEASING else None
        updated = self.ticket(ticket_id)
        assert updated is not None
        self.ensure(updated)
        self.sla_sync(updated)
        if freed is not None:
            self.drain(self.teams_of(freed))
        return True

    # -- presence

    def set_presence(self, agent_id: str, presence: str, return_chats: bool, actor: str) -> list[str]:
        """Set presence; optionally put the agent's open chats back; drain the agent's teams."""
        r = self.conn.execute("SELECT presence FROM agents WHERE id = ?", (agent_id,)).fetchone()
        if r is None:
            raise NotFound(f"agent {agent_id} not found")
        if r[0] != presence:
            self.conn.execute("UPDATE agents SET presence = ?, presence_at = ?, updated_at = ? WHERE id = ?",
                              (presence, self.now_ms, self.now_ms, agent_id))
            self.conn.execute("INSERT INTO audit (at, actor, action, subject, data) VALUES (?,?,?,?,?)",
                              (self.now_ms, actor, "agent.presence", agent_id, _j({"from": r[0], "to": presence})))
        returned = self._return_chats(agent_id) if return_chats and presence != "online" else []
        self.drain(self.teams_of(agent_id))
        return returned

    def _return_chats(self, agent_id: str) -> list[str]:
        ids = [r[0] for r in self.conn.execute(
            "SELECT ticket_id FROM assignments WHERE agent_id = ? AND class = 'chat' AND released_at IS NULL "
            "ORDER BY assigned_at", (agent_id,))]
        for ticket_id in ids:
            self.release(ticket_id)
            self.touch_ticket(ticket_id, assignee=None)
            t = self.ticket(ticket_id)
            assert t is not None
            self.timeline(ticket_id, "assignment", f"returned to the queue: {agent_id} signed off",
                          {"agent": None, "previous": agent_id, "reason": {"code": "returned", "text": "signed off"}})
            self.assign(t, self.demand(t))
        return ids

    # -- SLA

    def sla_sync(self, t: _TicketRow) -> None:
        """Recompute the ticket's SLA (policy, state, due events) from its current facts."""
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
        state = sla_state(clock, self.now, policy, calendar)
        self.conn.execute("UPDATE tickets SET sla = ? WHERE id = ?", (_j(state), t.id))
        self._save_clock(clock)
        self.conn.execute("DELETE FROM sla_timers WHERE ticket_id = ?", (t.id,))
        for ev in due_events(clock, self.now, policy, calendar):
            self.conn.execute(
                "INSERT INTO sla_timers (ticket_id, key, kind, target, policy, since, due_at) VALUES (?,?,?,?,?,?,?)",
                (t.id, ev.key, ev.kind, ev.target, policy.id, _ms(ev.since), _ms(ev.at)),
            )

    def _sla_clear(self, t: _TicketRow, clock: SlaClock) -> None:
        if clock.policy:
            self.timeline(t.id, "sla", "no SLA policy matches any more", {"policy": None})
        clock.policy = ""
        self._save_clock(clock)
        self.conn.execute("UPDATE tickets SET sla = NULL WHERE id = ?", (t.id,))
        self.conn.execute("DELETE FROM sla_timers WHERE ticket_id = ?", (t.id,))

    def _save_clock(self, clock: SlaClock) -> None:
        self.conn.execute("INSERT OR REPLACE INTO sla_clocks (ticket_id, policy, clock) VALUES (?,?,?)",
                          (clock.ticket_id, clock.policy or None, _j(clock)))

    def _responses(self, t: _TicketRow) -> tuple[datetime | None, datetime | None]:
        """(first response, first customer message not answered since the last response).

        A response is a public agent reply (``routing.sla.response_verdict``);
        ``tickets.first_response_at`` counts too, whoever set it.
        """
        first, last_reply, awaiting = t.first_response_at, None, None
        for kind, at_ms, data in self.conn.execute(
            "SELECT kind, at, data FROM timeline WHERE ticket_id = ? AND kind IN ('message_in', 'message_out') "
            "ORDER BY at, seq", (t.id,)):
            at = _dt(at_ms)
            if kind == "message_in":
                awaiting = awaiting or at
            elif response_verdict(TimelineEntry("", "", kind, at, data=_dec.decode(data) if data else {})).counts:
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
                event = SlaEvent(kind, target, _dt(due_at), _dt(since))
                self._fire(t, self.d.policy(policy_id), event, key)
                fired.append(event)
            if due:
                t = self.ticket(ticket_id)
                assert t is not None
                self.sla_sync(t)
        return fired

    def _fire(self, t: _TicketRow, policy: SlaPolicy, event: SlaEvent, key: str) -> None:
        self.conn.execute("DELETE FROM sla_timers WHERE ticket_id = ? AND key = ?", (t.id, key))
        r = self.conn.execute("SELECT clock FROM sla_clocks WHERE ticket_id = ?", (t.id,)).fetchone()
        clock = _clock_dec.decode(r[0])
        clock.fired.append(key)
        self._save_clock(clock)
        self.conn.execute(
            "INSERT INTO sla_events (ticket_id, policy, kind, target, due_at, fired_at) VALUES (?,?,?,?,?,?)",
            (t.id, policy.id, event.kind, event.target, _ms(event.at), self.now_ms))
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
            case ReassignToLead(team=team):
                self._to_lead(t, team or t.team, why)
            case NotifyWebhook(name=name):
                self.outbox("sla.escalation", t.id, {**payload, "event": event.kind, "webhook": name})

    def _to_lead(self, t: _TicketRow, team: str | None, why: str) -> None:
        lead = msgspec.structs.replace(self.demand(t), team=team, role="lead", last_agent=None)
        state = self.state(lead.teams())
        decision = choose_agent(state, lead)
        if decision.agent is None or decision.agent == t.assignee:
            text = "already with a lead" if decision.agent else f"no lead available: {_describe(decision)}"
            self.timeline(t.id, "sla", f"{why}: reassign to a lead: {text}", _decision_data(decision))
            return
        self.release(t.id)
        state = self.state(lead.teams())  # the released load counts again
        self.take(t, choose_agent(state, lead), state, f"{why}: reassigned to a lead")

    # -- directory

    def load_agents(self, agents: list[Agent]) -> None:
        """Upsert the directory's agents (presence is kept: it belongs to the API)."""
        for a in agents:
            self.conn.execute(
                "INSERT INTO agents (id, name, login, roles, teams, skills, capacity, presence, presence_at, "
                "updated_at) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
                "login = excluded.login, roles = excluded.roles, teams = excluded.teams, skills = excluded.skills, "
                "capacity = excluded.capacity, updated_at = excluded.updated_at",
                (a.id, a.name, a.login, _j(a.roles), _j(a.teams), _j(a.skills), _j(a.capacity), a.presence,
                 self.now_ms, self.now_ms),
            )
        ids = [a.id for a in agents]
        marks = ",".join("?" * len(ids))
        self.conn.execute(f"DELETE FROM agents WHERE id NOT IN ({marks})", ids)
        self.conn.execute("DELETE FROM agent_teams")
        self.conn.executemany("INSERT INTO agent_teams (team, agent_id) VALUES (?, ?)",
                              [(team, a.id) for a in agents for team in a.teams])


# ---------------------------------------------------------------- reads


_AGENT_COLS = "id, name, login, roles, teams, skills, capacity, presence, presence_at, last_assigned_at"


def _agents(conn: sqlite3.Connection, agent_id: str | None) -> list[AgentView]:
    where, args = ("WHERE id = ?", (agent_id,)) if agent_id else ("", ())
    rows = conn.execute(f"SELECT {_AGENT_COLS} FROM agents {where} ORDER BY id", args).fetchall()
    held: dict[str, dict[str, int]] = {}
    tickets: dict[str, list[str]] = {}
    for agent, cls, ticket_id in conn.execute(
            "SELECT agent_id, class, ticket_id FROM assignments WHERE released_at IS NULL ORDER BY assigned_at"):
        held.setdefault(agent, {}).setdefault(cls, 0)
        held[agent][cls] += 1
        tickets.setdefault(agent, []).append(ticket_id)
    return [AgentView(
        id=r[0], name=r[1], login=r[2], roles=_dec.decode(r[3]), teams=_dec.decode(r[4]), skills=_dec.decode(r[5]),
        capacity=_dec.decode(r[6]), presence=r[7], presence_at=_dt(r[8]), last_assigned_at=_dt(r[9]),
        load=held.get(r[0], {}), tickets=tickets.get(r[0], []),
    ) for r in rows]


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


def _changed_tickets(conn: sqlite3.Connection, cursor: str | None, limit: int) -> tuple[list[str], str | None]:
    at, _, last_id = (cursor or "0:").partition(":")
    rows = conn.execute(
        "SELECT id, updated_at FROM tickets WHERE updated_at > ? OR (updated_at = ? AND id > ?) "
        "ORDER BY updated_at, id LIMIT ?", (int(at), int(at), last_id, limit)).fetchall()
    return [r[0] for r in rows], f"{rows[-1][1]}:{rows[-1][0]}" if rows else cursor


# ---------------------------------------------------------------- the mixin


def _sync(tx: _Tx, ticket_ids: list[str]) -> list[Decision]:
    decisions = []
    for ticket_id in ticket_ids:
        t = tx.ticket(ticket_id)
        if t is None:
            continue
        decision = tx.ensure(t)
        if decision is not None:
            decisions.append(decision)
        t = tx.ticket(ticket_id)
        assert t is not None
        tx.sla_sync(t)
    return decisions


def _assign_next(tx: _Tx, ticket_id: str) -> Decision:
    t = tx.ticket(ticket_id)
    if t is None:
        raise NotFound(f"ticket {ticket_id} not found")
    if t.status not in OPEN_STATUSES:
        raise StoreError(f"ticket {ticket_id} is {t.status}: only open tickets are assigned")
    held = tx.held(t.id)
    if held is not None:
        tx.release(t.id)
    queued = tx.queued(t.id)
    last = held.agent if held else queued.demand.last_agent if queued else tx.contact_last_agent(t)
    demand = tx.demand(t, last)
    if queued is not None:  # keep its age and what overflow widened
        demand = msgspec.structs.replace(queued.demand, priority=t.priority)
    return tx.assign(t, demand)


class AssignOps:
    """Mixed into SQLiteStore: agents, presence, assign_next, queues, status, SLA timers.

    ``directory_load`` must run first: it gives the store the directory
    (teams, overflow, policies, calendars) the other operations decide with.
    """

    _directory: Directory | None = None

    def _dir(self) -> Directory:
        if self._directory is None:
            raise StoreError("no directory loaded (directory_load first)")
        return self._directory

    async def _tx(self, now: datetime, fn: Any, *args: Any) -> Any:
        directory = self._dir()
        return await self._write(lambda conn: fn(_Tx(conn, directory, now), *args))  # type: ignore[attr-defined]

    async def directory_load(self, directory: Directory, now: datetime) -> list[Decision]:
        """Use ``directory``: upsert its agents, then drain every queue (capacity may have grown)."""
        self._directory = directory
        agents = directory.agent_models()

        def load(tx: _Tx) -> list[Decision]:
            tx.load_agents(agents)
            return tx.drain(None)

        return await self._tx(now, load)

    async def list_agents(self) -> list[AgentView]:
        return await self._read(_agents, None)  # type: ignore[attr-defined]

    async def get_agent(self, agent_id: str) -> AgentView | None:
        found = await self._read(_agents, agent_id)  # type: ignore[attr-defined]
        return found[0] if found else None

    async def set_presence(self, agent_id: str, presence: str, now: datetime, *, return_chats: bool = False,
                           actor: str = "api") -> list[str]:
        """Set an agent's presence and drain its teams' queues; returns the chat tickets put back."""
        return await self._tx(now, _Tx.set_presence, agent_id, presence, return_chats, actor)

    async def assign_next(self, ticket_id: str, now: datetime) -> Decision:
        """Choose an agent for the ticket now (again, if it was held), or queue it."""
        return await self._tx(now, _assign_next, ticket_id)

    async def ticket_sync(self, ticket_ids: list[str], now: datetime) -> list[Decision]:
        """Bring assignment and SLA in line with each ticket (idempotent).

        Called after a pipeline commit and by the scheduler's sweep; the
        replies engine calls it after setting ``first_response_at``.
        """
        return await self._tx(now, _sync, list(ticket_ids))

    async def set_status(self, ticket_id: str, status: str, now: datetime, actor: str = "api") -> bool:
        """Change a ticket's status (raises InvalidTransition); False when unchanged."""
        return await self._tx(now, _Tx.set_status, ticket_id, status, actor)

    async def overflow_due(self, now: datetime, limit: int = 200) -> int:
        return await self._tx(now, _Tx.overflow, limit)

    async def sla_fire_due(self, now: datetime, limit: int = 200) -> list[SlaEvent]:
        return await self._tx(now, _Tx.fire_due, limit)

    async def changed_tickets(self, cursor: str | None, limit: int = 500) -> tuple[list[str], str | None]:
        """Tickets updated after ``cursor`` (None: all), oldest change first, and the cursor after them."""
        return await self._read(_changed_tickets, cursor, limit)  # type: ignore[attr-defined]

    async def assign_stats(self) -> dict:
        return await self._read(_stats)  # type: ignore[attr-defined]

