"""Choosing an agent: skills ∩ presence ∩ capacity, least loaded, priority order.

Pure functions of an :class:`AssignmentState` (every agent's teams, skills,
capacity per channel class, presence, current load and last assignment time)
and a :class:`Demand` (what one queued ticket needs). The store runs
:func:`choose_agent` (or :func:`choose_agent_json`, which also gives the
``considered`` list's JSON) then :func:`apply_decision` inside the one
transaction of ``assign_next``; the same few comparisons are meant to be
mirrored by a Lua script for the Redis backend, so the state is plain data and the rules
are integer/fraction arithmetic. (:func:`choose_agent` keeps each kind of
search's last result in a module-level cache and checks again only the
agents whose state object changed: same output, see ``_Search``.)

Capacity is per *channel class* (the omnichannel model of Twilio TaskRouter
and Zendesk): ``chat`` (webchat, WeChat, WeCom, Telegram, WhatsApp, …),
``email`` (email and the API channel) and ``call`` (Asterisk, FreeSWITCH,
Twilio voice); e.g. ``{chat: 5, email: 20, call: 1}``. A class missing from
an agent's capacity means the agent takes none of it.

Eligible: in the ticket's team (or one it overflowed to), every required
skill at the required level, ``online``, and below capacity for the ticket's
channel class (and holding the role, when one is required).

Load, and the order among the eligible (lower first):

1. the fraction of the ticket's class in use (``email 4/20`` = 0.2), so each
   channel's work is spread over those who can take it;
2. the occupancy: the sum over classes of load/capacity (an agent on a call,
   ``call 1/1``, comes after one who is not, at equal email load);
3. the longest idle: the oldest last assignment (never assigned first);
4. the agent id, so the choice is deterministic.

Sticky assignment: when the contact's previous agent is eligible, that agent
is chosen whatever the load. Every decision carries its reason and, for each
other agent of the team(s), why not ("offline", "lacks billing≥3 (has 2)",
"at capacity email 20/20"); agents outside the searched teams are not listed.

Queues (:func:`queue_order`) are ordered by priority, then age. Overflow
(:func:`overflow_due`, :func:`apply_overflow`) widens a waiting ticket's
search after configured waits: other teams, lower skill levels, higher
priority. Waits are wall-clock time in the queue, not business time: a ticket
waits for agents who are working, whatever the calendar says.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import compress
from operator import is_not
from typing import NamedTuple

import msgspec

from routing.calendar import parse_duration_minutes
from routing.model import PRIORITIES, PRIORITY_RANK, Agent, Priority

#: channel → capacity class; a channel not listed is its own class.
DEFAULT_CHANNEL_CLASSES: dict[str, str] = {
    **dict.fromkeys(("webchat", "wechat", "wecom", "telegram", "whatsapp", "messenger", "instagram", "line"), "chat"),
    **dict.fromkeys(("email", "api"), "email"),
    **dict.fromkeys(("asterisk", "freeswitch", "twilio", "phone", "voice"), "call"),
}


def channel_class(channel: str, classes: Mapping[str, str] = DEFAULT_CHANNEL_CLASSES) -> str:
    return classes.get(channel, channel)


# ---------------------------------------------------------------- state


class AgentState(msgspec.Struct, frozen=True):
    """One agent as the chooser sees it. ``load`` counts open assigned tickets per class."""

    id: str
    teams: frozenset[str]
    skills: dict[str, int]
    capacity: dict[str, int]
    presence: str
    roles: frozenset[str] = frozenset({"agent"})
    load: dict[str, int] = {}
    last_assigned_at: datetime | None = None

    def occupancy(self) -> float:
        total = 0.0
        for cls, used in self.load.items():  # a plain loop: this runs for every eligible agent
            cap = self.capacity.get(cls, 0)
            if cap > 0:
                total += used / cap
        return total

    def idle_key(self) -> float:
        return self.last_assigned_at.timestamp() if self.last_assigned_at else float("-inf")


def agent_state(
    agent: Agent, load: Mapping[str, int] | None = None, last_assigned_at: datetime | None = None
) -> AgentState:
    """The chooser's view of a model ``Agent`` plus what the store counts."""
    return AgentState(
        id=agent.id,
        teams=frozenset(agent.teams),
        skills=dict(agent.skills),
        capacity=dict(agent.capacity),
        presence=agent.presence,
        roles=frozenset(agent.roles),
        load=dict(load or {}),
        last_assigned_at=last_assigned_at,
    )


class AssignmentState(msgspec.Struct, frozen=True):
    """Every agent by id, and the ids of each team's members (what the store
    keeps as an index: a team's queue only ever looks at its members; each
    member once, as :meth:`of` builds it)."""

    agents: dict[str, AgentState]
    members: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, agents: Iterable[AgentState]) -> AssignmentState:
        by_id = {a.id: a for a in agents}
        members: dict[str, list[str]] = {}
        for a in by_id.values():
            for team in sorted(a.teams):
                members.setdefault(team, []).append(a.id)
        return cls(by_id, {team: tuple(ids) for team, ids in members.items()})

    def candidates(self, teams: frozenset[str]) -> list[AgentState]:
        """The members of ``teams`` (every agent when empty), each once, in team order."""
        if not teams:
            return list(self.agents.values())
        if len(teams) == 1:  # most demands: one team's members, each listed once (C-speed)
            (team,) = teams
            return list(map(self.agents.__getitem__, self.members.get(team, ())))
        ids = dict.fromkeys(i for team in sorted(teams) for i in self.members.get(team, ()))
        return [self.agents[i] for i in ids]


class Demand(msgspec.Struct, frozen=True):
    """What a queued ticket needs. ``team`` None: any agent; ``also_teams`` come from overflow."""

    ticket_id: str
    capacity_class: str
    queued_at: datetime
    team: str | None = None
    also_teams: tuple[str, ...] = ()
    skills: dict[str, int] = {}
    priority: str = "normal"
    last_agent: str | None = None
    role: str | None = None

    def teams(self) -> frozenset[str]:
        return frozenset((self.team, *self.also_teams)) if self.team is not None else frozenset()


# ---------------------------------------------------------------- decisions


class Reason(msgspec.Struct, frozen=True):
    """A machine code plus the sentence shown on the timeline."""

    code: str
    text: str


class Considered(msgspec.Struct, frozen=True):
    agent: str
    reasons: list[Reason]  # empty: eligible
    load: float | None = None  # fraction of the ticket's class in use, for the eligible


class Decision(msgspec.Struct, frozen=True):
    ticket_id: str
    agent: str | None
    capacity_class: str
    reason: Reason
    considered: list[Considered]


# Reasons repeat (the same "at capacity email 20/20" for every full agent of
# every decision): build each once. Reason is frozen, so sharing is safe.
@lru_cache(maxsize=4096)
def _reason(code: str, text: str) -> Reason:
    return Reason(code, text)


@lru_cache(maxsize=4096)
def _skill_reason(skill: str, need: int, has: int) -> Reason:
    return Reason("skill", f"lacks {skill}≥{need} (has {has})")


@lru_cache(maxsize=4096)
def _capacity_reason(cls: str, used: int, cap: int) -> Reason:
    return Reason("capacity", f"at capacity {cls} {used}/{cap}" if cap > 0 else f"takes no {cls}")


def ineligibility(agent: AgentState, demand: Demand) -> list[Reason]:
    """Every reason ``agent`` cannot take ``demand`` (empty when it can)."""
    reasons = list(_standing(agent, demand))
    cls = demand.capacity_class
    cap, used = agent.capacity.get(cls, 0), agent.load.get(cls, 0)
    if used >= cap:
        reasons.append(_capacity_reason(cls, used, cap))
    return reasons


def _standing(agent: AgentState, demand: Demand) -> tuple[Reason, ...]:
    """The reasons that do not depend on the agent's load: presence, role, skills (in that order)."""
    reasons: list[Reason] = []
    if agent.presence != "online":
        reasons.append(_reason(agent.presence, agent.presence))
    if demand.role is not None and demand.role not in agent.roles:
        reasons.append(_reason("role", f"not a {demand.role}"))
    for skill, need in demand.skills.items():
        has = agent.skills.get(skill, 0)
        if has < need:
            reasons.append(_skill_reason(skill, need, has))
    return tuple(reasons)


@lru_cache(maxsize=1024)
def _nobody(teams: frozenset[str]) -> Reason:
    """The reason of a decision nobody in ``teams`` can take (made once per set of teams)."""
    where = f"team {'/'.join(sorted(teams))}" if teams else "any team"
    return Reason("none_eligible", f"no eligible agent in {where}")


def _rank(agent: AgentState, cls: str) -> tuple[float, float, float, str]:
    return (agent.load.get(cls, 0) / agent.capacity[cls], agent.occupancy(), agent.idle_key(), agent.id)


def _why_chosen(agent: AgentState, cls: str, tied: bool) -> Reason:
    least = _least_loaded(cls, agent.load.get(cls, 0), agent.capacity[cls], agent.occupancy())
    if not tied:
        return least
    since = agent.last_assigned_at.isoformat() if agent.last_assigned_at else "never assigned"
    return Reason("least_loaded", f"{least.text}; tie broken by longest idle (last assigned {since})")


@lru_cache(maxsize=4096, typed=True)  # typed: 1 and 1.0 are written differently
def _least_loaded(cls: str, used: int, cap: int, occupancy: float) -> Reason:
    """The chosen agent's reason without a tie: the same few loads come up decision after decision."""
    return Reason("least_loaded", f"least loaded: {cls} {used}/{cap}, occupancy {occupancy:.2f}")


# Searching without looking at every agent again.
#
# A decision explains every member of the searched teams, but between two
# decisions of the same kind only the agents something changed are
# different: every other ``AgentState`` is the very same frozen object (the
# store's agent cache and :func:`apply_decision` replace the state of a
# changed agent, never mutate it). So each (teams, demand kind) keeps its last
# search (:class:`_Search`): the members as they were, their ``Considered``
# entries, their ranks. The next search of that kind compares the members by
# identity (a C-speed pass), checks again only the positions whose state
# object changed, and takes the least rank (another C-speed pass). The kind
# is what a verdict depends on besides the agent: class, role, required
# skills (in order: the reasons follow it). A changed agent whose skills,
# roles and presence are the same objects as before (a decision
# or a release changed only its load) keeps its load-independent reasons and
# has only the capacity check and the rank computed again. A search is
# patched in place, under :data:`_lock` (held from the lookup to the
# decision's copies: a search is never seen half-patched, whatever thread
# chooses), so a decision copies only its own ``considered`` list, not the
# search's six lists. Exactly the old decisions:
# tests/routing/test_assign_equivalence.py replays random directories and
# events against the straightforward chooser kept in
# tests/routing/assign_oracle.py.


class _Search:
    """The last search of one (teams, demand kind), patched in place under :data:`_lock`."""

    __slots__ = ("members", "considered", "ranks", "pairs", "standing", "full", "encoded")

    def __init__(self, n: int) -> None:
        #: the candidates, as they were (None: not seen yet)
        self.members: list[AgentState | None] = [None] * n
        #: their entries, same order
        self.considered: list[Considered | None] = [None] * n
        #: their ranks, ``_INELIGIBLE`` for those who cannot take it
        self.ranks: list[tuple | None] = [None] * n
        #: (load fraction, occupancy) of each rank, for the tie check
        self.pairs: list[tuple | None] = [None] * n
        #: their load-independent reasons (:func:`_standing`)
        self.standing: list[tuple[Reason, ...] | None] = [None] * n
        #: the capacity reason (``_capacity_reason``, None: below capacity) closing each entry with standing reasons
        self.full: list[Reason | None] = [None] * n
        #: each entry's JSON: a decision's list is these joined (:func:`choose_agent_json`)
        self.encoded: list[bytes | None] = [None] * n


#: sorts after every rank (a load fraction is below 1: a full agent is not eligible) and pairs with none
_INELIGIBLE: tuple = (2.0,)
_SEARCHES_MAX = 4096
#: (teams, class, role, *required skills) → its last search
_searches: dict[tuple, _Search] = {}
#: held while a search is looked up, patched and read (see above)
_lock = threading.Lock()
#: class → agent id → :func:`_verdict` for that agent state: a changed agent is checked again by
#: every kind of search of its teams (~30 on the bench's workload) before it changes again, and
#: when it has no load-independent reason (online, every skill and role required) its verdict
#: depends on its state and the class alone
_VERDICTS_MAX = 8192  # per class
_verdicts: dict[str, dict[str, tuple[AgentState, tuple, tuple, Considered, bytes]]] = {}
_encode = msgspec.json.Encoder().encode


def choose_agent(state: AssignmentState, demand: Demand, *, sticky: bool = True) -> Decision:
    """The agent for ``demand``, or none, with the reason for each agent considered.

    Among the eligible the lowest rank wins (:func:`_rank`); the decision says
    "tie broken by longest idle" when another eligible agent has the same
    load fraction and occupancy. The result is the same as checking every
    agent anew; only members whose state object changed since the last
    search of the same teams and kind are checked again (see ``_Search``).
    """
    return _choose(state, demand, sticky, False)[0]


def choose_agent_json(state: AssignmentState, demand: Demand, *, sticky: bool = True) -> tuple[Decision, bytes]:
    """:func:`choose_agent`, and the JSON of the decision's ``considered`` list: the bytes
    ``msgspec.json.encode(decision.considered)`` gives, joined from each entry's JSON
    encoded once per verdict (the store writes the list with every decision: ~74 entries
    on the bench's workload, most of them unchanged since the last search of their kind)."""
    decision, considered_json = _choose(state, demand, sticky, True)
    assert considered_json is not None
    return decision, considered_json


def _choose(state: AssignmentState, demand: Demand, sticky: bool, json: bool) -> tuple[Decision, bytes | None]:
    """:func:`choose_agent`'s decision, and (``json``) its ``considered`` list's JSON."""
    teams = demand.teams()
    cls = demand.capacity_class
    key = (teams, cls, demand.role, *demand.skills.items())
    members = state.candidates(teams)
    n = len(members)
    with _lock:
        search = _searches.get(key)
        if search is None or len(search.members) != n:
            search = _Search(n)
            _patch(search, members, range(n), demand, cls)
            if len(_searches) >= _SEARCHES_MAX:
                _searches.clear()
            _searches[key] = search
        else:
            # C-speed: the positions whose state object is not the one seen last time
            changed = list(compress(range(n), map(is_not, members, search.members)))
            if changed:
                try:
                    _patch(search, members, changed, demand, cls)
                except BaseException:
                    del _searches[key]  # half-patched: started afresh next time
                    raise
        ranks = search.ranks
        considered = list(search.considered)  # the decision's own list
        considered_json = b"[" + b",".join(search.encoded) + b"]" if json else None
        best_rank = min(ranks, default=_INELIGIBLE)
        if best_rank is not _INELIGIBLE:
            last = state.agents.get(demand.last_agent) if sticky and demand.last_agent else None
            at = _position(members, last) if last is not None else None
            if at is not None and ranks[at] is not _INELIGIBLE:
                return Decision(demand.ticket_id, last.id, cls, Reason("sticky", "served this contact last"),
                                considered), considered_json
            best = members[ranks.index(best_rank)]
            # ranks are distinct (the id is last): a tie on (load, occupancy) is another agent with both equal
            tied = search.pairs.count(best_rank[:2]) > 1
    if best_rank is _INELIGIBLE:
        return Decision(demand.ticket_id, None, cls, _nobody(teams), considered), considered_json
    return Decision(demand.ticket_id, best.id, cls, _why_chosen(best, cls, tied), considered), considered_json


def _patch(search: _Search, members: list[AgentState], changed: Iterable[int], demand: Demand, cls: str) -> None:
    """Compute the verdicts at ``changed`` for ``members`` into ``search`` (held under :data:`_lock`);
    ``members`` become its members only once all are computed."""
    old, considered, ranks, pairs = search.members, search.considered, search.ranks, search.pairs
    standing, full, encoded = search.standing, search.full, search.encoded
    verdicts = _verdicts.get(cls)
    if verdicts is None:
        verdicts = _verdicts[cls] = {}
    for i in changed:
        agent, before = members[i], old[i]
        kept = (before is not None and before.id == agent.id and before.presence == agent.presence
                and before.skills is agent.skills and before.roles is agent.roles)
        if kept:
            reasons = standing[i]
        else:
            reasons = standing[i] = _standing(agent, demand)
        if reasons:
            cap, used = agent.capacity.get(cls, 0), agent.load.get(cls, 0)
            tail = _capacity_reason(cls, used, cap) if used >= cap else None
            # kept reasons: the entry at i was built from them, and stays if its capacity part does too
            if not kept or tail != full[i]:
                entry = considered[i] = Considered(agent.id, [*reasons, tail] if tail is not None else [*reasons])
                encoded[i] = _encode(entry)
                full[i] = tail
            ranks[i] = pairs[i] = _INELIGIBLE
        else:
            verdict = verdicts.get(agent.id)
            if verdict is None or verdict[0] is not agent:
                if len(verdicts) >= _VERDICTS_MAX:
                    verdicts.clear()
                verdict = verdicts[agent.id] = _verdict(agent, cls)
            _, ranks[i], pairs[i], considered[i], encoded[i] = verdict
    search.members = members


def _verdict(agent: AgentState, cls: str) -> tuple[AgentState, tuple, tuple, Considered, bytes]:
    """(agent, rank, (load, occupancy), ``Considered``, its JSON) of an agent with no
    load-independent reason against a demand of class ``cls``: at capacity, or eligible at its rank."""
    cap, used = agent.capacity.get(cls, 0), agent.load.get(cls, 0)
    if used >= cap:
        entry = Considered(agent.id, [_capacity_reason(cls, used, cap)])
        return agent, _INELIGIBLE, _INELIGIBLE, entry, _encode(entry)
    rank = _rank(agent, cls)
    entry = Considered(agent.id, [], rank[0])
    return agent, rank, rank[:2], entry, _encode(entry)


def _position(members: list[AgentState], agent: AgentState) -> int | None:
    for i, m in enumerate(members):
        if m is agent:
            return i
    return None


def apply_decision(state: AssignmentState, decision: Decision, now: datetime) -> AssignmentState:
    """The state after ``decision``: one more ticket of its class for the agent, idle since ``now``.

    Raises ``ValueError`` rather than exceed a capacity (a stale decision).
    """
    if decision.agent is None:
        return state
    agent, cls, used = _taken(state, decision)
    updated = msgspec.structs.replace(agent, load={**agent.load, cls: used}, last_assigned_at=now)
    return AssignmentState({**state.agents, agent.id: updated}, state.members)


def check_decision(state: AssignmentState, decision: Decision) -> None:
    """What :func:`apply_decision` checks, for a caller that does not need the state after
    (one decision per transaction): raises ``ValueError`` rather than exceed a capacity."""
    if decision.agent is not None:
        _taken(state, decision)


def _taken(state: AssignmentState, decision: Decision) -> tuple[AgentState, str, int]:
    """(the decided agent, the decision's class, the agent's load of it once the ticket is taken);
    ``ValueError`` if that exceeds the agent's capacity."""
    agent = state.agents[decision.agent]  # type: ignore[index]
    cls = decision.capacity_class
    used = agent.load.get(cls, 0) + 1
    if used > agent.capacity.get(cls, 0):
        raise ValueError(f"agent {agent.id} would exceed capacity {cls} {used}/{agent.capacity.get(cls, 0)}")
    return agent, cls, used


# ---------------------------------------------------------------- queues


def queue_order(demands: Iterable[Demand]) -> list[Demand]:
    """Waiting tickets in the order they are served: priority, then age, then id."""
    worst = len(PRIORITIES)
    return sorted(demands, key=lambda d: (PRIORITY_RANK.get(d.priority, worst), d.queued_at, d.ticket_id))


def queues_by_team(demands: Iterable[Demand]) -> dict[str | None, list[Demand]]:
    """One ordered queue per home team (``None``: tickets without a team)."""
    queues: dict[str | None, list[Demand]] = {}
    for d in demands:
        queues.setdefault(d.team, []).append(d)
    return {team: queue_order(q) for team, q in queues.items()}


def drain_queue(
    state: AssignmentState, demands: Iterable[Demand], now: datetime, *, sticky: bool = True
) -> tuple[list[Decision], AssignmentState]:
    """Serve a queue in order; a ticket nobody can take waits without blocking the next."""
    decisions = []
    for demand in queue_order(demands):
        decision = choose_agent(state, demand, sticky=sticky)
        state = apply_decision(state, decision, now)
        decisions.append(decision)
    return decisions, state


# ---------------------------------------------------------------- overflow


class OverflowStep(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """After ``after`` in the queue (``10m``, ``1h``): widen, lower skills, raise priority."""

    after: int | str
    widen_to: list[str] = []
    lower_skills_by: int = 0
    raise_priority: bool = False

    def __post_init__(self) -> None:
        parse_duration_minutes(self.after)
        if self.lower_skills_by < 0:
            raise ValueError("lower_skills_by must not be negative")
        if not (self.widen_to or self.lower_skills_by or self.raise_priority):
            raise ValueError("an overflow step needs widen_to, lower_skills_by or raise_priority")

    def wait(self) -> timedelta:
        return timedelta(minutes=parse_duration_minutes(self.after))

    def describe(self) -> str:
        parts = []
        if self.widen_to:
            parts.append(f"widen to {', '.join(self.widen_to)}")
        if self.lower_skills_by:
            parts.append(f"lower skill levels by {self.lower_skills_by}")
        if self.raise_priority:
            parts.append("raise priority")
        return "; ".join(parts)


class DueStep(NamedTuple):
    """An overflow step to take now: ``index`` in the policy, and the timeline text."""

    index: int
    step: OverflowStep
    text: str


def overflow_due(steps: Sequence[OverflowStep], queued_at: datetime, now: datetime, done: int) -> list[DueStep]:
    """The steps past their wait that were not taken yet (``done`` were), in order.

    Steps are taken in the order written, so a later step never comes before
    an earlier one even if its wait is shorter.
    """
    waited = now - queued_at
    due = []
    for index in range(done, len(steps)):
        step = steps[index]
        if waited < step.wait():
            break
        due.append(DueStep(index, step, f"waited {_minutes(waited)} ≥ {step.after}: {step.describe()}"))
    return due


def _minutes(delta: timedelta) -> str:
    return f"{int(delta.total_seconds() // 60)}m"


def apply_overflow(demand: Demand, steps: Iterable[OverflowStep]) -> Demand:
    """The demand after the steps: more teams, lower levels (a level reaching 0 drops), higher priority."""
    also, skills, priority = list(demand.also_teams), dict(demand.skills), demand.priority
    for step in steps:
        also += [t for t in step.widen_to if t != demand.team and t not in also]
        if step.lower_skills_by:
            skills = {s: lvl - step.lower_skills_by for s, lvl in skills.items() if lvl > step.lower_skills_by}
        if step.raise_priority:
            priority = raised_priority(priority)
    return msgspec.structs.replace(demand, also_teams=tuple(also), skills=skills, priority=priority)


def raised_priority(current: str, to: Priority | None = None) -> str:
    """``to`` if it is higher than ``current``, else one step up (``to`` omitted); never lower."""
    rank = PRIORITY_RANK.get(current, len(PRIORITIES))
    target = PRIORITY_RANK[to] if to is not None else max(rank - 1, 0)
    return PRIORITIES[min(rank, target)]
