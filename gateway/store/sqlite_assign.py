"""SQLite operations for agents, presence and assignment queues (SLA timers: ``sqlite_sla``).

Each public operation of :class:`AssignOps` is ONE write transaction on the
store's writer thread (see ``gateway/store/sqlite.py``): it reads what it
needs, runs the pure deciders of ``routing.assign`` (and, through the
:class:`AssignTx` subclass of ``gateway/store/sqlite_sla.py``, of
``routing.sla``), and writes the outcome — ticket, agent load, queue, timers,
timeline entries with their reasons, outbox events — atomically. The writer
runs one transaction at a time, so a decision always sees the load every
earlier decision left: no agent is ever filled above capacity, however many
pipeline workers assign at once.

Load is not a counter: it is the number of *held* rows in ``assignments``
(``released_at IS NULL``) per agent and capacity class, so taking and freeing
capacity are idempotent row updates that cannot drift. A decision reads no
agent row: :class:`AgentCache` keeps every agent's load, presence, last
assignment time and fixed fields (teams, skills, capacity, roles) in memory,
changed with the rows in the same transaction and rebuilt from the tables
whenever the version in SQL is not its own.

Everything time-based (overflow steps, SLA warnings and breaches) is a due
time in a table (``assign_queue.overflow_at``, ``sla_timers.due_at``): a
scheduler asks for what is due at ``now``, so a restart forgets nothing and a
fired event is deleted in the transaction that fires it (it fires once).
Every operation takes ``now`` from its caller: tests drive the clock.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple, Sequence

import msgspec
import structlog

from gateway.store.base import AgentView, InvalidTransition, NotFound, StoreError
from gateway.store.sqlite_webhooks import event_payloads
from gateway.store.sqlite_desks import desk_owned
from routing.assign import (
    AgentState,
    AssignmentState,
    Considered,
    Decision,
    Demand,
    OverflowStep,
    apply_decision,
    apply_overflow,
    channel_class,
    check_decision,
    choose_agent,
    choose_agent_json,
    overflow_due,
)
from routing.directory import Directory
from routing.model import OPEN_STATUSES, PRIORITY_RANK, Agent, new_id

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
        updated_at       INTEGER NOT NULL,
        source           TEXT NOT NULL DEFAULT 'directory'  -- directory | api
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
_SHOWN_OTHERS = 8  # agents named in a decision's timeline sentence
_DRAIN_LIMIT = 1000  # queued tickets looked at per drain (one transaction stays short)

log = structlog.get_logger(__name__)


def to_ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def from_ms(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, tz=timezone.utc)


def to_json(value: Any) -> str:
    return _enc.encode(value).decode()


# ---------------------------------------------------------------- rows


class TicketRow(NamedTuple):
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
    #: ``tickets.sla`` as stored (JSON), so a sync that computes the same state writes nothing
    sla: str | None = None
    #: ``(updated_at, version)`` as read (what the sweep compares: ``AssignOps.changed_tickets``)
    stamp: tuple[int, int] | None = None


def _ticket_row_cols(t: str, tier: str) -> str:
    """The expressions of a :class:`TicketRow` over the tickets table named ``t``, the contact's tier ``tier``."""
    return (f"{t}.id, {t}.contact_id, {t}.status, {t}.priority, {t}.team, {t}.skills, {t}.assignee, "
            f"coalesce(json_extract({t}.reply_to, '$.channel'), json_extract({t}.channels, '$[0]'), ''), "
            f"{t}.created_at, {t}.first_response_at, {tier}, {t}.sla, {t}.updated_at, {t}.version")


_TICKET_SQL = (
    f"SELECT {_ticket_row_cols('t', 'c.tier')} "
    "FROM tickets t LEFT JOIN contacts c ON c.id = t.contact_id "
    "WHERE t.id = ?"
)
#: a :class:`TicketRow`'s expressions in a statement on ``tickets`` by its name (what :data:`_TICKET_SQL` reads)
TICKET_ROW_COLS = _ticket_row_cols("tickets", "(SELECT tier FROM contacts WHERE contacts.id = tickets.contact_id)")


def ticket_row(r: Sequence[Any]) -> TicketRow:
    """The :class:`TicketRow` of a read of :data:`_TICKET_SQL` or of :data:`TICKET_ROW_COLS`."""
    return TicketRow(r[0], r[1], r[2], r[3], r[4], _dec.decode(r[5]), r[6], r[7], from_ms(r[8]), from_ms(r[9]),
                     r[10], r[11], (r[12], r[13]))


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


#: who served the contact (?2) last on another ticket than ?1, for sticky assignment
_CONTACT_LAST_SQL = (
    "SELECT a.agent_id FROM assignments a JOIN tickets t ON t.id = a.ticket_id "
    "WHERE t.contact_id = ?2 AND a.ticket_id != ?1 ORDER BY a.assigned_at DESC LIMIT 1"
)
#: the ticket's (?1) held row, its queue row and, only when it has neither, the contact's (?2) last agent
_PLACEMENT_SQL = (
    "SELECT h.agent_id, h.class, h.team, h.skills, "
    + ", ".join(f"q.{col}" for col in _QUEUE_COLS.split(", "))
    + f", CASE WHEN h.agent_id IS NULL AND q.ticket_id IS NULL THEN ({_CONTACT_LAST_SQL}) END "
    "FROM (SELECT ?1 AS id) x LEFT JOIN assignments h ON h.ticket_id = x.id AND h.released_at IS NULL "
    "LEFT JOIN assign_queue q ON q.ticket_id = x.id"
)


def _queued(r: tuple) -> _Queued:
    demand = Demand(
        ticket_id=r[0], capacity_class=r[6], queued_at=from_ms(r[8]), team=r[1], also_teams=tuple(_dec.decode(r[3])),
        skills=_dec.decode(r[4]), priority=r[5], last_agent=r[7],
    )
    return _Queued(demand, _dec.decode(r[2]), r[9])


#: id → (a ``Considered`` entry, its words in a decision's sentence): the chooser hands the
#: same entry objects to decision after decision (an agent's verdict stays until it changes),
#: so each is written out once; the entry is held, so its id is not reused while listed
_SHOWN_MAX = 8192
_shown: dict[int, tuple[Considered, str]] = {}


def _shown_text(c: Considered) -> str:
    hit = _shown.get(id(c))
    if hit is not None and hit[0] is c:
        return hit[1]
    text = f"{c.agent} {', '.join(r.text for r in c.reasons)}" if c.reasons else f"{c.agent} eligible at {c.load:.2f}"
    if len(_shown) >= _SHOWN_MAX:
        _shown.clear()
    _shown[id(c)] = (c, text)
    return text


def describe(decision: Decision) -> str:
    """The timeline sentence: the decision's reason, then why not each other agent.

    The entry's data lists every agent; the sentence stays readable: it names
    the first :data:`_SHOWN_OTHERS` others and counts the rest. A decision
    lists each agent once (``routing.assign.choose_agent``: the members of its
    teams, each once) and the chosen one among them, so the others are the
    list less the chosen one, and only the first few entries are looked at
    (a team has dozens)."""
    agent, considered = decision.agent, decision.considered
    shown = []
    for c in considered:
        if c.agent != agent:
            if len(shown) == _SHOWN_OTHERS:
                break
            shown.append(_shown_text(c))
    others = len(considered) - (agent is not None)
    if others > _SHOWN_OTHERS:
        shown.append(f"{others - _SHOWN_OTHERS} more")
    head = f"assigned to {decision.agent}: {decision.reason.text}" if decision.agent else decision.reason.text
    return head + (f" (not chosen: {'; '.join(shown)})" if shown else "")


def decision_data(decision: Decision, considered_json: bytes | None = None, **extra: Any) -> dict:
    """The timeline entry's ``data`` of a decision (``considered_json``: the JSON of its
    ``considered`` list as :func:`routing.assign.choose_agent_json` gives it, written as is)."""
    return {
        "agent": decision.agent,
        "reason": decision.reason,  # structs: the encoder writes them as it would their builtins
        "capacity_class": decision.capacity_class,
        "considered": decision.considered if considered_json is None else msgspec.Raw(considered_json),
        **extra,
    }


# ---------------------------------------------------------------- the agent cache


_VERSION_KEY = "assign.agents_version"  # in the ``state`` table
_UNBUILT = object()  # a version no row holds: the next use rebuilds the cache


class _Fixed(NamedTuple):
    """What the directory says about an agent: nothing a decision changes."""

    teams: frozenset[str]
    skills: dict[str, int]
    capacity: dict[str, int]
    roles: frozenset[str]


class _Live:
    """What decisions and the API change: presence, last assignment, held load per class.

    ``state`` is the chooser's frozen ``AgentState`` built from these values
    (with its own copy of the load), reused by every decision until one of
    them changes: whoever changes them calls :meth:`changed`, which puts the
    agent on the cache's ``stale`` list (its state is built again at the next
    :meth:`AgentCache.state`, and put in each view that lists the agent:
    ``views``)."""

    __slots__ = ("id", "fixed", "presence", "last_assigned_at", "load", "state", "views", "_stale")

    def __init__(self, agent_id: str, fixed: _Fixed, presence: str, last_assigned_at: datetime | None,
                 stale: list[_Live]) -> None:
        self.id, self.fixed, self._stale = agent_id, fixed, stale
        self.presence, self.last_assigned_at = presence, last_assigned_at
        self.load: dict[str, int] = {}
        self.state: AgentState | None = None
        #: the state dicts of the cache's views that list this agent (see :meth:`AgentCache.state`)
        self.views: list[dict[str, AgentState]] = []
        stale.append(self)

    def changed(self) -> None:
        if self.state is not None:  # already listed otherwise
            self.state = None
            self._stale.append(self)

    def build(self) -> AgentState:
        f = self.fixed
        # a copy of the load: a state outlives the changes made after it (drain keeps one)
        return AgentState(self.id, f.teams, f.skills, f.capacity, self.presence, f.roles, dict(self.load),
                          self.last_assigned_at)


_VIEWS_MAX = 1024  # team sets whose members' order is kept (overflow may combine teams)


class AgentCache:
    """Every agent as the chooser sees it, kept in memory so a decision reads no agent row.

    Owned by the store and used only by its writer (whose statements run on
    the event loop's thread). SQL stays the truth (load is the held rows of
    ``assignments``): the cache is built from it and is valid while its
    version equals the one in the ``state`` table.

    The version is checked and replaced once per group commit, not per
    transaction (the writer's ``group`` and ``write`` serials, given to each
    :class:`AssignTx` as ``at``): while a group's transaction is open only
    this writer writes, so the version in SQL is read at the group's first
    use (:meth:`AssignTx.agents`), and the group's first change replaces it
    (:meth:`AssignTx.changing`) before changing the rows and the cache
    together. The group commits or rolls back whole, so its one new version
    stands for every change it made — except a write rolled back alone (its
    savepoint, or the pipeline commit's ``sync`` savepoint): the writer
    tells :meth:`rolled_back`, and if that write changed the cache it is
    dropped (rebuilt from the tables at next use, under a version read
    again; the next change writes a new one). A whole group rolled back
    drops it too; so does a restart, and a write by another process leaves
    another version in SQL, seen at the next group. The version is a fresh
    ULID, not a counter: a counter bumped in a transaction that rolled back
    would be bumped to the same number again, and a cache built in between
    would look current.
    """

    def __init__(self) -> None:
        self.version: object = _UNBUILT
        #: the group in which the version in SQL was last read (:meth:`current`) and
        #: the one in which this cache wrote it (:meth:`new_version`); None: neither
        self.checked: object = None
        self.written: object = None
        #: the write (the writer's serial) that last changed the cache or its version
        self.changed_in: object = None
        self.fixed: dict[str, _Fixed] = {}
        self.live: dict[str, _Live] = {}
        self.members: dict[str, tuple[str, ...]] = {}
        #: agents whose ``state`` must be built again (see :class:`_Live`)
        self.stale: list[_Live] = []
        #: teams (None: all) → (the members' states by id in the chooser's order, the members by team)
        self._views: dict[frozenset[str] | None, tuple[dict[str, AgentState], dict]] = {}

    def current(self, conn: sqlite3.Connection) -> AgentCache:
        """This cache, rebuilt first if it is not the one of the version in SQL."""
        r = conn.execute("SELECT value FROM state WHERE key = ?", (_VERSION_KEY,)).fetchone()
        version = r[0] if r else None
        if version != self.version:
            self._rebuild(conn, version)
        return self

    def new_version(self, conn: sqlite3.Connection, now_ms: int, at: tuple[object, object], *,
                    rebuild: bool = False) -> None:
        """Replace the version in SQL and here in the write ``at`` (group, write); ``rebuild``:
        and rebuild from the tables at next use."""
        version = new_id()
        conn.execute(
            "INSERT INTO state (key, value, updated_at) VALUES (?,?,?) ON CONFLICT (key) DO UPDATE "
            "SET value = excluded.value, updated_at = excluded.updated_at", (_VERSION_KEY, version, now_ms))
        self.written, self.changed_in = at
        if rebuild:
            self.version, self.checked = _UNBUILT, None
        else:
            self.version = version

    def rolled_back(self, write: object) -> None:
        """The writer rolled back ``write`` (None: the whole group): drop the cache if that write changed it."""
        if write is None or write == self.changed_in:
            self.version = _UNBUILT
            self.checked = self.written = self.changed_in = None

    def _rebuild(self, conn: sqlite3.Connection, version: str | None) -> None:
        rows = conn.execute(
            "SELECT id, teams, skills, capacity, roles, presence, last_assigned_at FROM agents ORDER BY id").fetchall()
        self.fixed = {r[0]: _Fixed(frozenset(_dec.decode(r[1])), _dec.decode(r[2]), _dec.decode(r[3]),
                                   frozenset(_dec.decode(r[4]))) for r in rows}
        self.stale, self._views = [], {}
        self.live = {r[0]: _Live(r[0], self.fixed[r[0]], r[5], from_ms(r[6]), self.stale) for r in rows}
        for agent_id, cls, n in conn.execute(
                "SELECT agent_id, class, count(*) FROM assignments WHERE released_at IS NULL GROUP BY agent_id, class"):
            if agent_id in self.live:  # a rule may pin a ticket to an id the directory does not know
                self.live[agent_id].load[cls] = n
        members: dict[str, list[str]] = {}
        for agent_id, fixed in self.fixed.items():
            for team in fixed.teams:
                members.setdefault(team, []).append(agent_id)
        self.members = {team: tuple(ids) for team, ids in members.items()}
        self.version = version

    def state(self, teams: frozenset[str] | None) -> AssignmentState:
        """The chooser's view of the members of ``teams`` (every agent when None or empty), in id order.

        Each set of teams keeps its members' states by id, in order, until
        the cache is rebuilt: an agent changed since the last view gets its
        state built again (only those are on ``stale``) and put in each kept
        view that lists it, so a view is a C-speed copy of that dict (the
        state handed out is never changed under its holder: a drain keeps
        one)."""
        stale = self.stale
        if stale:
            for live in stale:
                state = live.state = live.build()
                for states in live.views:
                    states[live.id] = state
            stale.clear()
        key = teams or None
        view = self._views.get(key)
        if view is None:
            view = self._view(key)
        states, members = view
        return AssignmentState(states.copy(), members)

    def _view(self, teams: frozenset[str] | None) -> tuple[dict[str, AgentState], dict]:
        if teams:
            ids = tuple(dict.fromkeys(i for team in sorted(teams) for i in self.members.get(team, ())))
            members = {team: self.members.get(team, ()) for team in teams}
        else:
            ids, members = tuple(self.fixed), self.members
        if len(self._views) >= _VIEWS_MAX:
            self._views.clear()
            for live in self.live.values():
                live.views.clear()
        lives = [self.live[i] for i in ids]
        states = {live.id: live.state for live in lives}
        for live in lives:
            live.views.append(states)
        view = self._views[teams] = (states, members)
        return view


# ---------------------------------------------------------------- one transaction


#: :meth:`AssignTx.touch_ticket`'s statement for each set of columns (named in code, never by input)
_TOUCH_SQL: dict[tuple[str, ...], str] = {}


class AssignTx:
    """One write transaction: the connection, the directory, the agent cache and the time it runs at.

    The SLA half (:meth:`sla_sync` and the firing of timers) is the subclass
    ``gateway.store.sqlite_sla.Tx``, the class the store's operations use.
    """

    def __init__(self, conn: sqlite3.Connection, directory: Directory, cache: AgentCache, now: datetime, *,
                 at: tuple[int, int] | None = None) -> None:
        self.conn, self.d, self.cache, self.now, self.now_ms = conn, directory, cache, now, to_ms(now)
        #: (group, write): the writer's serials of the group commit and the write this transaction runs in
        #: (see :class:`AgentCache`); None: a transaction on its own (the version checked and replaced in it)
        self.at: tuple[object, object] = at if at is not None else (object(), object())
        #: tickets rows changed through :meth:`touch_ticket` so far (a sync re-reads its ticket only then)
        self.touched = 0
        self._desk_owned: dict[str, bool] = {}

    def desk_owned(self, ticket_id: str) -> bool:
        """``sqlite_desks.desk_owned``, read once per transaction (no transaction here writes desk links)."""
        owned = self._desk_owned.get(ticket_id)
        if owned is None:
            owned = self._desk_owned[ticket_id] = desk_owned(self.conn, ticket_id)
        return owned

    def agents(self) -> AgentCache:
        """The agent cache, current for this transaction.

        The version in SQL is read once per group commit: until the group
        ends only this writer writes, and it moves the cache's version with
        the row's (:meth:`changing`), sets it to one no row holds (a
        rebuild, read again here) or drops the cache on a rollback
        (:meth:`AgentCache.rolled_back`)."""
        cache = self.cache
        if cache.checked != self.at[0] or cache.version is _UNBUILT:
            cache.current(self.conn)
            cache.checked = self.at[0]
        return cache

    def changing(self) -> AgentCache:
        """The agent cache, about to change with the rows: a new version first if this
        group has not written one yet (see :class:`AgentCache`)."""
        cache = self.agents()
        if cache.written != self.at[0]:
            cache.new_version(self.conn, self.now_ms, self.at)
        else:
            cache.changed_in = self.at[1]
        return cache

    def new_agents(self) -> None:
        """The agents' rows changed beyond what the cache follows (the directory, the API):
        a new version, and the cache rebuilt from the tables at next use."""
        self.cache.new_version(self.conn, self.now_ms, self.at, rebuild=True)

    # -- reads

    def ticket(self, ticket_id: str) -> TicketRow | None:
        r = self.conn.execute(_TICKET_SQL, (ticket_id,)).fetchone()
        return None if r is None else ticket_row(r)

    def held(self, ticket_id: str) -> _Held | None:
        r = self.conn.execute(
            "SELECT agent_id, class, team, skills FROM assignments WHERE ticket_id = ? AND released_at IS NULL",
            (ticket_id,),
        ).fetchone()
        return _Held(r[0], r[1], r[2], _dec.decode(r[3])) if r else None

    def queued(self, ticket_id: str) -> _Queued | None:
        r = self.conn.execute(f"SELECT {_QUEUE_COLS} FROM assign_queue WHERE ticket_id = ?", (ticket_id,)).fetchone()
        return _queued(r) if r else None

    def placement(self, t: TicketRow) -> tuple[_Held | None, _Queued | None, str | None]:
        """:meth:`held`, :meth:`queued` and, when both are None, :meth:`contact_last_agent`, in one statement."""
        r = self.conn.execute(_PLACEMENT_SQL, (t.id, t.contact_id)).fetchone()
        return (_Held(r[0], r[1], r[2], _dec.decode(r[3])) if r[0] is not None else None,
                _queued(r[4:-1]) if r[4] is not None else None, r[-1])

    def state(self, teams: frozenset[str] | None = None) -> AssignmentState:
        """The chooser's view of the members of ``teams`` (every agent when None or empty)."""
        return self.agents().state(teams)

    def contact_last_agent(self, t: TicketRow) -> str | None:
        """Who served this contact last (another ticket), for sticky assignment."""
        r = self.conn.execute(_CONTACT_LAST_SQL, (t.id, t.contact_id)).fetchone()
        return r[0] if r else None

    def demand(self, t: TicketRow, last_agent: str | None = None, role: str | None = None) -> Demand:
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
        """A timeline entry on the ticket, owned like the ticket (contact and origin).

        ``data`` goes in as its JSON's UTF-8 bytes, stored as TEXT by ``CAST``: the same
        text :func:`to_json` gives, without decoding the bytes into a ``str`` that sqlite3
        encodes to UTF-8 again (a decision's data is ~5 KB)."""
        self.conn.execute(
            "INSERT INTO timeline (id, contact_id, origin_contact_id, ticket_id, kind, at, text, data) "
            "SELECT ?, contact_id, origin_contact_id, id, ?, ?, ?, CAST(? AS TEXT) FROM tickets WHERE id = ?",
            (new_id(self.now_ms), kind, self.now_ms, text, _enc.encode(data), ticket_id),
        )

    def outbox(self, topic: str, ticket_id: str | None, payload: dict) -> None:
        self.conn.execute(
            "INSERT INTO outbox (id, topic, ticket_id, payload, created_at, next_at) VALUES (?,?,?,?,?,?)",
            (new_id(self.now_ms), topic, ticket_id, to_json(event_payloads(self.conn, [(topic, ticket_id, payload)])[0]),
             self.now_ms, self.now_ms),
        )

    def touch_ticket(self, ticket_id: str, **columns: Any) -> None:
        """Update ticket columns; bumps the version so a pipeline commit decided before retries."""
        names = tuple(columns)
        sql = _TOUCH_SQL.get(names)
        if sql is None:  # the callers name a handful of column sets: each statement is written once
            sets = ", ".join(f"{col} = ?" for col in names)
            sql = _TOUCH_SQL[names] = (
                f"UPDATE tickets SET {sets}, version = version + 1, updated_at = ? WHERE id = ?")
        self.touched += 1
        self.conn.execute(sql, (*columns.values(), self.now_ms, ticket_id))

    # -- assignment

    def take(self, t: TicketRow, decision: Decision, state: AssignmentState, why: str | None = None) -> AssignmentState:
        """Give the ticket to the decided agent (:meth:`give`); the state after (a drain decides on with it)."""
        after = apply_decision(state, decision, self.now)  # raises rather than over-fill: a stale state is a bug
        self.give(t, decision, why)
        return after

    def give(self, t: TicketRow, decision: Decision, why: str | None = None, *, fresh: bool = False,
             considered_json: bytes | None = None) -> None:
        """Give the ticket to the decided agent: load, assignee, timeline, event. The caller checked
        the decision against its state (:meth:`take`, or ``check_decision`` in :meth:`assign`).

        ``fresh``: the caller knows the ticket holds no capacity and is not
        queued (nothing to release or unqueue first); ``considered_json``: see
        :func:`decision_data`."""
        agent = decision.agent
        assert agent is not None
        self._hold(t, agent, decision.capacity_class, fresh)
        self.touch_ticket(t.id, assignee=agent)
        text = describe(decision) + (f" — {why}" if why else "")
        self.timeline(t.id, "assignment", text,
                      decision_data(decision, considered_json, previous=t.assignee, why=why))
        self.outbox("ticket.assigned", t.id, {
            "ticket_id": t.id, "agent_id": agent, "previous": t.assignee, "reason": decision.reason.code,
        })

    def pin(self, t: TicketRow, agent: str, why: str) -> None:
        """Hold capacity for an assignee a rule named (explicit: capacity does not refuse it)."""
        cls = channel_class(t.channel, self.d.channel_classes)
        self._hold(t, agent, cls)
        self.timeline(t.id, "assignment", f"assigned to {agent}: {why}",
                      {"agent": agent, "reason": {"code": "pinned", "text": why}, "capacity_class": cls})

    def _hold(self, t: TicketRow, agent: str, cls: str, fresh: bool = False) -> None:
        """The held row (and the cache's load and idle time) for ``agent``; the ticket leaves the queue
        (``fresh``: it holds nothing and is not queued, see :meth:`give`)."""
        if not fresh:
            self.release(t.id)  # the row is replaced below: its holder's load must drop in the cache too
        cache = self.changing()
        self.conn.execute(
            "INSERT OR REPLACE INTO assignments (ticket_id, agent_id, class, team, skills, assigned_at) "
            "VALUES (?,?,?,?,?,?)",
            (t.id, agent, cls, t.team, to_json(t.skills), self.now_ms),
        )
        self.conn.execute("UPDATE agents SET last_assigned_at = ? WHERE id = ?", (self.now_ms, agent))
        if not fresh:
            self.conn.execute("DELETE FROM assign_queue WHERE ticket_id = ?", (t.id,))
        live = cache.live.get(agent)
        if live is not None:  # a rule may pin a ticket to an id the directory does not know
            live.load[cls] = live.load.get(cls, 0) + 1
            live.last_assigned_at = from_ms(self.now_ms)
            live.changed()

    def release(self, ticket_id: str) -> str | None:
        """Free the ticket's capacity; returns the agent it was held by."""
        r = self.conn.execute(
            "UPDATE assignments SET released_at = ? WHERE ticket_id = ? AND released_at IS NULL "
            "RETURNING agent_id, class", (self.now_ms, ticket_id),
        ).fetchone()
        if r is None:
            return None
        live = self.changing().live.get(r[0])
        if live is not None:
            live.load[r[1]] -= 1
            if not live.load[r[1]]:
                del live.load[r[1]]  # as counted from the table: a class with nothing held is absent
            live.changed()
        return r[0]

    def assign(self, t: TicketRow, demand: Demand, why: str | None = None, *, fresh: bool = False) -> Decision:
        """Choose for ``demand``: take the ticket, or queue it saying why (``fresh``: see :meth:`give`)."""
        state = self.state(demand.teams())
        decision, considered_json = choose_agent_json(state, demand)
        if decision.agent is not None:
            check_decision(state, decision)  # raises rather than over-fill: a stale state is a bug
            self.give(t, decision, why, fresh=fresh, considered_json=considered_json)
        else:
            self.enqueue(t, demand, decision, fresh=fresh, considered_json=considered_json)
        return decision

    def enqueue(self, t: TicketRow, demand: Demand, decision: Decision, *, fresh: bool = False,
                considered_json: bytes | None = None) -> None:
        """Queue the ticket (once: a later failed attempt only refreshes the reason; ``fresh``: the
        caller knows it is not queued; ``considered_json``: see :func:`decision_data`)."""
        reason = describe(decision)
        if not fresh and self.conn.execute(
                "UPDATE assign_queue SET reason = ? WHERE ticket_id = ?", (reason, t.id)).rowcount:
            return
        steps = self.overflow_steps(demand.team)
        self.conn.execute(
            "INSERT INTO assign_queue (ticket_id, team, base_skills, also_teams, skills, priority, rank, class, "
            "last_agent, queued_at, overflow_at, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (t.id, demand.team, to_json(t.skills), to_json(list(demand.also_teams)), to_json(demand.skills),
             demand.priority, PRIORITY_RANK.get(demand.priority, len(PRIORITY_RANK)), demand.capacity_class,
             demand.last_agent,
             to_ms(demand.queued_at), to_ms(demand.queued_at + steps[0].wait()) if steps else None, reason),
        )
        where = f"team {demand.team}" if demand.team else "the general queue"
        self.timeline(t.id, "assignment", f"queued in {where}: {reason}",
                      decision_data(decision, considered_json, queued=True))

    def ensure(self, t: TicketRow) -> Decision | None:
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
        if self.desk_owned(t.id):  # a desk with ownership: desk routes it (gateway/desks/)
            freed = self.release(t.id)
            self.conn.execute("DELETE FROM assign_queue WHERE ticket_id = ?", (t.id,))
            if t.assignee:
                self.touch_ticket(t.id, assignee=None)
                self.timeline(t.id, "assignment", "handed to the help desk (ownership: desk)",
                              {"released": t.assignee})
            if freed is not None:
                self.drain(self.teams_of(freed))
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
    def _wants(t: TicketRow) -> str:
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
        fixed = self.agents().fixed.get(agent_id)
        return fixed.teams if fixed is not None else frozenset()

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
        nxt = to_ms(d.queued_at + steps[done].wait()) if done < len(steps) else None
        self.conn.execute(
            "UPDATE assign_queue SET also_teams = ?, skills = ?, priority = ?, rank = ?, overflow_done = ?, "
            "overflow_at = ? WHERE ticket_id = ?",
            (to_json(list(widened.also_teams)), to_json(widened.skills), widened.priority,
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
                              (describe(decision), d.ticket_id))

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
            cache = self.changing()
            self.conn.execute("UPDATE agents SET presence = ?, presence_at = ?, updated_at = ? WHERE id = ?",
                              (presence, self.now_ms, self.now_ms, agent_id))
            cache.live[agent_id].presence = presence
            cache.live[agent_id].changed()
            self.conn.execute("INSERT INTO audit (at, actor, action, subject, data) VALUES (?,?,?,?,?)",
                              (self.now_ms, actor, "agent.presence", agent_id, to_json({"from": r[0], "to": presence})))
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

    def sla_sync(self, t: TicketRow) -> None:
        """Recompute the ticket's SLA from its current facts (``gateway.store.sqlite_sla.Tx``)."""
        raise NotImplementedError

    # -- directory

    def load_agents(self, agents: list[Agent]) -> None:
        """Upsert the directory's agents (presence is kept: it belongs to the
        API). The YAML wins for the agents it lists; agents created through
        the API stay; agents the YAML dropped go."""
        for a in agents:
            self._upsert_agent(a, "directory")
        ids = [a.id for a in agents]
        marks = ",".join("?" * len(ids))
        self.conn.execute(f"DELETE FROM agents WHERE source = 'directory' AND id NOT IN ({marks})", ids)
        self.conn.execute("DELETE FROM agent_teams")
        self.conn.executemany("INSERT INTO agent_teams (team, agent_id) VALUES (?, ?)",
                              [(team, agent_id) for agent_id, teams in self.conn.execute("SELECT id, teams FROM agents")
                               for team in _dec.decode(teams)])
        self.new_agents()

    def put_agent(self, agent: Agent) -> list[Decision]:
        """Create or change one agent (the API); its teams' queues drain at
        once, since it may bring capacity or skills that were missing."""
        before = self.conn.execute("SELECT teams FROM agents WHERE id = ?", (agent.id,)).fetchone()
        self._upsert_agent(agent, "api")
        self.conn.execute("DELETE FROM agent_teams WHERE agent_id = ?", (agent.id,))
        self.conn.executemany("INSERT INTO agent_teams (team, agent_id) VALUES (?, ?)",
                              [(team, agent.id) for team in agent.teams])
        self.new_agents()
        teams = set(agent.teams) | set(_dec.decode(before[0]) if before else ())
        return self.drain(frozenset(teams))

    def _upsert_agent(self, a: Agent, source: str) -> None:
        self.conn.execute(
            "INSERT INTO agents (id, name, login, roles, teams, skills, capacity, presence, presence_at, "
            "updated_at, source) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
            "login = excluded.login, roles = excluded.roles, teams = excluded.teams, skills = excluded.skills, "
            "capacity = excluded.capacity, updated_at = excluded.updated_at"
            + (", source = excluded.source" if source == "directory" else ""),
            (a.id, a.name, a.login, to_json(a.roles), to_json(a.teams), to_json(a.skills), to_json(a.capacity),
             a.presence, self.now_ms, self.now_ms, source),
        )


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
        capacity=_dec.decode(r[6]), presence=r[7], presence_at=from_ms(r[8]), last_assigned_at=from_ms(r[9]),
        load=held.get(r[0], {}), tickets=tickets.get(r[0], []),
    ) for r in rows]


def _changed_tickets(conn: sqlite3.Connection, cursor: str | None,
                     limit: int) -> tuple[list[tuple[str, int, int]], str | None]:
    """((id, updated_at, version) of the tickets changed after ``cursor``, the cursor after them)."""
    at, _, last_id = (cursor or "0:").partition(":")
    rows = conn.execute(
        "SELECT id, updated_at, version FROM tickets WHERE updated_at > ? OR (updated_at = ? AND id > ?) "
        "ORDER BY updated_at, id LIMIT ?", (int(at), int(at), last_id, limit)).fetchall()
    return rows, f"{rows[-1][1]}:{rows[-1][0]}" if rows else cursor


# ---------------------------------------------------------------- the mixin


def _sync_one(tx: AssignTx, ticket_id: str, row: TicketRow | None = None) -> tuple[Decision | None, TicketRow | None]:
    """Bring one ticket's assignment and SLA in line: (``ensure``'s decision,
    the ticket's row as the sync leaves it; None: no such ticket). ``row``:
    the ticket's row as it is now, when the caller has it (the commit read
    it for its events), instead of reading it."""
    t = row if row is not None else tx.ticket(ticket_id)
    if t is None:
        return None, None
    touched = tx.touched
    decision = tx.ensure(t)
    if tx.touched != touched:  # the ticket's row changed (its assignee): the SLA reads it as it is now
        t = tx.ticket(ticket_id)
        assert t is not None
    touched = tx.touched
    tx.sla_sync(t)  # writes no ticket column but ``sla`` (no version, no updated_at): ``t.stamp`` holds …
    if tx.touched != touched:  # … unless that changes one day
        t = tx.ticket(ticket_id)
    return decision, t


def _sync(tx: AssignTx, ticket_ids: list[str]) -> list[Decision]:
    decisions = []
    for ticket_id in ticket_ids:
        decision, _ = _sync_one(tx, ticket_id)
        if decision is not None:
            decisions.append(decision)
    return decisions


def _assign_next(tx: AssignTx, ticket_id: str) -> Decision:
    t = tx.ticket(ticket_id)
    if t is None:
        raise NotFound(f"ticket {ticket_id} not found")
    if t.status not in OPEN_STATUSES:
        raise StoreError(f"ticket {ticket_id} is {t.status}: only open tickets are assigned")
    held, queued, contact_last = tx.placement(t)
    if held is not None:
        tx.release(t.id)
    last = held.agent if held else queued.demand.last_agent if queued else contact_last
    demand = tx.demand(t, last)
    if queued is not None:  # keep its age and what overflow widened
        demand = msgspec.structs.replace(queued.demand, priority=t.priority)
    # released above and not queued: nothing to release or unqueue again
    return tx.assign(t, demand, fresh=queued is None)


class AssignOps:
    """Mixed into SQLiteStore with ``sqlite_sla.SlaOps``: agents, presence, assign_next, queues, status.

    ``directory_load`` must run first: it gives the store the directory
    (teams, overflow, policies, calendars) the other operations decide with.
    """

    _directory: Directory | None = None
    _agent_cache: AgentCache | None = None
    #: set by :meth:`sync_in_commit`: the clock pipeline commits sync at
    _commit_clock: Callable[[], datetime] | None = None
    #: ticket → (updated_at, version) as a pipeline commit left it, synced
    #: (the sweep skips those: a rolled-back commit leaves other values)
    _synced: dict[str, tuple[int, int]] = {}
    #: the transaction class, with the SLA half: set by ``sqlite_sla.SlaOps``
    _tx_type: type[AssignTx]

    def _dir(self) -> Directory:
        if self._directory is None:
            raise StoreError("no directory loaded (directory_load first)")
        return self._directory

    def _cache(self) -> AgentCache:
        """The store's agent cache, made at first use and told of the writer's rollbacks."""
        cache = self._agent_cache
        if cache is None:
            cache = self._agent_cache = AgentCache()
            self._writer.on_rollback.append(cache.rolled_back)  # type: ignore[attr-defined]
        return cache

    async def _tx(self, now: datetime, fn: Any, *args: Any) -> Any:
        directory, tx_type, cache, writer = self._dir(), self._tx_type, self._cache(), self._writer  # type: ignore[attr-defined]
        return await self._write(  # type: ignore[attr-defined]
            lambda conn: fn(tx_type(conn, directory, cache, now, at=(writer.group, writer.write)), *args))

    def sync_in_commit(self, clock: Callable[[], datetime]) -> None:
        """From now on, each pipeline commit that lands a message on a ticket
        also brings the ticket's assignment and SLA in line (what
        :meth:`ticket_sync` does), in the commit's own transaction, at
        ``clock()``: one write per message instead of two. A failing sync
        is rolled back alone and logged (the message stays committed; the
        scheduler's sweep retries), as the after-commit hook's was."""
        self._commit_clock = clock
        self._synced = {}

    def _sync_in_tx(self, conn: sqlite3.Connection, ticket_id: str, row: TicketRow | None = None) -> None:
        """The pipeline commit's sync of ``ticket_id`` (``row``: the ticket's row as the commit left it, if known).

        A sync that fails is rolled back alone: the message stays committed.
        In a run of writes that share one savepoint (the writer's first pass,
        ``sqlite._Writer.in_shared_run``: a group's pipeline commits, mostly)
        the sync needs no savepoint of its own for that — its failure fails
        the run, which the writer rolls back and runs again one savepoint per
        write, and there the sync is in its own savepoint, rolled back alone.
        The same outcome, without SQLite copying every page the sync changes
        (a new ticket's assignment, timeline and timer rows…) into a second
        savepoint journal, nor two statements per message."""
        directory, clock = self._directory, self._commit_clock
        if directory is None or clock is None:
            return  # no directory loaded yet: the sweep syncs the ticket later
        cache, writer = self._cache(), self._writer  # type: ignore[attr-defined]
        alone = not writer.in_shared_run
        if alone:
            conn.execute("SAVEPOINT sync")
        try:
            _, t = _sync_one(self._tx_type(conn, directory, cache, clock(), at=(writer.group, writer.write)),
                             ticket_id, row)
        except Exception:  # noqa: BLE001 - the message is committed; the sweep retries the rest
            if not alone:
                raise  # the run is rolled back and run again, this commit in a savepoint of its own
            conn.execute("ROLLBACK TO sync")
            cache.rolled_back(writer.write)  # what the sync changed in the cache is undone too
            # owed to the sweep, even if an earlier run of this commit, rolled back with its group's
            # run of writes (``sqlite._Writer._run_replayable``), had synced the ticket to the same stamp
            self._synced.pop(ticket_id, None)
            log.exception("pipeline.after_commit_failed", hook="ticket_sync", ticket_id=ticket_id)
        else:
            if t is not None and t.stamp is not None:
                if len(self._synced) >= 100_000:  # the sweep pops them; bounded whatever happens
                    self._synced.clear()
                self._synced[ticket_id] = t.stamp
        if alone:
            conn.execute("RELEASE sync")

    async def directory_load(self, directory: Directory, now: datetime) -> list[Decision]:
        """Use ``directory``: upsert its agents, then drain every queue (capacity may have grown)."""
        self._directory = directory
        agents = directory.agent_models()

        def load(tx: AssignTx) -> list[Decision]:
            tx.load_agents(agents)
            return tx.drain(None)

        return await self._tx(now, load)

    async def put_agent(self, agent: Agent, now: datetime) -> list[Decision]:
        """Create or change an agent (presence aside); drains its teams' queues."""
        return await self._tx(now, AssignTx.put_agent, agent)

    async def list_agents(self) -> list[AgentView]:
        return await self._read(_agents, None)  # type: ignore[attr-defined]

    async def get_agent(self, agent_id: str) -> AgentView | None:
        found = await self._read(_agents, agent_id)  # type: ignore[attr-defined]
        return found[0] if found else None

    async def set_presence(self, agent_id: str, presence: str, now: datetime, *, return_chats: bool = False,
                           actor: str = "api") -> list[str]:
        """Set an agent's presence and drain its teams' queues; returns the chat tickets put back."""
        return await self._tx(now, AssignTx.set_presence, agent_id, presence, return_chats, actor)

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
        return await self._tx(now, AssignTx.set_status, ticket_id, status, actor)

    async def overflow_due(self, now: datetime, limit: int = 200) -> int:
        return await self._tx(now, AssignTx.overflow, limit)

    async def changed_tickets(self, cursor: str | None, limit: int = 500) -> tuple[list[str], str | None]:
        """Tickets updated after ``cursor`` (None: all), oldest change first, and the cursor after them.

        A ticket whose last change was a pipeline commit that synced it in
        its own transaction (:meth:`sync_in_commit`) is left out: nothing is
        owed on it (the list may then be empty while the cursor moves on)."""
        rows, after = await self._read(_changed_tickets, cursor, limit)  # type: ignore[attr-defined]
        synced = self._synced
        return [tid for tid, at, version in rows if synced.pop(tid, None) != (at, version)], after

