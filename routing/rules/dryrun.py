""""What would happen to this message?" — the dry run, in the spirit of
``amtool config routes test``: the path through the tree, the whole tree with
that path marked, and the decision, as text for people or JSON for machines.

:func:`dry_run` is what ``POST /api/v1/rules/test`` calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from routing.rules.compiler import CompiledTree, Node
from routing.rules.evaluator import evaluate
from routing.rules.inputs import InputError, message_input, to_rule_input
from routing.rules.matchers import Calendar
from routing.rules.types import RuleOutcome


def dry_run(
    tree: CompiledTree,
    body: Mapping,
    *,
    now: datetime | None = None,
    calendars: Mapping[str, Calendar] | None = None,
) -> dict:
    """Route a described message (the :mod:`routing.rules.inputs` shape; its
    ``now`` wins over the ``now`` argument). With ``"tree": true`` the answer
    also carries the whole tree, path marked. Raises :class:`InputError`
    naming the field at fault."""
    if not isinstance(body, Mapping):
        raise InputError("the body must be a JSON object")
    fields = dict(body)
    want_tree = fields.pop("tree", False)
    if not isinstance(want_tree, bool):
        raise InputError("tree must be true or false", "$.tree")
    outcome = evaluate(tree, to_rule_input(message_input(fields), now), calendars)
    answer = outcome.to_dict()
    if want_tree:
        answer["tree"] = render_tree(tree, outcome)
    return answer


# ---------------------------------------------------------------- text


def render_path(outcome: RuleOutcome) -> str:
    lines = ["route path:"]
    for rule in outcome.matched:
        lead = "  " + ("   " * (rule.depth - 1) + "└─ " if rule.depth else "")
        lines.append(f"{lead}{rule.id}  ({rule.title})")
        pad = "  " + "   " * rule.depth + "   "
        lines += [f"{pad}• {reason}" for reason in rule.matched]
    return "\n".join(lines)


def render_decision(outcome: RuleOutcome) -> str:
    rows = [
        ("rule", outcome.rule),
        ("priority", outcome.priority),
        ("team", outcome.team),
        ("skills", ", ".join(f"{k}:{v}" for k, v in outcome.skills.items())),
        ("tags", ", ".join(outcome.tags)),
        ("assignee", outcome.assignee),
        ("assign team", outcome.assign_team),
        ("auto-reply", _auto_reply(outcome)),
        ("webhooks", ", ".join(outcome.webhooks)),
        ("spam", "yes" if outcome.spam else None),
        ("ignore", "yes" if outcome.ignore else None),
    ]
    lines = ["decision:"]
    lines += [f"  {name:<12} {value or '-'}" for name, value in rows]
    if outcome.auto_reply is not None:
        lines += [f"  {'':<12} | {line}".rstrip() for line in outcome.auto_reply.text.rstrip().splitlines()]
    return "\n".join(lines)


def _auto_reply(outcome: RuleOutcome) -> str | None:
    a = outcome.auto_reply
    if a is None:
        return f"suppressed: {outcome.auto_reply_suppressed}" if outcome.auto_reply_suppressed else None
    subject = f": {a.subject}" if a.subject else ""
    return f"{a.template} ({a.language}){subject}"


def render_tree(tree: CompiledTree, outcome: RuleOutcome | None = None) -> str:
    """Every rule, indented by depth; ``*`` marks the ones on the path."""
    on_path = {m.id for m in outcome.matched} if outcome else set()
    lines: list[str] = []
    _tree_lines(tree.root, on_path, "", True, lines)
    return "\n".join(lines)


def _tree_lines(node: Node, on_path: set[str], prefix: str, last: bool, out: list[str]) -> None:
    mark = "*" if node.id in on_path else " "
    branch = "" if node.depth == 0 else ("└─ " if last else "├─ ")
    out.append(f"{mark} {prefix}{branch}{node.id}{_summary(node)}")
    child_prefix = prefix if node.depth == 0 else prefix + ("   " if last else "│  ")
    for i, child in enumerate(node.children):
        _tree_lines(child, on_path, child_prefix, i == len(node.children) - 1, out)


def _summary(node: Node) -> str:
    parts = list(node.sources)
    if node.keywords is not None:
        kw = node.keywords
        words = [*(f'"{w}"' for w in kw.words[:3]), *(f"list {n}" for n in kw.lists)]
        more = ", …" if len(kw.words) > 3 else ""
        parts.append(f"{'/'.join(kw.fields)} contains any of {', '.join(words)}{more}")
    flags = [f for f, on in (("continue", node.cont), ("disabled", not node.enabled)) if on]
    text = f"  [{'; '.join(parts)}]" if parts else ""
    return text + (f" ({', '.join(flags)})" if flags else "")
