"""Rule tests beside the rules (``rules/tests/*.yaml``), like ``promtool test rules``.

A test file::

    now: 2025-03-04T10:00:00+08:00        # optional default for its cases
    tests:
      - name: a refund by email goes to billing
        now: 2025-03-04T10:00:00+08:00    # a fixed clock: cases never read the real one
        input: {channel: email, from: a@b.cn, subject: 申请退款}
        expect: {path: [root, billing-refund], team: billing, priority: normal}

Only the fields named in ``expect`` are compared: ``path``, ``rule`` (the
deciding, last one), ``priority``, ``team``, ``skills``, ``tags`` and
``webhooks`` (as sets), ``assignee``, ``assign_team``, ``auto_reply`` (the
template id, or null for none), ``auto_reply_language``, ``spam``, ``ignore``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from routing.rules.compiler import CompiledTree
from routing.rules.evaluator import evaluate
from routing.rules.inputs import InputError, message_input, to_rule_input
from routing.rules.loader import Document, read_documents
from routing.rules.matchers import Calendar
from routing.rules.nodes import Pos, Reader, to_python
from routing.rules.types import RuleError, RuleOutcome

EXPECT_KEYS = (
    "path", "rule", "priority", "team", "skills", "tags", "assignee", "assign_team",
    "auto_reply", "auto_reply_language", "webhooks", "spam", "ignore",
)  # fmt: skip
_SETS = ("tags", "webhooks")


@dataclass(frozen=True)
class FieldDiff:
    field: str
    expected: object
    got: object


@dataclass(frozen=True)
class CaseResult:
    name: str
    pos: Pos
    diffs: tuple[FieldDiff, ...]
    outcome: RuleOutcome

    @property
    def passed(self) -> bool:
        return not self.diffs

    def report(self) -> str:
        """``file:line:col: FAIL name`` and one expected/got line per field."""
        head = f"{self.pos.file}:{self.pos.line}:{self.pos.column}: FAIL {self.name}"
        width = max(len(d.field) for d in self.diffs) + 1
        rows = [f"    {d.field + ':':<{width}} expected {_show(d.expected)}, got {_show(d.got)}" for d in self.diffs]
        return "\n".join([head, *rows])


@dataclass(frozen=True)
class _Case:
    name: str
    pos: Pos
    input: dict
    input_node: yaml.Node
    expect: dict[str, object]


def run_tests(tree: CompiledTree, tests_dir: str | Path, calendars: Mapping[str, Calendar] | None = None) -> tuple[list[CaseResult], list[RuleError]]:
    """Run every case of ``tests_dir/*.yaml`` (none when the folder is absent).
    Malformed test files are errors, reported like rule errors."""
    if not Path(tests_dir).is_dir():
        return [], []
    docs, errors = read_documents(tests_dir)
    results: list[CaseResult] = []
    for doc in docs:
        for case in _cases(doc, errors):
            result = _run(tree, case, calendars, errors)
            if result is not None:
                results.append(result)
    return results, sorted(errors)


def _cases(doc: Document, errors: list[RuleError]) -> list[_Case]:
    if doc.node is None:
        return []
    r = Reader(doc.path, errors)
    top = r.mapping(doc.node, ("now", "tests"), required=("tests",), what="test file")
    if top is None or "tests" not in top:
        return []
    default_now = top.get("now")
    out = []
    for node in r.sequence(top["tests"], "tests") or []:
        m = r.mapping(node, ("name", "now", "input", "expect"), required=("name", "input", "expect"), what="test case")
        if m is None or not {"name", "input", "expect"} <= set(m):
            continue
        name = r.string(m["name"], "name")
        expect = r.mapping(m["expect"], EXPECT_KEYS, what="expect")
        now_node = m.get("now", default_now)
        if now_node is None:
            r.error(node, "test case lacks `now:` (a fixed clock), here or at the top of the file")
            continue
        if name is None or expect is None or not isinstance(m["input"], yaml.MappingNode):
            if not isinstance(m["input"], yaml.MappingNode):
                r.error(m["input"], "input must be a mapping")
            continue
        data = to_python(m["input"])
        data.setdefault("now", _timestamp(r, now_node))
        expected = {k: to_python(v) for k, v in expect.items()}
        out.append(_Case(name, r.pos(node), data, m["input"], expected))
    return out


def _timestamp(r: Reader, node: yaml.Node) -> str | None:
    text = r.text(node, "now")
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
    except ValueError:
        r.error(node, f"now {text!r} is not an ISO 8601 time")
        return None
    if when.tzinfo is None:
        r.error(node, f"now {text!r} needs a UTC offset (e.g. +08:00)")
        return None
    return when.isoformat()


def _run(tree: CompiledTree, case: _Case, calendars: Mapping[str, Calendar] | None, errors: list[RuleError]) -> CaseResult | None:
    if case.input.get("now") is None:
        return None  # its `now` was already reported
    try:
        rule_input = to_rule_input(message_input(case.input))
    except InputError as exc:
        m = case.input_node.start_mark
        errors.append(RuleError(case.pos.file, m.line + 1, m.column + 1, f"input: {exc}"))
        return None
    outcome = evaluate(tree, rule_input, calendars)
    got = observed(outcome)
    diffs = tuple(FieldDiff(k, v, got[k]) for k, v in case.expect.items() if not _same(k, v, got[k]))
    return CaseResult(case.name, case.pos, diffs, outcome)


def observed(outcome: RuleOutcome) -> dict[str, object]:
    """The outcome in the vocabulary of ``expect``."""
    return {
        "path": list(outcome.path),
        "rule": outcome.rule,
        "priority": outcome.priority,
        "team": outcome.team,
        "skills": dict(outcome.skills),
        "tags": list(outcome.tags),
        "assignee": outcome.assignee,
        "assign_team": outcome.assign_team,
        "auto_reply": outcome.auto_reply.template if outcome.auto_reply else None,
        "auto_reply_language": outcome.auto_reply.language if outcome.auto_reply else None,
        "webhooks": list(outcome.webhooks),
        "spam": outcome.spam,
        "ignore": outcome.ignore,
    }


def _same(key: str, expected: object, got: object) -> bool:
    if key in _SETS and isinstance(expected, list):
        return sorted(map(str, expected)) == sorted(map(str, got))
    return expected == got


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)
