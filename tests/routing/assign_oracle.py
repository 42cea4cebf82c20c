"""The chooser as it was before the memo (``routing.assign.choose_agent``), kept as the test oracle.

A verbatim copy of the straightforward O(team) version: for every candidate,
every reason, the rank, a sort. ``tests/routing/test_assign_equivalence.py``
checks that the fast chooser gives exactly the same decisions. Do not
"optimise" this file: its only job is to be obviously right.
"""

from __future__ import annotations

from routing.assign import AgentState, AssignmentState, Considered, Decision, Demand, Reason


def ineligibility(agent: AgentState, demand: Demand) -> list[Reason]:
    reasons: list[Reason] = []
    if agent.presence != "online":
        reasons.append(Reason(agent.presence, agent.presence))
    if demand.role is not None and demand.role not in agent.roles:
        reasons.append(Reason("role", f"not a {demand.role}"))
    for skill, need in demand.skills.items():
        has = agent.skills.get(skill, 0)
        if has < need:
            reasons.append(Reason("skill", f"lacks {skill}≥{need} (has {has})"))
    cls = demand.capacity_class
    cap, used = agent.capacity.get(cls, 0), agent.load.get(cls, 0)
    if used >= cap:
        reasons.append(Reason("capacity", f"at capacity {cls} {used}/{cap}" if cap > 0 else f"takes no {cls}"))
    return reasons


def _occupancy(agent: AgentState) -> float:
    total = 0.0
    for cls, used in agent.load.items():
        cap = agent.capacity.get(cls, 0)
        if cap > 0:
            total += used / cap
    return total


def _rank(agent: AgentState, cls: str) -> tuple[float, float, float, str]:
    idle = agent.last_assigned_at.timestamp() if agent.last_assigned_at else float("-inf")
    return (agent.load.get(cls, 0) / agent.capacity[cls], _occupancy(agent), idle, agent.id)


def _why_chosen(agent: AgentState, cls: str, tied: bool) -> Reason:
    text = f"least loaded: {cls} {agent.load.get(cls, 0)}/{agent.capacity[cls]}, occupancy {_occupancy(agent):.2f}"
    if tied:
        since = agent.last_assigned_at.isoformat() if agent.last_assigned_at else "never assigned"
        text += f"; tie broken by longest idle (last assigned {since})"
    return Reason("least_loaded", text)


def choose_agent_oracle(state: AssignmentState, demand: Demand, *, sticky: bool = True) -> Decision:
    teams = demand.teams()
    cls = demand.capacity_class
    considered: list[Considered] = []
    eligible: list[tuple[tuple[float, float, float, str], AgentState]] = []
    for agent in state.candidates(teams):
        reasons = ineligibility(agent, demand)
        if reasons:
            considered.append(Considered(agent.id, reasons))
        else:
            rank = _rank(agent, cls)
            considered.append(Considered(agent.id, [], rank[0]))
            eligible.append((rank, agent))
    if not eligible:
        where = f"team {'/'.join(sorted(teams))}" if teams else "any team"
        return Decision(
            demand.ticket_id, None, cls, Reason("none_eligible", f"no eligible agent in {where}"), considered
        )
    last = state.agents.get(demand.last_agent) if sticky and demand.last_agent else None
    if last is not None and any(a is last for _, a in eligible):
        return Decision(demand.ticket_id, last.id, cls, Reason("sticky", "served this contact last"), considered)
    eligible.sort(key=lambda e: e[0])
    (best_rank, best), runner_up = eligible[0], eligible[1][0] if len(eligible) > 1 else None
    tied = runner_up is not None and runner_up[:2] == best_rank[:2]
    return Decision(demand.ticket_id, best.id, cls, _why_chosen(best, cls, tied), considered)
