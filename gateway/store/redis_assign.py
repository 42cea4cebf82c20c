"""Agents, presence, assignment queues and SLA timers on the Redis backend.

The same decisions as the SQLite backend (``sqlite_assign``, ``sqlite_sla``:
the pure deciders of ``routing.assign`` and ``routing.sla``), with the same
timeline sentences, events and stats, shared by every instance.

Atomicity across instances. Every operation (directory load, put_agent,
presence, assign_next, ticket_sync, status, overflow, SLA firing) runs as
one *assignment step*:

1. it takes the lease ``assign`` (the LEASE script: one holder at a time,
   a fresh token per step, a TTL so a dead instance's step expires);
2. it reads what it needs (tickets, held assignments, queue rows, agents'
   presence and load, SLA clocks and timers) into an in-memory unit of work
   (:class:`_Step`) and runs the deciders on it, each read seeing the step's
   own earlier changes (``assign_next`` reads its ticket in the lease's own
   round trip, then the contact and the live state of the teams the ticket
   goes to in one more: three round trips with the write). The agents' live
   state (presence, last assignment, load) comes from the instance's cache
   where it holds it: every writer of that state bumps ``agents_live_seq``
   and the agent's entry in ``agents_live_v`` in the same script, the lease's
   round trip reads the counter (and, when it moved since the cache, every
   agent's version, so the changed ones are dropped), and a step's own writes
   go into the cache after its APPLY. A stale load can only make a decision
   worse, never over-fill: the APPLY's load guard (3.) compares with Redis,
   and a failed step drops the cache;
3. it writes everything in ONE ``APPLY`` program guarded by: the lease still
   being held by this step's token (a fence: a step whose lease expired
   writes nothing), each agent's load per capacity class still being the
   value the decision read (so no script can ever fill an agent above its
   capacity, whatever happened), and each ticket's ``version`` still being
   the one read (a pipeline commit in between makes the step run again).
   The lease's release is the program's last write.

So assignment and agent load change in one Lua script, decisions are
serialised across instances like the SQLite writer serialises them, and a
due SLA timer or overflow step is taken and deleted by exactly one step: it
fires on exactly one instance.

The pipeline commit and the assignment step are not one script: the commit
lands first (``RedisStore.commit``), then the after-commit hook runs
``ticket_sync`` (idempotent: it brings the ticket's assignment and SLA in
line with the ticket, and does nothing when they already are). The commit
adds the ticket to ``tickets_changed``; the scheduler's sweep
(``changed_tickets``) syncs every ticket changed since its cursor, so a
crash between a commit and its hook is repaired by the next sweep on any
instance. A synced ticket is marked with the ``updated_at:version`` it was
synced at, so the sweep skips it (whichever instance synced it).
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from typing import Any, Awaitable, Callable

import msgspec
import structlog

from gateway.store.redis_codec import dt as _dt, evalsha, j as _j, ms as _ms, s as _s
from gateway.store.redis_keys import Keys
from gateway.store.base import AgentView, Conflict, InvalidTransition, NotFound, StoreError
from gateway.store.sqlite_assign import (
    RELEASING,
    TRANSITIONS,
    TicketRow,
    _DRAIN_LIMIT,
    _Fixed,
    _Held,
    _Queued,
    decision_data,
    describe,
)
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
    evaluate,
    reply_counts_at,
    responses_in,
    select_policy,
    sla_state,
)

log = structlog.get_logger(__name__)

_dec = msgspec.json.Decoder()
_clock_dec = msgspec.json.Decoder(SlaClock)

#: Read-only: each agent's presence, last assignment, load and live version in one round
#: trip (KEYS: presence hash, last hash, agents_live_v, then each agent's load hash;
#: ARGV: the agent ids).
LIVE_LUA = """
local out = {}
for i = 1, #ARGV do
  out[i] = {redis.call('HGET', KEYS[1], ARGV[i]) or false, redis.call('HGET', KEYS[2], ARGV[i]) or false,
            redis.call('HGETALL', KEYS[3 + i]), redis.call('HGET', KEYS[3], ARGV[i]) or false}
end
return out
"""

#: Read-only, sent with the lease: the agents' live counter, and the live version of every
#: agent when it is not the one the caller's cache holds (KEYS: agents_live_seq,
#: agents_live_v; ARGV[1]: the counter the cache was taken at, '' for no cache).
LIVE_SEQ_LUA = """
local seq = redis.call('GET', KEYS[1]) or '0'
if ARGV[1] == '' or seq == ARGV[1] then return {seq} end
return {seq, redis.call('HGETALL', KEYS[2])}
"""

LOCK = "assign"
#: how long an instance decides from its cache of the agents' live state before it reads
#: it all again: a bound on what a writer that did not bump the live counter (an instance
#: of an older version during a rolling update) can leave stale; most steps still hit it
LIVE_CACHE_S = 2.0
#: the assignment lease's time to live: a step must finish within it (it takes milliseconds)
LOCK_TTL_S = 10.0
#: how long a step waits for the lease before giving up (StoreError)
LOCK_WAIT_S = 30.0
_RETRIES = 50
_RANK_SCALE = 10**13  # queue score: rank × scale + queued_at ms (exact in a double up to rank 900)


def _queue_score(rank: int, queued_at_ms: int) -> int:
    return rank * _RANK_SCALE + queued_at_ms


def _queued_of(ticket_id: str, q: dict) -> _Queued:
    demand = Demand(ticket_id=ticket_id, capacity_class=q["class"], queued_at=_dt(q["queued_at"]), team=q["team"],
                    also_teams=tuple(q["also_teams"]), skills=q["skills"], priority=q["priority"],
                    last_agent=q["last_agent"])
    return _Queued(demand, q["base_skills"], q["overflow_done"])


_TICKET_COLS = ("contact_id", "origin_contact_id", "status", "priority", "team", "skills", "assignee", "reply_to",
                "channels", "created_at", "first_response_at", "version", "solved_at", "updated_at", "sla")


def _ticket_reads(pipe: Any, k: Keys, ticket_id: str) -> None:
    """The four reads :meth:`_Step.ticket` starts from, queued on ``pipe``."""
    pipe.hmget(k.ticket(ticket_id), *_TICKET_COLS)
    pipe.get(k.ticket_held(ticket_id))
    pipe.hmget(k.ticket_assignment(ticket_id), "agent", "team", "skills")
    pipe.hget(k.assign_queue_items, ticket_id)


class _NeedsStep(Exception):
    """A read-only look (no lease) found something to write: the full step must run."""


class _Step:
    """One assignment step: reads through to Redis once, keeps the step's own
    changes in memory (so later reads see them), and collects every write
    into one guarded APPLY program (:meth:`flush`)."""

    def __init__(self, store: Any, directory: Directory, now: datetime, holder: str | None) -> None:
        from gateway.store.redis_store import Tx

        self.s, self.k, self.r, self.d = store, store.k, store.r, directory
        self.now, self.now_ms = now, _ms(now)
        self.tx = Tx()
        #: None: a read-only look without the lease (``ticket_sync``'s fast path):
        #: its first write raises _NeedsStep
        self.holder = holder
        if holder is not None:
            self.tx.value_is(self.k.lease(LOCK), holder)  # the fence
        else:
            self.tx.op = self._refuse  # type: ignore[method-assign]
        self._tickets: dict[str, TicketRow | None] = {}
        self._trow: dict[str, dict] = {}  # id → {contact, origin, version, updated_at, solved_at, touched}
        self._held: dict[str, _Held | None] = {}
        self._ever: dict[str, str | None] = {}
        self._queue: dict[str, dict | None] = {}
        self._queue_dirty: set[str] = set()
        self._load: dict[str, dict[str, int]] = {}
        self._load_read: dict[str, dict[str, str]] = {}
        self._load_written: set[tuple[str, str]] = set()
        self._presence: dict[str, str] = {}
        self._last: dict[str, datetime | None] = {}
        #: agent → its live version as this step knows it (read, or from the store's cache)
        self._live_ver: dict[str, int] = {}
        #: agents whose presence, last assignment or load this step writes (their live
        #: version is bumped in the APPLY program)
        self._live_dirty: set[str] = set()
        #: the live counter at the lease (None: no cache use — a look without the lease)
        self._live_seq: int | None = None
        self._clock_raw: dict[str, str | None] = {}
        self._clock_dirty: dict[str, str] = {}
        self._timers: dict[str, dict[str, list]] = {}
        self._timers_dirty: set[str] = set()
        self._entries: list[tuple[TimelineEntry, str]] = []
        self._outbox: list[tuple[str, str | None, dict]] = []
        self._synced: set[str] = set()
        self.fixed: dict[str, _Fixed] = {}
        self.members: dict[str, tuple[str, ...]] = {}
        #: ticket id → its four reads, sent with the lease (``_lock``'s prefetch)
        self._prefetched: dict[str, list] = {}
        #: contact id → its tickets, read ahead with a ticket (``ticket(ahead=True)``)
        self._contact_tickets: dict[str, list[str]] = {}

    def _writing(self) -> None:
        if self.holder is None:
            raise _NeedsStep

    def _refuse(self, *args: Any) -> None:
        raise _NeedsStep

    async def start(self, version: str | None, prefetched: dict[str, list] | None = None,
                    live: list | None = None) -> "_Step":
        """``live``: the LIVE_SEQ answer read with the lease (the store's cache of the
        agents' live state is checked against it: see :meth:`RedisAssignOps._live_check`)."""
        self.fixed, self.members = await self.s._agent_cache_current(version)
        self._prefetched = prefetched or {}
        if live is not None and self.holder is not None:
            self._live_seq = self.s._live_check(version, live)
        return self

    def _from_cache(self, ids: list[str]) -> list[str]:
        """Fill the live state of ``ids`` from the store's cache where it holds them
        (only under the lease, at the counter it was checked against); the ids still to read."""
        if self._live_seq is None:
            return [i for i in ids if i not in self._presence]
        cache = self.s._live_cache
        want = []
        for i in ids:
            if i in self._presence:
                continue
            got = cache.get(i)
            if got is None:
                want.append(i)
                continue
            self._presence[i], self._last[i], self._load_read[i], load, self._live_ver[i] = got
            self._load[i] = dict(load)
        return want

    async def _x(self, coro: Awaitable) -> Any:
        return await self.s._call(coro)

    # -- reads: tickets

    async def ticket(self, ticket_id: str, ahead: bool = False) -> TicketRow | None:
        """The ticket as this step sees it. ``ahead`` (an assignment of this
        ticket follows): the contact's tier, the contact's tickets (sticky
        assignment) and the live state of the members of the teams the ticket
        will be offered to are read in the same round trip — under the lease
        nothing else writes them, and the step's own changes apply on top."""
        if ticket_id in self._tickets:
            return self._tickets[ticket_id]
        k = self.k
        rows = self._prefetched.pop(ticket_id, None)
        if rows is None:
            pipe = self.r.pipeline(transaction=False)
            _ticket_reads(pipe, k, ticket_id)
            rows = await self._x(pipe.execute())
        fields, held, asg, queued = rows
        if ticket_id not in self._held:
            self._held_of(ticket_id, held, asg)
        if ticket_id not in self._queue:
            self._queue[ticket_id] = _dec.decode(queued) if queued else None
        r = dict(zip(_TICKET_COLS, fields))
        if r["version"] is None:
            self._tickets[ticket_id] = None
            return None
        contact = _s(r["contact_id"])
        if ahead:
            tier = await self._read_ahead(contact, self._queue[ticket_id], _s(r["team"]))
        else:
            tier = await self._x(self.r.hget(k.contact(contact), "tier"))
        reply_to = _dec.decode(r["reply_to"]) if r["reply_to"] else None
        channels = _dec.decode(r["channels"]) if r["channels"] else []
        channel = (reply_to or {}).get("channel") or (channels[0] if channels else "")
        row = TicketRow(ticket_id, _s(r["contact_id"]), _s(r["status"]), _s(r["priority"]) or "normal",
                        _s(r["team"]), _dec.decode(r["skills"]) if r["skills"] else {}, _s(r["assignee"]), channel,
                        _dt(r["created_at"]), _dt(r["first_response_at"]), _s(tier))
        self._tickets[ticket_id] = row
        self._trow[ticket_id] = {"contact": _s(r["contact_id"]), "origin": _s(r["origin_contact_id"]) or
                                 _s(r["contact_id"]), "version": int(r["version"]),
                                 "updated_at": int(r["updated_at"] or 0), "solved_at": _s(r["solved_at"]),
                                 "sla": _s(r["sla"]), "touched": 0}
        self.tx.hash_is(k.ticket(ticket_id), "version", _s(r["version"]))
        return row

    async def _read_ahead(self, contact: str, queued: dict | None, team: str | None) -> Any:
        """One round trip: the contact's tier (returned), its tickets, and the live
        state of the members of the teams a demand for the ticket names (the
        queued demand's, else the ticket's team; every agent when none)."""
        k = self.k
        if queued is not None:
            teams = frozenset((queued["team"], *queued["also_teams"])) if queued["team"] is not None else frozenset()
        else:
            teams = frozenset((team,)) if team is not None else frozenset()
        want = self._from_cache(self._member_ids(teams))
        live = self.s._live_lua()

        def build(pipe: Any) -> None:
            pipe.hget(k.contact(contact), "tier")
            pipe.zrange(k.contact_tickets(contact), 0, -1)
            if want:
                evalsha(pipe, live, [k.agent_presence, k.agent_last, k.agents_live_v] +
                        [k.agent_load(i) for i in want], want)

        tier, tickets, *res = await self.s._pipelined(build, (live,))
        self._contact_tickets[contact] = [_s(i) for i in tickets]
        if want:
            self._live_of(want, res[0])
        return tier

    def touch_ticket(self, ticket_id: str, **columns: Any) -> None:
        """Update ticket fields (None: removed); bumps the version like SQLite's touch."""
        k = self.k
        key = k.ticket(ticket_id)
        row = self._tickets.get(ticket_id)
        meta = self._trow[ticket_id]
        for col, value in columns.items():
            if value is None:
                self.tx.op("HDEL", key, col)
            else:
                self.tx.op("HSET", key, col, value)
            if row is not None and col in ("assignee", "priority", "status", "team"):
                row = row._replace(**{col: value})
            if col == "solved_at":
                meta["solved_at"] = None if value is None else str(value)
        self._tickets[ticket_id] = row
        self.tx.op("HSET", key, "updated_at", self.now_ms)
        self.tx.op("HINCRBY", key, "version", 1)
        self.tx.op("ZADD", k.tickets_changed, self.now_ms, ticket_id)
        self.tx.reindex(key, ticket_id, k.ticket_index_base)  # the list indexes follow (redis_api.py)
        meta["touched"] += 1
        meta["updated_at"] = self.now_ms

    # -- reads: assignment

    async def held(self, ticket_id: str) -> _Held | None:
        if ticket_id not in self._held:
            held = await self._x(self.r.get(self.k.ticket_held(ticket_id)))
            asg = await self._x(self.r.hmget(self.k.ticket_assignment(ticket_id), "agent", "team", "skills"))
            self._held_of(ticket_id, held, asg)
        return self._held[ticket_id]

    def _held_of(self, ticket_id: str, held_raw: Any, asg: list) -> None:
        held = _s(held_raw)
        self._ever[ticket_id] = _s(asg[0])
        if held:
            agent, cls = held.split(" ", 1)
            self._held[ticket_id] = _Held(agent, cls, _s(asg[1]) or None, _dec.decode(asg[2]) if asg[2] else {})
        else:
            self._held[ticket_id] = None

    async def previous_agent(self, ticket_id: str) -> str | None:
        """The agent of the ticket's last assignment, held or released."""
        await self.held(ticket_id)
        return self._ever.get(ticket_id)

    async def queued(self, ticket_id: str) -> _Queued | None:
        if ticket_id not in self._queue:
            raw = await self._x(self.r.hget(self.k.assign_queue_items, ticket_id))
            self._queue[ticket_id] = _dec.decode(raw) if raw else None
        q = self._queue[ticket_id]
        return _queued_of(ticket_id, q) if q is not None else None

    def _dequeue(self, ticket_id: str) -> None:
        self._queue[ticket_id] = None
        self._writing()
        self._queue_dirty.add(ticket_id)

    async def _live(self, ids: list[str]) -> None:
        """Presence, last assignment and load of ``ids`` not read yet (one round trip)."""
        want = self._from_cache(ids)
        if not want:
            return
        k = self.k
        res = await self._x(self.s._agents_live(keys=[k.agent_presence, k.agent_last, k.agents_live_v] +
                                                 [k.agent_load(i) for i in want], args=want))
        self._live_of(want, res)

    def _live_of(self, want: list[str], res: list) -> None:
        for n, i in enumerate(want):
            presence, last, flat, ver = res[n]
            self._live_ver[i] = int(ver or 0)
            self._presence[i] = _s(presence) or "offline"
            self._last[i] = _dt(last)
            raw = {_s(flat[j]): _s(flat[j + 1]) for j in range(0, len(flat), 2)}
            self._load_read[i] = raw
            self._load[i] = {c: int(v) for c, v in raw.items() if int(v)}

    def _member_ids(self, teams: frozenset[str] | None) -> list[str]:
        """The members of ``teams`` (every agent when None or empty), in the order ``state`` reads them."""
        if teams:
            return list(dict.fromkeys(i for team in sorted(teams) for i in self.members.get(team, ())))
        return list(self.fixed)

    async def state(self, teams: frozenset[str] | None = None) -> AssignmentState:
        """The chooser's view of the members of ``teams`` (every agent when None or empty), in id order.

        An agent whose fixed fields (the same objects), presence, load and last
        assignment equal those of the state the store handed out last keeps
        that (frozen, never mutated) state object: the chooser's searches
        recognise unchanged members by identity (``routing.assign``) and
        check again only the others."""
        ids = self._member_ids(teams)
        if teams:
            members = {team: self.members.get(team, ()) for team in teams}
        else:
            members = self.members
        await self._live(ids)
        kept = self.s._agent_states
        agents = {}
        for i in ids:
            f = self.fixed[i]
            presence, load, last = self._presence[i], self._load[i], self._last[i]
            state = kept.get(i)
            if state is None or state.skills is not f.skills or state.teams is not f.teams or \
                    state.capacity is not f.capacity or state.roles is not f.roles or state.presence != presence or \
                    state.load != load or state.last_assigned_at != last:
                state = kept[i] = AgentState(i, f.teams, f.skills, f.capacity, presence, f.roles, dict(load), last)
            agents[i] = state
        return AssignmentState(agents, members)

    async def contact_last_agent(self, t: TicketRow) -> str | None:
        """Who served this contact last (on another ticket), for sticky assignment."""
        others = self._contact_tickets.get(t.contact_id)
        if others is None:
            others = [_s(i) for i in await self._x(self.r.zrange(self.k.contact_tickets(t.contact_id), 0, -1))]
        others = [i for i in others if i != t.id]
        if not others:
            return None
        pipe = self.r.pipeline(transaction=False)
        for i in others:
            pipe.hmget(self.k.ticket_assignment(i), "agent", "assigned_at")
        best: tuple[int, str] | None = None
        for agent, at in await self._x(pipe.execute()):
            if agent is not None and (best is None or int(at) > best[0]):
                best = (int(at), _s(agent))
        return best[1] if best else None

    def demand(self, t: TicketRow, last_agent: str | None = None, role: str | None = None) -> Demand:
        team = self.d.teams.get(t.team) if t.team else None
        sticky = team.sticky if team is not None else True
        return Demand(ticket_id=t.id, capacity_class=channel_class(t.channel, self.d.channel_classes),
                      queued_at=self.now, team=t.team, skills=dict(t.skills), priority=t.priority,
                      last_agent=last_agent if sticky else None, role=role)

    def overflow_steps(self, team: str | None) -> list[OverflowStep]:
        cfg = self.d.teams.get(team) if team else None
        return list(cfg.overflow) if cfg is not None else []

    async def desk_owned(self, ticket_id: str) -> bool:
        """``ownership: desk`` — asked of the store's ``desk_owned_ticket`` when the
        help-desk part provides it on Redis (not yet: nothing is desk-owned)."""
        fn = getattr(self.s, "desk_owned_ticket", None)
        return bool(await fn(ticket_id)) if fn is not None else False

    # -- writes shared by every operation

    def timeline(self, ticket_id: str, kind: str, text: str, data: dict) -> None:
        meta = self._trow[ticket_id]
        e = TimelineEntry(id=new_id(self.now_ms), contact_id=meta["contact"], kind=kind, at=self.now,
                          ticket_id=ticket_id, text=text, data=msgspec.to_builtins(data))
        self._writing()
        self._entries.append((e, meta["origin"]))

    def outbox(self, topic: str, ticket_id: str | None, payload: dict) -> None:
        self._writing()
        self._outbox.append((topic, ticket_id, payload))

    # -- assignment

    async def take(self, t: TicketRow, decision: Decision, state: AssignmentState, why: str | None = None
                   ) -> AssignmentState:
        agent = decision.agent
        assert agent is not None
        after = apply_decision(state, decision, self.now)  # raises rather than over-fill
        await self._hold(t, agent, decision.capacity_class)
        self.touch_ticket(t.id, assignee=agent)
        text = describe(decision) + (f" — {why}" if why else "")
        self.timeline(t.id, "assignment", text, decision_data(decision, previous=t.assignee, why=why))
        self.outbox("ticket.assigned", t.id, {"ticket_id": t.id, "agent_id": agent, "previous": t.assignee,
                                              "reason": decision.reason.code})
        return after

    async def pin(self, t: TicketRow, agent: str, why: str) -> None:
        cls = channel_class(t.channel, self.d.channel_classes)
        await self._hold(t, agent, cls)
        self.timeline(t.id, "assignment", f"assigned to {agent}: {why}",
                      {"agent": agent, "reason": {"code": "pinned", "text": why}, "capacity_class": cls})

    def _add_load(self, agent: str, cls: str, n: int) -> None:
        k = self.k
        load = self._load.setdefault(agent, {})
        load[cls] = load.get(cls, 0) + n
        if not load[cls]:
            del load[cls]
        self._load_written.add((agent, cls))
        self._live_dirty.add(agent)
        self.tx.op("HINCRBY", k.agent_load(agent), cls, n)

    async def _hold(self, t: TicketRow, agent: str, cls: str) -> None:
        k = self.k
        await self.release(t.id)
        await self._live([agent])
        self.tx.op("SET", k.ticket_held(t.id), f"{agent} {cls}")
        self.tx.op("DEL", k.ticket_assignment(t.id))
        self.tx.op("HSET", k.ticket_assignment(t.id), "agent", agent, "class", cls, "team", t.team or "",
                   "skills", _j(t.skills), "assigned_at", self.now_ms)
        self.tx.op("ZADD", k.agent_tickets(agent), self.now_ms, t.id)
        self.tx.op("HSET", k.agent_last, agent, self.now_ms)
        self._live_dirty.add(agent)
        self._add_load(agent, cls, 1)
        self._last[agent] = self.now
        self._held[t.id] = _Held(agent, cls, t.team, dict(t.skills))
        self._ever[t.id] = agent
        if await self.queued(t.id) is not None:
            self._dequeue(t.id)

    async def release(self, ticket_id: str) -> str | None:
        held = await self.held(ticket_id)
        if held is None:
            return None
        k = self.k
        await self._live([held.agent])
        self.tx.op("DEL", k.ticket_held(ticket_id))
        self.tx.op("HSET", k.ticket_assignment(ticket_id), "released_at", self.now_ms)
        self.tx.op("ZREM", k.agent_tickets(held.agent), ticket_id)
        if self._load.get(held.agent, {}).get(held.cls, 0) > 0:
            self._add_load(held.agent, held.cls, -1)
        self._held[ticket_id] = None
        return held.agent

    async def assign(self, t: TicketRow, demand: Demand, why: str | None = None) -> Decision:
        state = await self.state(demand.teams())
        decision = choose_agent(state, demand)
        if decision.agent is not None:
            await self.take(t, decision, state, why)
        else:
            await self.enqueue(t, demand, decision)
        return decision

    async def enqueue(self, t: TicketRow, demand: Demand, decision: Decision) -> None:
        reason = describe(decision)
        q = self._queue.get(t.id) if t.id in self._queue else None
        if t.id not in self._queue:
            await self.queued(t.id)
            q = self._queue[t.id]
        if q is not None:
            q["reason"] = reason
            self._writing()
            self._queue_dirty.add(t.id)
            return
        steps = self.overflow_steps(demand.team)
        self._queue[t.id] = {
            "team": demand.team, "base_skills": dict(t.skills), "also_teams": list(demand.also_teams),
            "skills": dict(demand.skills), "priority": demand.priority,
            "rank": PRIORITY_RANK.get(demand.priority, len(PRIORITY_RANK)), "class": demand.capacity_class,
            "last_agent": demand.last_agent, "queued_at": _ms(demand.queued_at), "overflow_done": 0,
            "overflow_at": _ms(demand.queued_at + steps[0].wait()) if steps else None, "reason": reason,
        }
        self._writing()
        self._queue_dirty.add(t.id)
        where = f"team {demand.team}" if demand.team else "the general queue"
        self.timeline(t.id, "assignment", f"queued in {where}: {reason}", decision_data(decision, queued=True))

    async def ensure(self, t: TicketRow) -> Decision | None:
        """Bring the ticket's assignment in line with the ticket (as ``AssignTx.ensure``)."""
        if t.status not in OPEN_STATUSES:
            await self.release(t.id)
            if await self.queued(t.id) is not None:
                self._dequeue(t.id)
            return None
        if await self.desk_owned(t.id):
            freed = await self.release(t.id)
            if await self.queued(t.id) is not None:
                self._dequeue(t.id)
            if t.assignee:
                self.touch_ticket(t.id, assignee=None)
                self.timeline(t.id, "assignment", "handed to the help desk (ownership: desk)",
                              {"released": t.assignee})
            if freed is not None:
                await self.drain(self.teams_of(freed))
            return None
        held = await self.held(t.id)
        if held is not None:
            if t.assignee and t.assignee != held.agent:
                await self.pin(t, t.assignee, "named by a routing rule")
                return None
            if held.team == t.team and held.skills == t.skills:
                return None
            await self.release(t.id)
            return await self.assign(t, self.demand(t, held.agent), f"team/skills changed to {_wants(t)}")
        queued = await self.queued(t.id)
        if queued is not None:
            if queued.demand.team == t.team and queued.base_skills == t.skills:
                return None
            self._dequeue(t.id)
            return await self.assign(t, self.demand(t, queued.demand.last_agent),
                                     f"team/skills changed to {_wants(t)}")
        previous = await self.previous_agent(t.id)
        if previous is None and t.assignee:
            await self.pin(t, t.assignee, "named by a routing rule")
            return None
        last = previous if previous else await self.contact_last_agent(t)
        return await self.assign(t, self.demand(t, last), "reopened" if previous else None)

    async def _queue_rows(self, ids: list[str]) -> list[_Queued]:
        """The queue in order (priority, then age, then id), with this step's own changes."""
        raws = await self._x(self.r.hmget(self.k.assign_queue_items, ids)) if ids else []
        for tid, raw in zip(ids, raws):
            if tid not in self._queue:
                self._queue[tid] = _dec.decode(raw) if raw else None
        rows = [(q["rank"], q["queued_at"], tid, q) for tid, q in self._queue.items() if q is not None]
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        return [_queued_of(tid, q) for _, _, tid, q in rows[:_DRAIN_LIMIT]]

    async def drain(self, teams: frozenset[str] | None = None) -> list[Decision]:
        """Serve the queue in order (priority, then age) for agents of ``teams`` (all when None)."""
        ids = [_s(i) for i in await self._x(self.r.zrange(self.k.assign_queue, 0, _DRAIN_LIMIT - 1))]
        rows = await self._queue_rows(ids)
        state = await self.state(None)
        decisions = []
        for q in rows:
            wanted = q.demand.teams()
            if teams is not None and wanted and not wanted & teams:
                continue
            decision = choose_agent(state, q.demand)
            if decision.agent is None:
                continue
            t = await self.ticket(q.demand.ticket_id)
            if t is None or t.status not in OPEN_STATUSES:
                self._dequeue(q.demand.ticket_id)
                continue
            waited = int((self.now - q.demand.queued_at).total_seconds() // 60)
            state = await self.take(t, decision, state, f"from the queue after {waited}m")
            decisions.append(decision)
        return decisions

    def teams_of(self, agent_id: str) -> frozenset[str]:
        fixed = self.fixed.get(agent_id)
        return fixed.teams if fixed is not None else frozenset()

    # -- overflow

    async def overflow(self, limit: int) -> int:
        ids = [_s(i) for i in await self._x(self.r.zrangebyscore(self.k.assign_overflow, "-inf", self.now_ms,
                                                                 start=0, num=limit))]
        n = 0
        for tid in ids:
            q = await self.queued(tid)
            raw = self._queue.get(tid)
            if q is None or raw is None or raw["overflow_at"] is None or raw["overflow_at"] > self.now_ms:
                continue
            await self._overflow_one(q)
            n += 1
        return n

    async def _overflow_one(self, q: _Queued) -> None:
        d = q.demand
        steps = self.overflow_steps(d.team)
        due = overflow_due(steps, d.queued_at, self.now, q.overflow_done)
        widened = apply_overflow(d, [s.step for s in due])
        done = q.overflow_done + len(due)
        row = self._queue[d.ticket_id]
        assert row is not None
        row.update(also_teams=list(widened.also_teams), skills=dict(widened.skills), priority=widened.priority,
                   rank=PRIORITY_RANK.get(widened.priority, len(PRIORITY_RANK)), overflow_done=done,
                   overflow_at=_ms(d.queued_at + steps[done].wait()) if done < len(steps) else None)
        self._writing()
        self._queue_dirty.add(d.ticket_id)
        t = await self.ticket(d.ticket_id)
        if t is None:
            return
        for step in due:
            self.timeline(d.ticket_id, "assignment", f"overflow: {step.text}",
                          {"overflow_step": step.index, "after": str(step.step.after)})
        if widened.priority != d.priority:
            self.touch_ticket(d.ticket_id, priority=widened.priority)
            t = await self.ticket(d.ticket_id)
            assert t is not None
        state = await self.state(widened.teams())
        decision = choose_agent(state, widened)
        if decision.agent is not None:
            await self.take(t, decision, state, "after overflow")
        else:
            row["reason"] = describe(decision)

    # -- status

    async def set_status(self, ticket_id: str, status: str, actor: str) -> bool:
        t = await self.ticket(ticket_id)
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
        freed = await self.release(ticket_id) if status in RELEASING else None
        updated = await self.ticket(ticket_id)
        assert updated is not None
        await self.ensure(updated)
        await self.sla_sync(updated)
        if freed is not None:
            await self.drain(self.teams_of(freed))
        return True

    # -- presence

    async def set_presence(self, agent_id: str, presence: str, return_chats: bool, actor: str) -> list[str]:
        if agent_id not in self.fixed:
            raise NotFound(f"agent {agent_id} not found")
        await self._live([agent_id])
        before = self._presence[agent_id]
        if before != presence:
            k = self.k
            self.tx.op("HSET", k.agent_presence, agent_id, presence)
            self.tx.op("HSET", k.agent_presence_at, agent_id, self.now_ms)
            self._live_dirty.add(agent_id)
            self._presence[agent_id] = presence
            await self.s._audit(self.tx, self.now_ms, actor, "agent.presence", agent_id,
                                {"from": before, "to": presence})
        returned = await self._return_chats(agent_id) if return_chats and presence != "online" else []
        await self.drain(self.teams_of(agent_id))
        return returned

    async def _return_chats(self, agent_id: str) -> list[str]:
        ids = []
        for tid in [_s(i) for i in await self._x(self.r.zrange(self.k.agent_tickets(agent_id), 0, -1))]:
            held = await self.held(tid)
            if held is not None and held.agent == agent_id and held.cls == "chat":
                ids.append(tid)
        for ticket_id in ids:
            t = await self.ticket(ticket_id)
            if t is None:
                continue
            await self.release(ticket_id)
            self.touch_ticket(ticket_id, assignee=None)
            t = await self.ticket(ticket_id)
            assert t is not None
            self.timeline(ticket_id, "assignment", f"returned to the queue: {agent_id} signed off",
                          {"agent": None, "previous": agent_id, "reason": {"code": "returned", "text": "signed off"}})
            await self.assign(t, self.demand(t))
        return ids

    # -- directory

    async def load_agents(self, agents: list[Agent]) -> None:
        """Upsert the directory's agents (presence kept); drop the directory agents it no longer lists."""
        k = self.k
        current = {_s(i): _dec.decode(v) for i, v in (await self._x(self.r.hgetall(k.agents))).items()}
        for a in agents:
            self._upsert(a, "directory", current.get(a.id))
        listed = {a.id for a in agents}
        fixed = {a.id: _Fixed(frozenset(a.teams), dict(a.skills), dict(a.capacity), frozenset(a.roles))
                 for a in agents}
        for agent_id, fields in current.items():
            if agent_id in listed:
                continue
            if fields.get("source") == "directory":
                self.tx.op("HDEL", k.agents, agent_id)
            else:  # created through the API: stays
                fixed[agent_id] = _Fixed(frozenset(fields["teams"]), fields["skills"], fields["capacity"],
                                         frozenset(fields["roles"]))
        self.tx.op("SET", k.agents_version, new_id(self.now_ms))
        self.s._agents_cache = None
        self._use_agents(fixed)

    def _use_agents(self, fixed: dict[str, _Fixed]) -> None:
        """Decide from here on with these agents (a step that changed them)."""
        self.fixed = dict(sorted(fixed.items()))
        members: dict[str, list[str]] = {}
        for agent_id, f in self.fixed.items():
            for team in f.teams:
                members.setdefault(team, []).append(agent_id)
        self.members = {team: tuple(ids) for team, ids in members.items()}

    async def put_agent(self, agent: Agent) -> list[Decision]:
        k = self.k
        raw = await self._x(self.r.hget(k.agents, agent.id))
        before = _dec.decode(raw) if raw else None
        self._upsert(agent, "api", before)
        self.tx.op("SET", k.agents_version, new_id(self.now_ms))
        self.s._agents_cache = None
        # the drain below decides with the agent as it is now
        self._use_agents({**self.fixed, agent.id: _Fixed(frozenset(agent.teams), dict(agent.skills),
                                                         dict(agent.capacity), frozenset(agent.roles))})
        teams = set(agent.teams) | set(before["teams"] if before else ())
        return await self.drain(frozenset(teams))

    def _upsert(self, a: Agent, source: str, before: dict | None) -> None:
        k = self.k
        fields = {"name": a.name, "login": a.login, "roles": list(a.roles), "teams": list(a.teams),
                  "skills": dict(a.skills), "capacity": dict(a.capacity), "updated_at": self.now_ms,
                  "source": source if source == "directory" or before is None else before.get("source", source)}
        self.tx.op("HSET", k.agents, a.id, _j(fields))
        if before is None:  # presence belongs to the API once the agent exists
            self.tx.op("HSETNX", k.agent_presence, a.id, a.presence)
            self.tx.op("HSETNX", k.agent_presence_at, a.id, self.now_ms)
            self._live_dirty.add(a.id)

    # -- SLA

    async def _clock(self, ticket_id: str) -> str | None:
        if ticket_id not in self._clock_raw:
            self._clock_raw[ticket_id] = _s(await self._x(self.r.get(self.k.sla_clock(ticket_id))))
        return self._clock_raw[ticket_id]

    def _save_clock(self, clock: SlaClock, encoded: str | None = None) -> None:
        encoded = encoded if encoded is not None else _j(clock)
        self._clock_raw[clock.ticket_id] = encoded
        self._writing()
        self._clock_dirty[clock.ticket_id] = encoded

    async def timers(self, ticket_id: str) -> dict[str, list]:
        if ticket_id not in self._timers:
            rows = await self._x(self.r.hgetall(self.k.sla_timers(ticket_id)))
            self._timers[ticket_id] = {_s(key): _dec.decode(v) for key, v in rows.items()}
        return self._timers[ticket_id]

    def _set_timers(self, ticket_id: str, timers: dict[str, list]) -> None:
        self._timers[ticket_id] = timers
        self._writing()
        self._timers_dirty.add(ticket_id)

    def _set_sla(self, ticket_id: str, state: Any) -> None:
        """The ticket's SLA state, written only when it changed."""
        encoded = None if state is None else _j(state)
        meta = self._trow[ticket_id]
        if encoded == meta["sla"]:
            return
        meta["sla"] = encoded
        if encoded is None:
            self.tx.op("HDEL", self.k.ticket(ticket_id), "sla")
        else:
            self.tx.op("HSET", self.k.ticket(ticket_id), "sla", encoded)

    async def sla_sync(self, t: TicketRow) -> None:
        """Recompute the ticket's SLA (policy, state, due events) from its current facts."""
        if await self.desk_owned(t.id):
            self._set_timers(t.id, {})
            self._set_sla(t.id, None)
            return
        raw = await self._clock(t.id)
        if raw is None and t.status not in OPEN_STATUSES:
            return
        clock = _clock_dec.decode(raw) if raw else SlaClock(
            t.id, "", t.created_at, statuses=[StatusChange(t.created_at, t.status)])
        if clock.statuses[-1].status != t.status:
            clock.statuses.append(StatusChange(self.now, t.status))
        clock.first_response_at, clock.awaiting_since = await self._responses(t)
        match = select_policy(self.d.sla_policies, t.priority, t.tier, t.channel)
        if match is None:
            if clock.policy:
                self.timeline(t.id, "sla", "no SLA policy matches any more", {"policy": None})
            clock.policy = ""
            self._save_clock(clock)
            self._set_sla(t.id, None)
            self._set_timers(t.id, {})
            return
        policy = match.policy
        if policy.id != clock.policy:
            self.timeline(t.id, "sla", f"SLA {match.reason}", {"policy": policy.id, "reason": match.reason,
                                                               "calendar": policy.calendar})
            clock.policy = policy.id
        calendar = self.d.calendars[policy.calendar]
        statuses = evaluate(clock, self.now, policy, calendar)
        state = sla_state(clock, self.now, policy, calendar, statuses)
        self._set_sla(t.id, state)
        encoded = _j(clock)
        if raw is None or encoded != raw:
            self._save_clock(clock, encoded)
        timers = {ev.key: [ev.kind, ev.target, policy.id, _ms(ev.since), _ms(ev.at)]
                  for ev in due_events(clock, self.now, policy, calendar, statuses)}
        if raw is None or timers != await self.timers(t.id):
            self._set_timers(t.id, timers)

    async def _responses(self, t: TicketRow) -> tuple[datetime | None, datetime | None]:
        """As ``sqlite_sla.Tx._responses``: (first response, first customer message unanswered since)."""
        members = await self._x(self.r.zrange(self.k.ticket_timeline(t.id), 0, -1))
        raws = await self._x(self.r.mget([self.k.timeline_entry(_s(m).split(":", 1)[1]) for m in members])) \
            if members else []
        events = []
        for raw in raws:
            if raw is None:
                continue
            e = _dec.decode(raw)["e"]
            kind = e.get("kind")
            if kind not in ("message_in", "message_out"):
                continue
            at = datetime.fromisoformat(e["at"])
            if kind == "message_in":
                events.append((at, False))
                continue
            if (counts_at := reply_counts_at(at, e.get("data") or {})) is not None:
                events.append((counts_at, True))
        return responses_in(t.first_response_at, events)

    async def fire_due(self, limit: int) -> list[SlaEvent]:
        """Fire every SLA event due now (each once: the step that fires it deletes it)."""
        ids = [_s(i) for i in await self._x(self.r.zrangebyscore(self.k.sla_due, "-inf", self.now_ms,
                                                                 start=0, num=limit))]
        fired = []
        for ticket_id in ids:
            t = await self.ticket(ticket_id)
            if t is None:
                self._set_timers(ticket_id, {})
                continue
            await self.sla_sync(t)  # a reply or status change not synced yet must not fire a stale event
            timers = await self.timers(ticket_id)
            due = sorted(((v[4], key, v) for key, v in timers.items() if v[4] <= self.now_ms),
                         key=lambda d: (d[0], d[1]))
            for due_ms, key, (kind, target, policy_id, since, _) in due:
                event = SlaEvent(kind, target, _dt(due_ms), _dt(since))
                await self._fire(t, self.d.policy(policy_id), event, key)
                fired.append(event)
            if due:
                t = await self.ticket(ticket_id)
                assert t is not None
                await self.sla_sync(t)
        return fired

    async def _fire(self, t: TicketRow, policy: SlaPolicy, event: SlaEvent, key: str) -> None:
        timers = dict(await self.timers(t.id))
        timers.pop(key, None)
        self._set_timers(t.id, timers)
        clock = _clock_dec.decode(await self._clock(t.id))
        clock.fired.append(key)
        self._save_clock(clock)
        self.tx.op("HINCRBY", self.k.sla_events, _j([event.kind, policy.id, event.target]), 1)
        target = event.target.replace("_", " ")
        word = "breached" if event.kind == "breach" else "warning"
        local = event.at.astimezone(self.d.calendars[policy.calendar].tz).isoformat()
        text = f"SLA {word}: {target} due {local} (policy {policy.id}, calendar {policy.calendar})"
        payload = {"ticket_id": t.id, "policy": policy.id, "target": event.target, "due_at": event.at.isoformat(),
                   "assignee": t.assignee, "priority": t.priority}
        self.timeline(t.id, "sla", text, {**payload, "event": event.kind})
        self.outbox("sla.breached" if event.kind == "breach" else "sla.warning", t.id, payload)
        for action in escalation_actions(policy, event):
            await self._escalate(t.id, action, event, payload)

    async def _escalate(self, ticket_id: str, action: Any, event: SlaEvent, payload: dict) -> None:
        t = await self.ticket(ticket_id)
        assert t is not None
        why = f"SLA {event.kind} of {event.target.replace('_', ' ')}"
        match action:
            case RaisePriority(to=to):
                raised = raised_priority(t.priority, to)
                if raised != t.priority:
                    self.touch_ticket(t.id, priority=raised)
                    if await self.queued(t.id) is not None:
                        row = self._queue[t.id]
                        assert row is not None
                        row.update(priority=raised, rank=PRIORITY_RANK[raised])
                        self._writing()
                        self._queue_dirty.add(t.id)
                    self.timeline(t.id, "sla", f"priority {t.priority} → {raised}: {why}",
                                  {"action": "raise_priority", "from": t.priority, "to": raised})
                    self.outbox("ticket.updated", t.id, {"ticket_id": t.id, "changes": {
                        "priority": {"from": t.priority, "to": raised}}, "reason": why})
            case ReassignToLead(team=team):
                await self._to_lead(t, team or t.team, why)
            case NotifyWebhook(name=name):
                self.outbox("sla.escalation", t.id, {**payload, "event": event.kind, "webhook": name})

    async def _to_lead(self, t: TicketRow, team: str | None, why: str) -> None:
        lead = msgspec.structs.replace(self.demand(t), team=team, role="lead", last_agent=None)
        state = await self.state(lead.teams())
        decision = choose_agent(state, lead)
        if decision.agent is None or decision.agent == t.assignee:
            text = "already with a lead" if decision.agent else f"no lead available: {describe(decision)}"
            self.timeline(t.id, "sla", f"{why}: reassign to a lead: {text}", decision_data(decision))
            return
        await self.release(t.id)
        state = await self.state(lead.teams())
        await self.take(t, choose_agent(state, lead), state, f"{why}: reassigned to a lead")

    # -- stats, kept as each ticket is synced

    async def reconcile_stats(self, ticket_ids: list[str]) -> None:
        """Count each ticket's first response and resolution once in ``assign_stats``
        (corrected when a reopen clears the resolution): the fields ``st_fr`` and
        ``st_res`` on the ticket say what it added."""
        if not ticket_ids:
            return
        pipe = self.r.pipeline(transaction=False)
        for tid in ticket_ids:
            pipe.hmget(self.k.ticket(tid), "created_at", "first_response_at", "solved_at", "st_fr", "st_res")
        rows = await self._x(pipe.execute())
        maxes = await self._x(self.r.hmget(self.k.assign_stats, "fr_max", "res_max"))
        best = {"fr": int(maxes[0] or 0), "res": int(maxes[1] or 0)}
        for tid, (created, fr, solved, st_fr, st_res) in zip(ticket_ids, rows):
            if created is None:
                continue
            meta = self._trow.get(tid)
            if meta is not None:
                solved = meta["solved_at"]
            for name, at, counted in (("fr", fr, st_fr), ("res", solved, st_res)):
                want = None if at is None else max(0, int(at) - int(created))
                had = None if counted is None else int(counted)
                if want == had:
                    continue
                stats, key = self.k.assign_stats, self.k.ticket(tid)
                if had is not None:
                    self.tx.op("HINCRBY", stats, f"{name}_count", -1)
                    self.tx.op("HINCRBY", stats, f"{name}_sum", -had)
                if want is not None:
                    self.tx.op("HINCRBY", stats, f"{name}_count", 1)
                    self.tx.op("HINCRBY", stats, f"{name}_sum", want)
                    self.tx.op("HSET", key, f"st_{name}", want)
                    if want > best[name]:
                        best[name] = want
                        self.tx.op("HSET", stats, f"{name}_max", want)
                else:
                    self.tx.op("HDEL", key, f"st_{name}")

    def mark_synced(self, ticket_id: str) -> None:
        self._synced.add(ticket_id)

    # -- the one write

    async def flush(self) -> None:
        """Every write of the step in one APPLY program (guards first; the lease released last)."""
        k, tx = self.k, self.tx
        if self.holder is None:
            del tx.op  # a look that got here wrote nothing: its synced marks are its only writes
        for agent, cls in sorted(self._load_written):
            tx.hash_is(k.agent_load(agent), cls, self._load_read.get(agent, {}).get(cls))
        for tid in sorted(self._queue_dirty):
            q = self._queue[tid]
            if q is None:
                tx.op("HDEL", k.assign_queue_items, tid)
                tx.op("ZREM", k.assign_queue, tid)
                tx.op("ZREM", k.assign_overflow, tid)
                continue
            tx.op("HSET", k.assign_queue_items, tid, _j(q))
            tx.op("ZADD", k.assign_queue, _queue_score(q["rank"], q["queued_at"]), tid)
            if q["overflow_at"] is None:
                tx.op("ZREM", k.assign_overflow, tid)
            else:
                tx.op("ZADD", k.assign_overflow, q["overflow_at"], tid)
        for tid, encoded in self._clock_dirty.items():
            tx.op("SET", k.sla_clock(tid), encoded)
        for tid in sorted(self._timers_dirty):
            timers = self._timers[tid]
            tx.op("DEL", k.sla_timers(tid))
            if timers:
                flat: list[Any] = []
                for key, v in timers.items():
                    flat += [key, _j(v)]
                tx.op("HSET", k.sla_timers(tid), *flat)
                tx.op("ZADD", k.sla_due, min(v[4] for v in timers.values()), tid)
            else:
                tx.op("ZREM", k.sla_due, tid)
        for e, origin in self._entries:  # their seqs drawn in the program
            self.s._add_entry(tx, e, None, origin)
        for topic, ticket_id, payload in self._outbox:
            self.s._add_outbox(tx, topic, ticket_id, payload, self.now_ms)
        for tid in sorted(self._synced):
            meta = self._trow.get(tid)
            if meta is not None:
                tx.op("HSET", k.ticket(tid), "synced", f"{meta['updated_at']}:{meta['version'] + meta['touched']}")
        for agent in sorted(self._live_dirty):
            tx.op("HINCRBY", k.agents_live_v, agent, 1)
        if self._live_dirty:
            tx.op("INCR", k.agents_live_seq)
        if self.holder is not None:
            tx.op("DEL", k.lease(LOCK))
        await self.s._run(tx)
        if self._live_seq is not None:
            self._keep_live()

    def _keep_live(self) -> None:
        """After the APPLY: the store's cache takes the live state this step ended
        with — what it read, with its own writes on top — at the counter its writes
        moved it to (the step ran under the lease, and every other writer of that
        state bumps the counter: a write between the lease and the APPLY shows at
        the next step's check)."""
        cache, dirty = self.s._live_cache, self._live_dirty
        written: dict[str, list[str]] = {}
        for agent, cls in self._load_written:
            written.setdefault(agent, []).append(cls)
        for i, presence in self._presence.items():
            raw = self._load_read.get(i, {})
            load = self._load.get(i, {})
            if i in written:
                raw = {**raw, **{cls: str(load.get(cls, 0)) for cls in written[i]}}
            last = self._last.get(i)
            if i in dirty and last is not None:
                last = _dt(_ms(last))  # as Redis keeps it (milliseconds), as a read would give it
            cache[i] = (presence, last, raw, load, self._live_ver.get(i, 0) + (i in dirty))
        self.s._live_at = self._live_seq + bool(dirty)


def _wants(t: TicketRow) -> str:
    skills = ", ".join(f"{s}≥{lvl}" for s, lvl in sorted(t.skills.items()))
    return f"team {t.team or '-'}" + (f", skills {skills}" if skills else "")


# ---------------------------------------------------------------- operations


async def _sync(step: _Step, ticket_ids: list[str]) -> list[Decision]:
    decisions = []
    for ticket_id in ticket_ids:
        t = await step.ticket(ticket_id)
        if t is None:
            continue
        decision = await step.ensure(t)
        if decision is not None:
            decisions.append(decision)
        t = await step.ticket(ticket_id)
        assert t is not None
        await step.sla_sync(t)
        step.mark_synced(ticket_id)
    await step.reconcile_stats([i for i in ticket_ids if step._tickets.get(i) is not None])
    return decisions


async def _assign_next(step: _Step, ticket_id: str) -> Decision:
    t = await step.ticket(ticket_id, ahead=True)
    if t is None:
        raise NotFound(f"ticket {ticket_id} not found")
    if t.status not in OPEN_STATUSES:
        raise StoreError(f"ticket {ticket_id} is {t.status}: only open tickets are assigned")
    held = await step.held(t.id)
    if held is not None:
        await step.release(t.id)
    queued = await step.queued(t.id)
    last = held.agent if held else queued.demand.last_agent if queued else await step.contact_last_agent(t)
    demand = step.demand(t, last)
    if queued is not None:
        demand = msgspec.structs.replace(queued.demand, priority=t.priority)
    return await step.assign(t, demand)


async def _set_status(step: _Step, ticket_id: str, status: str, actor: str) -> bool:
    changed = await step.set_status(ticket_id, status, actor)
    await step.reconcile_stats([ticket_id])
    return changed


class RedisAssignOps:
    """Mixed into RedisStore: agents, presence, assignment, queues, status, SLA timers, stats."""

    _directory: Directory | None = None
    _agents_cache: tuple[str | None, dict[str, _Fixed], dict[str, tuple[str, ...]]] | None = None
    _local_lock: asyncio.Lock | None = None
    _live_script: Any = None
    _live_seq_script: Any = None
    _agent_states_kept: dict[str, AgentState] | None = None
    #: the agents' live state (presence, last assignment, raw load as stored, load, live
    #: version) as the last steps of this instance left it, valid at the live counter
    #: ``_live_at`` for the agents' version ``_live_for`` (None: no cache)
    _live_at: int | None = None
    _live_for: str | None = None
    _live_since = 0.0  # (time.monotonic) when the cache was started
    #: agent id → that live state (made by :meth:`_live_forget`, which the first check calls)
    _live_cache: dict[str, tuple]

    def _live_forget(self) -> None:
        """Drop the cache of the agents' live state (a step failed: what it held is unknown)."""
        self._live_at = None
        self._live_cache = {}

    def _live_check(self, version: str | None, answer: list) -> int:
        """Check the cache against LIVE_SEQ's ``answer`` (read with the lease) and
        return the live counter: at the cache's counter it is whole; else the agents
        whose live version moved (another instance's step, an API write) are dropped
        from it and the rest stays; another agents' version, or a cache older than
        :data:`LIVE_CACHE_S`, drops it all."""
        seq = int(answer[0])
        now = time.monotonic()
        if version != self._live_for or self._live_at is None or now - self._live_since > LIVE_CACHE_S:
            self._live_forget()
            self._live_for, self._live_since = version, now
        elif seq != self._live_at:
            flat = answer[1] if len(answer) > 1 else []
            versions = {_s(flat[j]): int(flat[j + 1]) for j in range(0, len(flat), 2)}
            cache = self._live_cache
            for agent in [a for a, kept in cache.items() if versions.get(a, 0) != kept[4]]:
                del cache[agent]
        self._live_at = seq
        return seq

    def _live_seq_lua(self) -> Any:
        if self._live_seq_script is None:
            self._live_seq_script = self.r.register_script(LIVE_SEQ_LUA)  # type: ignore[attr-defined]
        return self._live_seq_script

    @property
    def _agent_states(self) -> dict[str, AgentState]:
        """Agent id → the AgentState the last step handed the chooser (``_Step.state``)."""
        if self._agent_states_kept is None:
            self._agent_states_kept = {}
        return self._agent_states_kept

    def _live_lua(self) -> Any:
        if self._live_script is None:
            self._live_script = self.r.register_script(LIVE_LUA)  # type: ignore[attr-defined]
        return self._live_script

    def _agents_live(self, keys: list[str], args: list[str]) -> Awaitable[Any]:
        return self._live_lua()(keys=keys, args=args)

    def _dir(self) -> Directory:
        if self._directory is None:
            raise StoreError("no directory loaded (directory_load first)")
        return self._directory

    async def _agent_cache_current(self, version: str | None) -> tuple[dict[str, _Fixed], dict[str, tuple[str, ...]]]:
        """The agents' fixed fields, rebuilt when ``agents_version`` (read with the
        lease) moved: another instance or the API changed them."""
        k = self.k  # type: ignore[attr-defined]
        cache = self._agents_cache
        if cache is None or cache[0] != version:
            rows = await self._call(self.r.hgetall(k.agents))  # type: ignore[attr-defined]
            fixed: dict[str, _Fixed] = {}
            for i, v in sorted((_s(i), _dec.decode(v)) for i, v in rows.items()):
                fixed[i] = _Fixed(frozenset(v["teams"]), v["skills"], v["capacity"], frozenset(v["roles"]))
            members: dict[str, list[str]] = {}
            for agent_id, f in fixed.items():
                for team in f.teams:
                    members.setdefault(team, []).append(agent_id)
            cache = (version, fixed, {team: tuple(ids) for team, ids in members.items()})
            self._agents_cache = cache
        return cache[1], cache[2]

    async def _step(self, now: datetime, fn: Callable[..., Awaitable[Any]], *args: Any,
                    directory: Directory | None = None, prefetch: tuple[str, ...] = ()) -> Any:
        """Run ``fn(step, *args)`` as one assignment step (see the module docstring):
        under the ``assign`` lease, written in one fenced APPLY; run again from
        scratch when a guard failed (a ticket changed by a commit meanwhile).
        ``prefetch``: tickets the step reads first, read in the lease's round trip."""
        directory = directory or self._dir()
        if self._local_lock is None:
            self._local_lock = asyncio.Lock()
        # one step at a time per instance, in call order (asyncio.Lock is FIFO); the
        # lease then orders the instances
        async with self._local_lock:
            return await self._step_locked(now, directory, fn, *args, prefetch=prefetch)

    async def _step_locked(self, now: datetime, directory: Directory, fn: Callable[..., Awaitable[Any]],
                           *args: Any, prefetch: tuple[str, ...] = ()) -> Any:
        for attempt in range(_RETRIES):
            holder = new_id()
            version, prefetched, live = await self._lock_reading(holder, prefetch)
            renew = asyncio.create_task(self._keep(holder))
            try:
                step = await _Step(self, directory, now, holder).start(version, prefetched, live)
                result = await fn(step, *args)
                await step.flush()
                return result
            except Conflict:
                self._live_forget()
                await self.lease_release(LOCK, holder)  # type: ignore[attr-defined]
                await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
            except BaseException:
                self._live_forget()
                try:
                    await asyncio.shield(self.lease_release(LOCK, holder))  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - the lease expires on its own
                    pass
                raise
            finally:
                renew.cancel()
        raise Conflict("assignment: tickets kept changing under the step; try again")

    async def _keep(self, holder: str) -> None:
        """Renew the lease while a long step runs (a directory load draining a
        long queue); a lost lease is caught by the step's fence."""
        try:
            while True:
                await asyncio.sleep(LOCK_TTL_S / 3)
                if not await self.lease_renew(LOCK, holder, LOCK_TTL_S):  # type: ignore[attr-defined]
                    log.warning("assignment.lease_lost", holder=holder)
                    return
        except StoreError:
            return

    async def _lock(self, holder: str) -> str | None:
        """Take the ``assign`` lease (waiting for it); the agents' version, read in the same round trip."""
        version, _, live = await self._lock_reading(holder, ())
        self._live_check(version, live)
        return version

    async def _lock_reading(self, holder: str, prefetch: tuple[str, ...]
                            ) -> tuple[str | None, dict[str, list], list]:
        """Take the ``assign`` lease (waiting for it); the agents' version, the
        LIVE_SEQ answer for the cache of their live state, and the ``prefetch``
        tickets' reads, in the same round trip (Redis runs them after the lease
        script, so they are read under the lease when it was taken)."""
        k = self.k  # type: ignore[attr-defined]
        lease = self._lease  # type: ignore[attr-defined]
        live_seq = self._live_seq_lua()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT_S
        wait = 0.0005

        def build(pipe: Any) -> None:
            evalsha(pipe, lease, [k.lease(LOCK)], [holder, int(LOCK_TTL_S * 1000), "acquire"])
            pipe.get(k.agents_version)
            evalsha(pipe, live_seq, [k.agents_live_seq, k.agents_live_v],
                    ["" if self._live_at is None else str(self._live_at)])
            for tid in prefetch:
                _ticket_reads(pipe, k, tid)

        while True:
            got, version, live, *rows = await self._pipelined(build, (lease, live_seq))  # type: ignore[attr-defined]
            if got:
                return _s(version), {tid: rows[4 * i:4 * i + 4] for i, tid in enumerate(prefetch)}, live
            if loop.time() > deadline:
                raise StoreError(f"assignment: the lease was busy for {LOCK_WAIT_S:.0f}s")
            await asyncio.sleep(random.uniform(wait / 2, wait))
            wait = min(wait * 2, 0.02)

    # -- the store protocol

    async def directory_load(self, directory: Directory, now: datetime) -> list[Decision]:
        """Use ``directory``: upsert its agents (presence kept), then drain every queue."""
        self._directory = directory
        agents = directory.agent_models()

        async def load(step: _Step) -> list[Decision]:
            await step.load_agents(agents)
            return await step.drain(None)

        return await self._step(now, load)

    async def put_agent(self, agent: Agent, now: datetime) -> list[Decision]:
        return await self._step(now, _Step.put_agent, agent)

    async def list_agents(self) -> list[AgentView]:
        return await self._agent_views(None)

    async def get_agent(self, agent_id: str) -> AgentView | None:
        found = await self._agent_views(agent_id)
        return found[0] if found else None

    async def _agent_views(self, agent_id: str | None) -> list[AgentView]:
        k, r = self.k, self.r  # type: ignore[attr-defined]
        if agent_id is not None:
            raw = await self._call(r.hget(k.agents, agent_id))  # type: ignore[attr-defined]
            rows = {agent_id: raw} if raw else {}
        else:
            rows = {_s(i): v for i, v in (await self._call(r.hgetall(k.agents))).items()}  # type: ignore[attr-defined]
        ids = sorted(rows)
        if not ids:
            return []
        pipe = r.pipeline(transaction=False)
        pipe.hmget(k.agent_presence, ids)
        pipe.hmget(k.agent_presence_at, ids)
        pipe.hmget(k.agent_last, ids)
        for i in ids:
            pipe.hgetall(k.agent_load(i))
            pipe.zrange(k.agent_tickets(i), 0, -1)
        res = await self._call(pipe.execute())  # type: ignore[attr-defined]
        out = []
        for n, i in enumerate(ids):
            f = _dec.decode(rows[i])
            load = {_s(c): int(v) for c, v in res[3 + 2 * n].items() if int(v)}
            out.append(AgentView(id=i, name=f["name"], login=f.get("login"), roles=f["roles"], teams=f["teams"],
                                 skills=f["skills"], capacity=f["capacity"], presence=_s(res[0][n]) or "offline",
                                 presence_at=_dt(res[1][n]), last_assigned_at=_dt(res[2][n]), load=load,
                                 tickets=[_s(t) for t in res[4 + 2 * n]]))
        return out

    async def set_presence(self, agent_id: str, presence: str, now: datetime, *, return_chats: bool = False,
                           actor: str = "api") -> list[str]:
        return await self._step(now, _Step.set_presence, agent_id, presence, return_chats, actor)

    async def assign_next(self, ticket_id: str, now: datetime) -> Decision:
        return await self._step(now, _assign_next, ticket_id, prefetch=(ticket_id,))

    async def ticket_sync(self, ticket_ids: list[str], now: datetime) -> list[Decision]:
        """Bring assignment and SLA in line with each ticket (idempotent): the
        after-commit hook, the scheduler's sweep, and the replies engine call it.

        Fast path: most syncs (a follow-up on a held ticket whose SLA timers
        stand) change nothing. The step first runs without the lease; if it
        would write nothing, only the synced marks are written (guarded by the
        tickets' versions) and no lease is taken. Otherwise, or when a ticket
        changed meanwhile, it runs again as a full step under the lease."""
        ids = list(ticket_ids)
        directory = self._dir()
        try:
            version = _s(await self._call(self.r.get(self.k.agents_version)))  # type: ignore[attr-defined]
            step = await _Step(self, directory, now, None).start(version)
            decisions = await _sync(step, ids)
            await step.flush()  # only the synced marks, guarded by the tickets' versions
            return decisions
        except (_NeedsStep, Conflict, StoreError, NotFound, AssertionError):
            pass
        return await self._step(now, _sync, ids)

    async def set_status(self, ticket_id: str, status: str, now: datetime, actor: str = "api") -> bool:
        return await self._step(now, _set_status, ticket_id, status, actor)

    async def overflow_due(self, now: datetime, limit: int = 200) -> int:
        k = self.k  # type: ignore[attr-defined]
        first = await self._call(self.r.zrange(k.assign_overflow, 0, 0, withscores=True))  # type: ignore[attr-defined]
        if not first or int(first[0][1]) > _ms(now):
            return 0  # nothing due: no step, no lease (the scheduler asks every tick)
        return await self._step(now, _Step.overflow, limit)

    async def sla_fire_due(self, now: datetime, limit: int = 200) -> list[SlaEvent]:
        k = self.k  # type: ignore[attr-defined]
        first = await self._call(self.r.zrange(k.sla_due, 0, 0, withscores=True))  # type: ignore[attr-defined]
        if not first or int(first[0][1]) > _ms(now):
            return []
        return await self._step(now, _Step.fire_due, limit)

    async def changed_tickets(self, cursor: str | None, limit: int = 500) -> tuple[list[str], str | None]:
        """Tickets changed after ``cursor`` (``<updated ms>:<id>``), oldest change first, and the
        cursor after them; tickets synced since their last change (by any instance) are left out."""
        k, r = self.k, self.r  # type: ignore[attr-defined]
        at_s, _, last_id = (cursor or "0:").partition(":")
        at = int(at_s)
        rows: list[tuple[str, int]] = []
        offset = 0
        while len(rows) < limit:
            batch = await self._call(r.zrangebyscore(k.tickets_changed, at, "+inf", start=offset, num=limit + 64,
                                                     withscores=True))  # type: ignore[attr-defined]
            for m, score in batch:
                tid, sc = _s(m), int(score)
                if sc > at or tid > last_id:
                    rows.append((tid, sc))
            if len(batch) < limit + 64:
                break
            offset += len(batch)
        rows.sort(key=lambda x: (x[1], x[0]))
        rows = rows[:limit]
        if not rows:
            return [], cursor
        pipe = r.pipeline(transaction=False)
        for tid, _ in rows:
            pipe.hmget(k.ticket(tid), "updated_at", "version", "synced")
        out = []
        for (tid, _), (updated, version, synced) in zip(rows, await self._call(pipe.execute())):  # type: ignore[attr-defined]
            if version is None:
                continue
            if _s(synced) != f"{int(updated or 0)}:{int(version)}":
                out.append(tid)
        return out, f"{rows[-1][1]}:{rows[-1][0]}"

    async def assign_stats(self) -> dict:
        k, r = self.k, self.r  # type: ignore[attr-defined]
        pipe = r.pipeline(transaction=False)
        pipe.hgetall(k.assign_stats)
        pipe.hgetall(k.sla_events)
        pipe.hvals(k.assign_queue_items)
        pipe.hgetall(k.agents)
        pipe.hvals(k.agent_presence)
        stats, events, queue, agents, presence = await self._call(pipe.execute())  # type: ignore[attr-defined]
        st = {_s(f): int(v) for f, v in stats.items()}

        def summary(name: str) -> dict[str, float | int]:
            count, total = st.get(f"{name}_count", 0), st.get(f"{name}_sum", 0)
            return {"count": count, "sum_s": total / 1000, "avg_s": total / 1000 / count if count else 0.0,
                    "max_s": st.get(f"{name}_max", 0) / 1000 if count else 0}

        sla: dict[str, dict[str, dict[str, int]]] = {"breach": {}, "warning": {}}
        for f, n in events.items():
            kind, policy, target = _dec.decode(f)
            sla.setdefault(kind, {}).setdefault(policy, {})[target] = int(n)
        queued: dict[str, int] = {}
        for raw in queue:
            team = _dec.decode(raw)["team"] or ""
            queued[team] = queued.get(team, 0) + 1
        counts: dict[str, int] = {}
        for p in presence:
            counts[_s(p)] = counts.get(_s(p), 0) + 1
        assigned = 0
        if agents:
            pipe = r.pipeline(transaction=False)
            for i in agents:
                pipe.zcard(k.agent_tickets(_s(i)))
            assigned = sum(await self._call(pipe.execute()))  # type: ignore[attr-defined]
        return {"first_response": summary("fr"), "resolution": summary("res"), "sla_breaches": sla["breach"],
                "sla_warnings": sla["warning"], "queued": queued, "agents": counts, "assigned": assigned}

