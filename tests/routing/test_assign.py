"""Choosing agents: eligibility reasons, least loaded, longest idle, sticky,
capacity, queues and overflow (pure tests)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from routing.assign import (
    AgentState,
    AssignmentState,
    Demand,
    OverflowStep,
    agent_state,
    apply_decision,
    apply_overflow,
    channel_class,
    choose_agent,
    drain_queue,
    ineligibility,
    overflow_due,
    queue_order,
    queues_by_team,
    raised_priority,
)
from routing.model import Agent

NOW = datetime(2025, 11, 17, 2, 0, tzinfo=timezone.utc)


def agent(id_: str, **kw) -> AgentState:
    base = dict(
        id=id_,
        teams=frozenset({"billing"}),
        skills={"billing": 3, "english": 2},
        capacity={"chat": 5, "email": 20, "call": 1},
        presence="online",
    )
    return AgentState(**(base | kw))


def demand(ticket: str = "T1", **kw) -> Demand:
    base = dict(ticket_id=ticket, capacity_class="email", queued_at=NOW, team="billing")
    return Demand(**(base | kw))


@pytest.mark.parametrize(
    "who, need, reasons",
    [
        (agent("a"), demand(skills={"billing": 3}), []),
        (agent("a", presence="offline"), demand(), ["offline"]),
        (agent("a", presence="away"), demand(), ["away"]),
        (agent("a", skills={"billing": 2}), demand(skills={"billing": 3}), ["lacks billing≥3 (has 2)"]),
        (agent("a"), demand(skills={"japanese": 1}), ["lacks japanese≥1 (has 0)"]),
        (agent("a", load={"email": 20}), demand(), ["at capacity email 20/20"]),
        (agent("a", capacity={"email": 20}), demand(capacity_class="call"), ["takes no call"]),
        (agent("a"), demand(role="lead"), ["not a lead"]),
        (
            agent("a", presence="offline", skills={}, load={"email": 20}),
            demand(skills={"billing": 3}),
            ["offline", "lacks billing≥3 (has 0)", "at capacity email 20/20"],
        ),
    ],
)
def test_ineligibility_reasons(who, need, reasons):
    assert [r.text for r in ineligibility(who, need)] == reasons


def test_decision_records_why_not_each_agent_of_the_team():
    state = AssignmentState.of(
        [
            agent("busy", load={"email": 20}),
            agent("junior", skills={"billing": 2}),
            agent("away", presence="away"),
            agent("free", load={"email": 3}),
            agent("other-team", teams=frozenset({"sales"})),
        ]
    )
    d = choose_agent(state, demand(skills={"billing": 3}))
    assert d.agent == "free" and d.reason.code == "least_loaded"
    why = {c.agent: [r.text for r in c.reasons] for c in d.considered}
    assert why == {
        "busy": ["at capacity email 20/20"],
        "junior": ["lacks billing≥3 (has 2)"],
        "away": ["away"],
        "free": [],
    }
    assert msgspec.json.decode(msgspec.json.encode(d))["reason"]["text"].startswith("least loaded: email 3/20")


def test_least_loaded_is_relative_to_capacity():
    state = AssignmentState.of(
        [
            agent("a", load={"email": 5}),  # 5/20 = 0.25
            agent("b", capacity={"email": 10}, load={"email": 2}),  # 2/10 = 0.2
            agent("c", load={"email": 2}),  # 2/20 = 0.1
        ]
    )
    assert choose_agent(state, demand()).agent == "c"


def test_equal_channel_load_goes_to_the_less_occupied_agent():
    on_call = agent("on-call", load={"email": 2, "call": 1})
    free = agent("free", load={"email": 2}, last_assigned_at=NOW)  # less idle, but not on a call
    assert choose_agent(AssignmentState.of([on_call, free]), demand()).agent == "free"


def test_ties_go_to_the_longest_idle():
    state = AssignmentState.of(
        [
            agent("recent", last_assigned_at=NOW - timedelta(minutes=1)),
            agent("idle", last_assigned_at=NOW - timedelta(hours=1)),
            agent("idlest-but-loaded", load={"email": 1}, last_assigned_at=NOW - timedelta(days=1)),
        ]
    )
    d = choose_agent(state, demand())
    assert d.agent == "idle"
    assert "tie broken by longest idle (last assigned 2025-11-17T01:00:00+00:00)" in d.reason.text
    never = AssignmentState.of([*state.agents.values(), agent("new")])
    assert choose_agent(never, demand()).agent == "new"


def test_sticky_prefers_the_contacts_last_agent_when_eligible():
    state = AssignmentState.of([agent("last", load={"email": 10}), agent("free")])
    d = choose_agent(state, demand(last_agent="last"))
    assert (d.agent, d.reason.code, d.reason.text) == ("last", "sticky", "served this contact last")
    assert choose_agent(state, demand(last_agent="last"), sticky=False).agent == "free"
    full = AssignmentState.of([agent("last", load={"email": 20}), agent("free")])
    d = choose_agent(full, demand(last_agent="last"))
    assert d.agent == "free" and d.considered[0].reasons[0].text == "at capacity email 20/20"


def test_nobody_eligible():
    state = AssignmentState.of([agent("a", presence="offline")])
    d = choose_agent(state, demand())
    assert d.agent is None and d.reason.text == "no eligible agent in team billing"
    assert apply_decision(state, d, NOW) is state


def test_apply_decision_counts_load_and_idle_time():
    state = AssignmentState.of([agent("a", load={"email": 19})])
    after = apply_decision(state, choose_agent(state, demand()), NOW)
    assert after.agents["a"].load == {"email": 20} and after.agents["a"].last_assigned_at == NOW
    assert state.agents["a"].load == {"email": 19}  # the input state is untouched
    stale = choose_agent(state, demand())
    with pytest.raises(ValueError, match="would exceed capacity email 21/20"):
        apply_decision(after, stale, NOW)


def test_capacity_is_never_exceeded_over_a_sequence_of_decisions():
    rng = random.Random(20251117)
    teams, classes = ["billing", "support", "sales"], ["chat", "email", "call"]
    agents = [
        agent(
            f"a{i}",
            teams=frozenset(rng.sample(teams, rng.randint(1, 2))),
            skills={"billing": rng.randint(1, 3), "english": rng.randint(1, 3)},
            capacity={"chat": rng.randint(0, 5), "email": rng.randint(0, 20), "call": rng.randint(0, 1)},
            presence=rng.choice(["online", "online", "online", "away", "offline"]),
        )
        for i in range(40)
    ]
    state = AssignmentState.of(agents)
    demands = [
        demand(
            f"T{i:05d}",
            team=rng.choice(teams),
            capacity_class=rng.choice(classes),
            skills={"billing": rng.randint(1, 3)} if rng.random() < 0.5 else {},
            priority=rng.choice(["urgent", "high", "normal", "low"]),
            queued_at=NOW - timedelta(seconds=rng.randint(0, 3600)),
        )
        for i in range(3000)
    ]
    decisions, final = drain_queue(state, demands, NOW)
    assigned = [d for d in decisions if d.agent]
    assert 0 < len(assigned) < len(demands)
    for a in final.agents.values():
        for cls, used in a.load.items():
            assert used <= a.capacity[cls]
        assert sum(a.load.values()) == sum(1 for d in assigned if d.agent == a.id)
    for d in decisions:
        if d.agent is None:
            assert all(c.reasons for c in d.considered)


def test_queue_order_is_priority_then_age():
    q = [
        demand("old-normal", priority="normal", queued_at=NOW - timedelta(hours=2)),
        demand("new-urgent", priority="urgent", queued_at=NOW),
        demand("new-normal", priority="normal", queued_at=NOW),
        demand("old-urgent", priority="urgent", queued_at=NOW - timedelta(hours=1)),
        demand("low", priority="low", queued_at=NOW - timedelta(days=1)),
    ]
    assert [d.ticket_id for d in queue_order(q)] == ["old-urgent", "new-urgent", "old-normal", "new-normal", "low"]
    by_team = queues_by_team([*q, demand("sales-1", team="sales"), demand("no-team", team=None)])
    assert set(by_team) == {"billing", "sales", None} and by_team["billing"][0].ticket_id == "old-urgent"


def test_a_ticket_nobody_can_take_does_not_block_the_queue():
    state = AssignmentState.of([agent("a", skills={"billing": 1})])
    hard = demand("hard", priority="urgent", skills={"billing": 3})
    easy = demand("easy", priority="low")
    decisions, _ = drain_queue(state, [easy, hard], NOW)
    assert [(d.ticket_id, d.agent) for d in decisions] == [("hard", None), ("easy", "a")]


STEPS = [
    OverflowStep(after="10m", widen_to=["support"]),
    OverflowStep(after="30m", lower_skills_by=1, raise_priority=True),
]


@pytest.mark.parametrize(
    "waited, done, expected",
    [
        (5, 0, []),
        (12, 0, [(0, "waited 12m ≥ 10m: widen to support")]),
        (12, 1, []),
        (
            45,
            0,
            [
                (0, "waited 45m ≥ 10m: widen to support"),
                (1, "waited 45m ≥ 30m: lower skill levels by 1; raise priority"),
            ],
        ),
        (45, 1, [(1, "waited 45m ≥ 30m: lower skill levels by 1; raise priority")]),
        (45, 2, []),
    ],
)
def test_overflow_steps_after_the_wait(waited, done, expected):
    due = overflow_due(STEPS, NOW - timedelta(minutes=waited), NOW, done)
    assert [(s.index, s.text) for s in due] == expected


def test_overflow_widens_the_search():
    state = AssignmentState.of(
        [
            agent("billing-junior", skills={"billing": 2}),
            agent("support", teams=frozenset({"support"}), skills={"billing": 1}),
        ]
    )
    waiting = demand(skills={"billing": 3, "english": 1}, priority="normal")
    assert choose_agent(state, waiting).agent is None
    widened = apply_overflow(waiting, [STEPS[0]])
    assert widened.also_teams == ("support",) and choose_agent(state, widened).agent is None
    lowered = apply_overflow(widened, [STEPS[1]])
    assert lowered.skills == {"billing": 2} and lowered.priority == "high"  # english 1 - 1 dropped
    d = choose_agent(state, lowered)
    assert d.agent == "billing-junior" and {c.agent for c in d.considered} == {"billing-junior", "support"}


@pytest.mark.parametrize(
    "step, error",
    [
        ({"after": "10m"}, "needs widen_to, lower_skills_by or raise_priority"),
        ({"after": "soon", "raise_priority": True}, "bad duration"),
        ({"after": 5, "lower_skills_by": -1}, "must not be negative"),
        ({"after": 5, "widen": ["x"]}, "unknown field `widen`"),
    ],
)
def test_overflow_step_validation(step, error):
    with pytest.raises(msgspec.ValidationError, match=error):
        msgspec.convert(step, OverflowStep)


@pytest.mark.parametrize(
    "current, to, expected",
    [("normal", None, "high"), ("urgent", None, "urgent"), ("low", "urgent", "urgent"), ("urgent", "low", "urgent")],
)
def test_raised_priority_never_lowers(current, to, expected):
    assert raised_priority(current, to) == expected


def test_agent_state_from_the_model_and_channel_classes():
    model = Agent(
        id="a1", name="李雷", teams=["billing"], skills={"billing": 3}, capacity={"chat": 5}, presence="online"
    )
    st = agent_state(model, load={"chat": 2}, last_assigned_at=NOW)
    assert (st.teams, st.roles, st.load, st.occupancy()) == (
        frozenset({"billing"}),
        frozenset({"agent"}),
        {"chat": 2},
        0.4,
    )
    assert [channel_class(c) for c in ("wechat", "telegram", "email", "api", "asterisk", "sms")] == [
        "chat",
        "chat",
        "email",
        "email",
        "call",
        "sms",
    ]
    assert channel_class("sms", {"sms": "chat"}) == "chat"
