"""``describe`` looks only at a decision's first entries and counts the others from the list's
length (a decision lists each agent once, the chosen one among them): its sentences are the
oracle's (``test_describe_memo.describe_oracle``, which filters the whole list) for decisions
of every kind — several teams sharing members, sticky agents, ties, nobody eligible, short
lists."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from gateway.store.sqlite_assign import describe
from routing.assign import AgentState, AssignmentState, Demand, apply_decision, choose_agent
from tests.assignment.test_describe_memo import describe_oracle

NOW = datetime(2026, 3, 2, 2, 0, tzinfo=timezone.utc)
TEAMS = ["t0", "t1", "t2"]


def test_sentences_are_the_oracles_over_random_decisions() -> None:
    seen = set()
    for seed in range(30):
        rng = random.Random(seed)
        agents = [AgentState(id=f"a{i:02d}", teams=frozenset(rng.sample(TEAMS, rng.randint(1, 2))),
                             skills={"billing": rng.randint(0, 3)}, capacity={"email": rng.randint(0, 3)},
                             presence=rng.choice(["online", "online", "away"]),
                             last_assigned_at=rng.choice([None, NOW - timedelta(minutes=5)]))
                  for i in range(rng.randint(0, 25))]
        state = AssignmentState.of(agents)
        for n in range(60):
            team = rng.choice([*TEAMS, None])
            demand = Demand(f"T{n}", "email", NOW, team=team,
                            also_teams=(rng.choice(TEAMS),) if team and rng.random() < 0.3 else (),
                            skills=rng.choice([{}, {"billing": 2}]),
                            last_agent=f"a{rng.randrange(30):02d}" if rng.random() < 0.3 else None)
            decision = choose_agent(state, demand)
            assert describe(decision) == describe_oracle(decision)
            others = len(decision.considered) - (decision.agent is not None)
            seen.add((decision.reason.code, min(others, 9) // 9))
            state = apply_decision(state, decision, NOW)
    # short and long lists, assigned (least loaded, sticky) and queued
    assert {("least_loaded", 0), ("least_loaded", 1), ("none_eligible", 0), ("none_eligible", 1),
            ("sticky", 0), ("sticky", 1)} <= seen
