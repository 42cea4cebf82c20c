"""Small builders shared by the rules tests: a tree from YAML text, a message
from keyword arguments (the same shape as rule tests and the dry-run body)."""

from __future__ import annotations

import textwrap
from datetime import datetime

from routing.rules import CompiledTree, RuleInput, RuleOutcome, check_texts, evaluate
from routing.rules.inputs import message_input, to_rule_input

#: a Tuesday, 10:00 in Shanghai (inside the usual business hours)
TUESDAY_10 = "2025-03-04T10:00:00+08:00"

ROOT = """
route:
  id: root
  title: Root
  owner: ops
  team: frontline
"""


def tree_of(*files: str, **kw) -> CompiledTree:
    """Compile rule files given as YAML text (dedented), named 00.yaml, 01.yaml…"""
    tree, errors = check_texts({f"{i:02d}.yaml": textwrap.dedent(t) for i, t in enumerate(files)}, **kw)
    assert tree is not None, "\n".join(map(str, errors))
    return tree


def errors_of(*files: str, **kw) -> list[str]:
    tree, errors = check_texts({f"{i:02d}.yaml": textwrap.dedent(t) for i, t in enumerate(files)}, **kw)
    assert tree is None and errors
    return [str(e) for e in errors]


def message(**fields) -> RuleInput:
    fields.setdefault("channel", "email")
    fields.setdefault("now", TUESDAY_10)
    return to_rule_input(message_input(fields))


def route(tree: CompiledTree, calendars=None, **fields) -> RuleOutcome:
    return evaluate(tree, message(**fields), calendars)


def with_rules(rules: str, extra: str = "") -> CompiledTree:
    """A root plus ``rules`` (a YAML list under ``routes:``) and other sections."""
    return tree_of(ROOT + "routes:\n" + textwrap.indent(textwrap.dedent(rules), "  ") + textwrap.dedent(extra))


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)
