"""Rule-set diff: which messages would a candidate rule set route differently?

Replays the same messages (from the journal, in the CLI) through the live tree
and the candidate one and lists the messages whose decision changes — the
deciding rule, team, priority, assignee, auto-reply, spam/ignore — with a
count per change (``team: frontline → billing  × 12``). Pure: the caller
supplies the messages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import msgspec

from routing.rules.compiler import CompiledTree
from routing.rules.evaluator import evaluate
from routing.rules.matchers import Calendar
from routing.rules.types import RuleInput, RuleOutcome

COMPARED = ("rule", "team", "priority", "assignee", "assign_team", "auto_reply", "spam", "ignore")


class FieldChange(msgspec.Struct, frozen=True):
    field: str
    live: str | None
    candidate: str | None

    def __str__(self) -> str:
        return f"{self.field}: {self.live or '-'} → {self.candidate or '-'}"


class MessageChange(msgspec.Struct, frozen=True):
    """One message whose decision changes; ``key`` is its journal/inbound id
    (or external id)."""

    key: str
    channel: str
    subject: str | None
    changes: tuple[FieldChange, ...]


class DiffReport(msgspec.Struct, frozen=True):
    total: int
    changed: tuple[MessageChange, ...]
    #: "team: frontline → billing" → number of messages
    counts: dict[str, int]

    def to_dict(self) -> dict:
        """Plain JSON-shaped data (lists, not tuples)."""
        return msgspec.json.decode(msgspec.json.encode(self))


def summary(outcome: RuleOutcome) -> dict[str, str | None]:
    """The compared facts of a decision, as strings."""
    return {
        "rule": outcome.rule,
        "team": outcome.team,
        "priority": outcome.priority,
        "assignee": outcome.assignee,
        "assign_team": outcome.assign_team,
        "auto_reply": outcome.auto_reply.template if outcome.auto_reply else None,
        "spam": "yes" if outcome.spam else None,
        "ignore": "yes" if outcome.ignore else None,
    }


def diff(
    live: CompiledTree,
    candidate: CompiledTree,
    inputs: Iterable[RuleInput],
    calendars: Mapping[str, Calendar] | None = None,
) -> DiffReport:
    total = 0
    changed: list[MessageChange] = []
    counts: Counter[str] = Counter()
    for ri in inputs:
        total += 1
        before = summary(evaluate(live, ri, calendars))
        after = summary(evaluate(candidate, ri, calendars))
        changes = tuple(FieldChange(f, before[f], after[f]) for f in COMPARED if before[f] != after[f])
        if changes:
            ib = ri.inbound
            changed.append(MessageChange(ib.id or ib.external_id, ib.channel, ib.subject, changes))
            counts.update(str(c) for c in changes)
    return DiffReport(total, tuple(changed), dict(counts.most_common()))
