"""The fast chooser (searches kept per teams and demand kind, patched where a member changed) decides exactly as
the straightforward one kept in ``assign_oracle``: same agent, same reason
sentence, same tie, same ``considered`` list, over thousands of random
directories, demands and events (decisions, presence changes, releases,
directory changes, evictions of the kept searches)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

import routing.assign as assign
from routing.assign import AgentState, AssignmentState, Decision, Demand, apply_decision, choose_agent
from tests.routing.assign_oracle import choose_agent_oracle

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc)
TEAMS = ["t0", "t1", "t2", "t3"]
SKILLS = ["billing", "english", "tech"]
CLASSES = ["chat", "email", "call", "sms"]  # nobody has capacity for sms
PRESENCE = ["online", "online", "online", "away", "offline"]


def _agent(rng: random.Random, i: int) -> AgentState:
    capacity = {c: rng.choice([0, 1, 2, 3, 5]) for c in rng.sample(CLASSES[:3], rng.randint(0, 3))}
    return AgentState(
        id=f"a{i:02d}",
        teams=frozenset(rng.sample(TEAMS, rng.randint(0, 2))),
        skills={s: rng.randint(0, 3) for s in rng.sample(SKILLS, rng.randint(0, 3))},
        capacity=capacity,
        presence=rng.choice(PRESENCE),
        roles=frozenset(rng.sample(["agent", "lead"], rng.randint(1, 2))),
        load={c: rng.randint(0, cap) for c, cap in capacity.items() if rng.random() < 0.6},
        # few distinct times (and None) so load/occupancy ties and idle ties happen
        last_assigned_at=rng.choice([None, NOW - timedelta(minutes=rng.choice([1, 5, 5, 30]))]),
    )


#: few kinds of demand, so the same (teams, kind) is searched again and again (the patched path)
DEMAND_SKILLS = [{}, {}, {"billing": 2}, {"tech": 1, "english": 2}, {"english": 2, "tech": 1}, {"billing": 3}]


def _demand(rng: random.Random, n: int, agents: int) -> Demand:
    team = rng.choice([*TEAMS[:3], None])
    also = ("t3",) if team and rng.random() < 0.1 else ()
    return Demand(
        ticket_id=f"T{n}", capacity_class=rng.choice(["chat", "email", "email", "sms"]), queued_at=NOW, team=team,
        also_teams=also, skills=dict(rng.choice(DEMAND_SKILLS)), priority="normal",
        last_agent=f"a{rng.randrange(agents + 2):02d}" if rng.random() < 0.3 else None,  # some unknown ids
        role=rng.choice([None, None, None, "lead"]),
    )


def _release(rng: random.Random, state: AssignmentState) -> AssignmentState:
    held = [a for a in state.agents.values() if any(a.load.values())]
    if not held:
        return state
    a = rng.choice(held)
    cls = rng.choice([c for c, n in a.load.items() if n])
    load = {**a.load, cls: a.load[cls] - 1}
    if not load[cls]:
        del load[cls]
    return AssignmentState({**state.agents, a.id: msgspec.structs.replace(a, load=load)}, state.members)


def _presence(rng: random.Random, state: AssignmentState) -> AssignmentState:
    if not state.agents:
        return state
    a = rng.choice(list(state.agents.values()))
    return AssignmentState(
        {**state.agents, a.id: msgspec.structs.replace(a, presence=rng.choice(PRESENCE))}, state.members)


def _retrain(rng: random.Random, state: AssignmentState) -> AssignmentState:
    """One agent's skills or roles change (new objects, same presence and load)."""
    if not state.agents:
        return state
    a = rng.choice(list(state.agents.values()))
    changed = (msgspec.structs.replace(a, skills={s: rng.randint(0, 3) for s in SKILLS}) if rng.random() < 0.5
               else msgspec.structs.replace(a, roles=frozenset(rng.sample(["agent", "lead"], rng.randint(1, 2)))))
    return AssignmentState({**state.agents, a.id: changed}, state.members)


def _check(state: AssignmentState, demand: Demand, sticky: bool) -> Decision:
    got = choose_agent(state, demand, sticky=sticky)
    want = choose_agent_oracle(state, demand, sticky=sticky)
    assert got == want, (demand, got, want)
    return got


def _check_json(state: AssignmentState, demand: Demand, sticky: bool) -> Decision:
    """``choose_agent_json``: the oracle's decision, and its ``considered`` list's JSON byte for byte."""
    got, considered_json = assign.choose_agent_json(state, demand, sticky=sticky)
    want = choose_agent_oracle(state, demand, sticky=sticky)
    assert got == want, (demand, got, want)
    assert considered_json == msgspec.json.encode(want.considered), (demand, considered_json)
    return got


@pytest.mark.parametrize("seed", range(40))
def test_fast_chooser_decides_as_the_oracle(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    _replay(seed, monkeypatch, _check)


@pytest.mark.parametrize("seed", range(40))
def test_considered_json_is_the_oracles_encoded(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The JSON joined from each entry's kept encoding (what the store writes on the timeline) is
    exactly the encoding of the oracle's list, whatever changed in between (a kept entry whose
    capacity part changed, searches evicted, …)."""
    _replay(seed, monkeypatch, _check_json)


def _replay(seed: int, monkeypatch: pytest.MonkeyPatch, check: Callable[[AssignmentState, Demand, bool], Decision],
            ) -> None:
    """400 random events on a random directory, each demand's decision checked with ``check``."""
    rng = random.Random(seed)
    if seed % 4 == 3:  # a tiny search cache: searches are evicted and started afresh all the time
        monkeypatch.setattr(assign, "_SEARCHES_MAX", 2)
    n_agents = rng.randint(0, 40)
    state = AssignmentState.of(_agent(rng, i) for i in range(n_agents))
    for n in range(400):
        event = rng.random()
        if event < 0.6:
            decision = check(state, _demand(rng, n, n_agents), rng.random() < 0.8)
            if decision.agent is not None:
                state = apply_decision(state, decision, NOW + timedelta(seconds=rng.choice([0, n])))
        elif event < 0.75:
            state = _release(rng, state)
        elif event < 0.84:
            state = _presence(rng, state)
        elif event < 0.88:
            state = _retrain(rng, state)
        elif event < 0.95:  # a new directory: new state objects, some agents gone or added
            n_agents = max(0, n_agents + rng.randint(-3, 3))
            state = AssignmentState.of(_agent(rng, i) for i in range(n_agents))
        else:  # the same kind of demand again on an unchanged state (the memo's fast path)
            d = _demand(rng, n, n_agents)
            check(state, d, True)
            check(state, d, True)


def test_equivalence_covers_ties_sticky_and_empty() -> None:
    """The random replay above reaches every kind of decision (else it would prove little)."""
    seen: set[str] = set()
    for seed in range(40):
        rng = random.Random(seed)
        n_agents = rng.randint(0, 40)
        state = AssignmentState.of(_agent(rng, i) for i in range(n_agents))
        for n in range(150):
            d = _check(state, _demand(rng, n, n_agents), True)
            seen.add(d.reason.code)
            if "tie broken" in d.reason.text:
                seen.add("tie")
            if d.agent is not None:
                state = apply_decision(state, d, NOW)
    assert {"least_loaded", "sticky", "none_eligible", "tie"} <= seen


def test_bench_workload_decides_as_the_oracle() -> None:
    """The bench's 500 agents / 10,000 tickets, served in queue order: every decision identical."""
    from gateway.bench import assign as bench

    state, demands = bench.workload()
    oracle_state = state
    for demand in assign.queue_order(demands)[:3000]:
        got, considered_json = assign.choose_agent_json(state, demand)
        want = choose_agent_oracle(oracle_state, demand)
        assert got == want
        assert considered_json == msgspec.json.encode(want.considered)
        state = apply_decision(state, got, bench.NOW)
        oracle_state = apply_decision(oracle_state, want, bench.NOW)
