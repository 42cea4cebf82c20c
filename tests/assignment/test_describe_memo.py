"""``describe`` writes each ``Considered`` entry's words once (``sqlite_assign._shown_text``):
the sentences are exactly the ones written out in full every time (the old ``describe``,
kept below as the oracle), over the bench's decisions (entries shared from decision to
decision) and after the memo is cleared."""

from __future__ import annotations

from gateway.store import sqlite_assign
from gateway.store.sqlite_assign import describe
from routing.assign import Considered, Decision, Reason, drain_queue


def describe_oracle(decision: Decision) -> str:
    """``describe`` before the memo, verbatim."""
    others = [c for c in decision.considered if c.agent != decision.agent]
    shown = [
        f"{c.agent} {', '.join(r.text for r in c.reasons)}" if c.reasons else f"{c.agent} eligible at {c.load:.2f}"
        for c in others[:sqlite_assign._SHOWN_OTHERS]
    ]
    if len(others) > sqlite_assign._SHOWN_OTHERS:
        shown.append(f"{len(others) - sqlite_assign._SHOWN_OTHERS} more")
    head = f"assigned to {decision.agent}: {decision.reason.text}" if decision.agent else decision.reason.text
    return head + (f" (not chosen: {'; '.join(shown)})" if shown else "")


def test_sentences_of_the_bench_decisions_are_the_oracles(monkeypatch) -> None:
    from gateway.bench import assign as bench

    state, demands = bench.workload()
    decisions, _ = drain_queue(state, demands[:3000], bench.NOW)
    for d in decisions:
        assert describe(d) == describe_oracle(d)
    monkeypatch.setattr(sqlite_assign, "_SHOWN_MAX", 3)  # evicted all the time
    for d in decisions[:500]:
        assert describe(d) == describe_oracle(d)
    assert any(d.agent is None for d in decisions) and any(d.agent for d in decisions)


def test_an_entry_is_written_as_it_is_whatever_was_written_before() -> None:
    busy = Reason("capacity", "at capacity email 2/2")
    entries = [Considered("a1", [busy]), Considered("a2", [], 0.5), Considered("a3", [Reason("away", "away"), busy])]
    first = Decision("T1", "a2", "email", Reason("least_loaded", "least loaded"), entries)
    assert describe(first) == describe_oracle(first) == (
        "assigned to a2: least loaded (not chosen: a1 at capacity email 2/2; a3 away, at capacity email 2/2)")
    # equal contents, other objects; and the same objects in another decision
    again = Decision("T2", None, "email", Reason("none_eligible", "no eligible agent in team x"),
                     [Considered("a2", [], 0.25), *entries])
    assert describe(again) == describe_oracle(again)
    assert "a2 eligible at 0.25; a1 at capacity" in describe(again)
