"""Routing rules as code: the YAML route tree, its checker, its evaluator.

Admins keep the tree in ``rules/*.yaml`` (read in file-name order, one root)
and its tests in ``rules/tests/*.yaml``. This package is pure: apart from
reading those files (:mod:`routing.rules.loader`) it does no I/O, reads no
clock and imports nothing of ``gateway`` or ``connectors``.

The pipeline's API::

    tree = load("rules")                              # or check(...) for errors
    outcome = evaluate(tree, RuleInput(inbound=…, now=…, contact_tier="vip"))
    outcome.path, outcome.matched, outcome.team, outcome.auto_reply, …

and the tools': :func:`check` (``omnigate rules check``), :func:`run_tests`,
:func:`dry_run` (``omnigate rules test``, ``POST /api/v1/rules/test``),
:func:`diff` (``omnigate rules diff``).

Module map: ``loader`` (files → YAML nodes), ``nodes`` (strict node
reading), ``syntax`` (matcher strings, weekdays, hours), ``validator``
(nodes → :class:`~routing.rules.spec.RuleSet` or errors), ``compiler``
(→ :class:`CompiledTree`, one keyword automaton), ``matchers``,
``evaluator``, ``inputs`` (a described message → RuleInput), ``dryrun``,
``testing``, ``diff``, ``bench``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path

from routing.rules.compiler import CompiledTree, compile_ruleset
from routing.rules.diff import DiffReport, diff
from routing.rules.dryrun import dry_run, render_decision, render_path, render_tree
from routing.rules.evaluator import evaluate
from routing.rules.inputs import InputError
from routing.rules.loader import Document, compose_text, read_documents
from routing.rules.matchers import Calendar
from routing.rules.testing import CaseResult, run_tests
from routing.rules.types import AutoReply, KnownNames, MatchedRule, RuleError, RuleInput, RuleOutcome, RulesInvalid
from routing.rules.validator import check_documents

__all__ = [
    "AutoReply", "Calendar", "CaseResult", "CompiledTree", "DiffReport", "KnownNames", "InputError",
    "MatchedRule", "RuleError", "RuleInput", "RuleOutcome", "RulesInvalid", "check", "check_texts",
    "diff", "dry_run", "evaluate", "load", "render_decision", "render_path", "render_tree", "run_tests",
]  # fmt: skip


def check(
    directory: str | Path,
    *,
    known: KnownNames | None = None,
    calendars: Collection[str] = (),
) -> tuple[CompiledTree | None, list[RuleError]]:
    """Read, validate and compile ``directory/*.yaml``: the tree, or every error.

    ``known`` lists the teams, agents and webhooks the rules may name (not
    checked when None); ``calendars`` the business-hours calendars the
    runtime supplies (usable wherever a named interval is)."""
    docs, errors = read_documents(directory)
    return _compile(docs, errors, known, calendars)


def check_texts(
    texts: Mapping[str, str],
    *,
    known: KnownNames | None = None,
    calendars: Collection[str] = (),
) -> tuple[CompiledTree | None, list[RuleError]]:
    """Like :func:`check`, for rule files given as {name: YAML text} (tests, bench)."""
    docs, errors = [], []
    for name in sorted(texts):
        doc, err = compose_text(texts[name], name)
        if err is not None:
            errors.append(err)
        else:
            docs.append(doc)
    return _compile(docs, errors, known, calendars)


def _compile(docs: list[Document], errors: list[RuleError], known: KnownNames | None, calendars: Collection[str]):
    ruleset, errors = check_documents(docs, known, calendars, errors)
    return (compile_ruleset(ruleset), []) if ruleset is not None else (None, errors)


def load(directory: str | Path, *, known: KnownNames | None = None, calendars: Collection[str] = ()) -> CompiledTree:
    """The compiled tree of ``directory``; raises :class:`RulesInvalid` listing every error."""
    tree, errors = check(directory, known=known, calendars=calendars)
    if tree is None:
        raise RulesInvalid(errors)
    return tree
