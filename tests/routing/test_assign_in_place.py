"""The chooser's kept searches are patched in place (``routing.assign._patch`` under ``_lock``):
a patch that fails half-way leaves no half-patched search behind, and ``check_decision``
refuses exactly what ``apply_decision`` refuses."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest

import routing.assign as assign
from routing.assign import AgentState, AssignmentState, Demand, apply_decision, check_decision, choose_agent_json
from tests.routing.assign_oracle import choose_agent_oracle

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc)


def _agents() -> list[AgentState]:
    return [AgentState(id=f"a{i}", teams=frozenset({"t"}), skills={"billing": i % 3}, capacity={"email": 2},
                       presence="online" if i % 4 else "away") for i in range(12)]


def _same_as_oracle(state: AssignmentState, demand: Demand) -> None:
    got, considered_json = choose_agent_json(state, demand)
    want = choose_agent_oracle(state, demand)
    assert got == want
    assert considered_json == msgspec.json.encode(want.considered)


def test_a_patch_that_fails_half_way_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    state = AssignmentState.of(_agents())
    demand = Demand("T1", "email", NOW, team="t", skills={"billing": 1})
    _same_as_oracle(state, demand)  # the search of this kind is kept

    def changed(state: AssignmentState, agent_id: str, **fields) -> AssignmentState:
        a = msgspec.structs.replace(state.agents[agent_id], **fields)
        return AssignmentState({**state.agents, agent_id: a}, state.members)

    # a1 goes away, a2 takes a ticket elsewhere (no verdict computed for its new state yet)
    away = changed(changed(state, "a1", presence="away"), "a2", load={"email": 1})
    real = assign._verdict

    def failing(agent: AgentState, cls: str):
        if agent.id == "a2":
            raise RuntimeError("boom")
        return real(agent, cls)

    monkeypatch.setattr(assign, "_verdict", failing)
    with pytest.raises(RuntimeError):  # a1's position was patched (away), a2's failed
        choose_agent_json(away, demand)
    monkeypatch.setattr(assign, "_verdict", real)
    # a1 is back online (yet another state object, the same skills and roles): a search kept
    # half-patched would take a1's "away" for a reason that still holds; it is started afresh
    back = changed(away, "a1", presence="online")
    _same_as_oracle(back, demand)
    for _ in range(3):
        decision, _ = choose_agent_json(back, demand)
        back = apply_decision(back, decision, NOW)
        _same_as_oracle(back, demand)


def test_check_decision_refuses_what_apply_decision_refuses() -> None:
    agents = [AgentState(id="a", teams=frozenset({"t"}), skills={}, capacity={"email": 1}, presence="online")]
    state = AssignmentState.of(agents)
    decision, _ = choose_agent_json(state, Demand("T1", "email", NOW, team="t"))
    check_decision(state, decision)  # room for it: nothing raised
    after = apply_decision(state, decision, NOW)
    for apply in (lambda: apply_decision(after, decision, NOW), lambda: check_decision(after, decision)):
        with pytest.raises(ValueError, match="would exceed capacity email 2/1"):
            apply()
    nobody, _ = choose_agent_json(after, Demand("T2", "email", NOW, team="t"))
    assert nobody.agent is None
    check_decision(after, nobody)  # a decision to queue takes nothing
