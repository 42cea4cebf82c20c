"""``omnigate rules check|test|diff``: the routing rules, offline.

- ``check [DIR]`` validates ``DIR/*.yaml`` (default ``./rules``) and runs the
  rule tests in ``DIR/tests/*.yaml``; every error is ``file:line:col:
  message``; exit 1 on any error or failed test (like ``promtool``).
- ``test [DIR] --channel email --from a@b.cn --subject … [--tree] [--json]``
  shows where a message would go (like ``amtool config routes test``); with
  ``--file PAYLOAD --channel CH [--context CTX.json]`` the message is a
  recorded raw payload, run through the channel's parser first.
- ``diff NEW_DIR [--rules LIVE_DIR] [--since 7d] [--limit N]`` replays the
  journal through the live and the candidate rules and lists the messages
  whose decision would change, with counts per change.

``--directory FILE`` (the directory YAML of agents, teams and calendars;
default: the ``directory:`` of the configuration that ``serve`` reads —
``--config``, ``OMNIGATE_CONFIG``, ``./omnigate.yaml``) makes the checker
verify team, agent and skill names and lets ``time in NAME`` use the
directory's business-hours calendars. Without one, ``check`` warns that it
could not check teams.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DEFAULT_DIR = "rules"
#: journal statuses whose messages went (or will go) through the rules
_ROUTED = ("processed", "pending")


def main(argv: list[str], prog: str = "omnigate rules") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    _check_parser(sub.add_parser("check", help="validate the rules and run their tests"))
    _test_parser(sub.add_parser("test", help="show where a message would be routed"))
    _diff_parser(sub.add_parser("diff", help="replay the journal through live and candidate rules"))
    args = ap.parse_args(argv)
    return args.run(args, f"{prog} {args.command}")


# ---------------------------------------------------------------- shared


class _Failed(Exception):
    """Already reported on stderr; the command exits with ``code``."""

    def __init__(self, code: int):
        self.code = code


def _add_directory_flag(ap: argparse.ArgumentParser, config: bool = True) -> None:
    ap.add_argument("--directory", metavar="FILE", help="directory YAML: check team/agent/skill names, use its "
                    "calendars (default: the configuration's directory:)")
    if config:
        ap.add_argument("--config", metavar="FILE", help="configuration whose directory: is used (default "
                    "$OMNIGATE_CONFIG, else ./omnigate.yaml if present)")


def _configured_directory(args: argparse.Namespace, prog: str) -> str | None:
    """``--directory``, else the ``directory:`` of the configuration ``serve``
    would read (--config, OMNIGATE_CONFIG, ./omnigate.yaml)."""
    if args.directory:
        return args.directory
    import os

    import yaml

    from gateway.config import config_path

    if os.environ.get("OMNIGATE_DIRECTORY"):
        return os.environ["OMNIGATE_DIRECTORY"]
    path = config_path(args.config)
    if path is None:
        return None
    # only directory: is needed; the daemon's secrets need not be in this shell's environment
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        print(f"{prog}: configuration error: {path}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        raise _Failed(2) from None
    value = data.get("directory") if isinstance(data, dict) else None
    return str(value) if value else None


def _directory(path: str | None, prog: str) -> tuple[Any, dict]:
    """(KnownNames or None, calendars by name) from a directory YAML file."""
    if path is None:
        return None, {}
    from routing.directory import DirectoryError, parse_directory
    from routing.rules import KnownNames

    try:
        d = parse_directory(Path(path).read_text(encoding="utf-8"), path)
    except OSError as exc:
        print(f"{prog}: {path}: {exc.strerror or exc}", file=sys.stderr)
        raise _Failed(2) from None
    except DirectoryError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise _Failed(2) from None
    return known_names(d), dict(d.calendars)


def known_names(d: Any) -> Any:
    """What a directory lets rules refer to: teams, agents and the skills some agent has."""
    from routing.rules import KnownNames

    return KnownNames(teams=frozenset(d.teams), agents=frozenset(a.id for a in d.agents),
                      skills=frozenset(s for a in d.agents for s in a.skills))


def _load(rules_dir: str, known: Any, calendars: dict, prog: str):
    """The compiled tree, or every error printed and :class:`_Failed`."""
    from routing.rules import check

    tree, errors = check(rules_dir, known=known, calendars=calendars)
    for e in errors:
        print(e, file=sys.stderr)
    if tree is None:
        print(f"{prog}: {rules_dir}: {len(errors)} error{'s' * (len(errors) != 1)}", file=sys.stderr)
        raise _Failed(1)
    return tree


def _guarded(fn):
    def run(args: argparse.Namespace, prog: str) -> int:
        try:
            return fn(args, prog)
        except _Failed as exc:
            return exc.code

    return run


# ---------------------------------------------------------------- check


def _check_parser(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("dir", nargs="?", default=DEFAULT_DIR, metavar="DIR", help="rules folder (default ./rules)")
    _add_directory_flag(ap)
    ap.add_argument("--no-tests", action="store_true", help="validate only; do not run DIR/tests/*.yaml")
    ap.set_defaults(run=_guarded(_check))


def _check(args: argparse.Namespace, prog: str) -> int:
    from routing.rules import run_tests

    directory = _configured_directory(args, prog)
    known, calendars = _directory(directory, prog)
    tree = _load(args.dir, known, calendars, prog)
    print(f"{args.dir}: {tree.rule_count} rules in {len(tree.files)} files, {len(tree.keywords)} keywords: OK")
    if directory is None:
        print(f"{prog}: warning: no directory (no --directory, no directory: in the configuration): "
              "could not check teams, agents and skills", file=sys.stderr)
    else:
        print(f"teams, agents and skills checked against {directory}")
    if args.no_tests:
        return 0
    results, errors = run_tests(tree, Path(args.dir) / "tests", calendars)
    for e in errors:
        print(e, file=sys.stderr)
    failed = [r for r in results if not r.passed]
    for r in failed:
        print(r.report(), file=sys.stderr)
    print(f"rule tests: {len(results) - len(failed)} passed, {len(failed)} failed, {len(errors)} errors in test files")
    return 1 if failed or errors else 0


# ---------------------------------------------------------------- test


def _test_parser(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("dir", nargs="?", default=DEFAULT_DIR, metavar="DIR", help="rules folder (default ./rules)")
    _add_directory_flag(ap)
    ap.add_argument("--file", metavar="PAYLOAD", help="a recorded raw payload, parsed with --channel's parser")
    ap.add_argument("--context", metavar="CTX.json", help="the payload's parse context (as for omnigate parse)")
    ap.add_argument("--tree", action="store_true", help="print the whole tree with the path marked")
    ap.add_argument("--json", action="store_true", help="print the decision as JSON (one object per message)")
    m = ap.add_argument_group("the message")
    m.add_argument("--channel", required=True)
    m.add_argument("--from", dest="from_", metavar="IDENTITY", help="sender: a@b.cn, +8613…, an openid")
    m.add_argument("--sender-kind", help="identity kind when it cannot be guessed from --from")
    m.add_argument("--name", help="the sender's display name")
    m.add_argument("--account", help="mailbox / app / bot that received it (default: the channel)")
    m.add_argument("--subject")
    m.add_argument("--text")
    m.add_argument("--kind", choices=("message", "call", "event"))
    m.add_argument("--language", help="the message's language, e.g. zh-CN or en")
    m.add_argument("--attachments", type=int, metavar="N", help="number of attachments")
    m.add_argument("--auto", choices=("auto_reply", "bounce", "bulk"), help="the message is machine-sent")
    m.add_argument("--now", help="ISO 8601 time of arrival (default: the payload's sent_at, else now)")
    c = ap.add_argument_group("the contact and ticket")
    c.add_argument("--tier", help="contact tier, e.g. vip")
    c.add_argument("--tag", action="append", dest="tags", metavar="TAG", help="contact tag (repeatable)")
    c.add_argument("--contact-name")
    c.add_argument("--contact-language")
    c.add_argument("--follow-up", action="store_const", const="follow_up", dest="ticket", help="a follow-up, not a new ticket")
    c.add_argument("--ticket-status", choices=("new", "open", "pending", "solved", "closed"))
    c.add_argument("--ticket-number", type=int)
    ap.set_defaults(run=_guarded(_test))


_MESSAGE_FLAGS = ("channel", "from_", "sender_kind", "name", "account", "subject", "text", "kind", "language",
                  "attachments", "auto", "tier", "tags", "contact_name", "contact_language", "ticket",
                  "ticket_status", "ticket_number", "now")  # fmt: skip


def _test(args: argparse.Namespace, prog: str) -> int:
    from routing.rules import InputError, evaluate
    from routing.rules.inputs import message_input, to_rule_input, with_contact

    known, calendars = _directory(_configured_directory(args, prog), prog)
    tree = _load(args.dir, known, calendars, prog)
    fields = {("from" if k == "from_" else k): getattr(args, k) for k in _MESSAGE_FLAGS if getattr(args, k) is not None}
    try:
        msg = message_input(fields)
        if args.file:
            inputs = [with_contact(ib, msg.now or ib.sent_at or datetime.now(timezone.utc), msg) for ib in _parse_file(args, prog)]
        else:
            inputs = [to_rule_input(msg, datetime.now(timezone.utc))]
    except InputError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    for ri in inputs:
        _print_outcome(tree, evaluate(tree, ri, calendars), args)
    return 0


def _parse_file(args: argparse.Namespace, prog: str) -> list:
    from connectors.base import PayloadRejected
    from connectors.registry import RegistryError, parser_for

    try:
        parse = parser_for(args.channel)
        raw = Path(args.file).read_bytes()
        context = json.loads(Path(args.context).read_text(encoding="utf-8")) if args.context else {}
        inbounds = parse(raw, {**context, "channel": args.channel, "source_name": args.file})
    except (RegistryError, OSError, ValueError, PayloadRejected) as exc:
        print(f"{prog}: {args.file}: error: {exc}", file=sys.stderr)
        raise _Failed(1) from None
    if not inbounds:
        print(f"{prog}: {args.file}: the parser returned no message", file=sys.stderr)
        raise _Failed(1)
    return inbounds


def _print_outcome(tree, outcome, args: argparse.Namespace) -> None:
    from routing.rules import render_decision, render_path, render_tree

    if args.json:
        answer = outcome.to_dict()
        if args.tree:
            answer["tree"] = render_tree(tree, outcome)
        print(json.dumps(answer, ensure_ascii=False))
        return
    print(render_tree(tree, outcome) if args.tree else render_path(outcome))
    print(render_decision(outcome))


# ---------------------------------------------------------------- diff


def _diff_parser(ap: argparse.ArgumentParser) -> None:
    from gateway.commands.common import add_config_flags

    ap.add_argument("new_dir", metavar="NEW_DIR", help="the candidate rules folder")
    ap.add_argument("--rules", metavar="LIVE_DIR", help="the live rules (default: rules_dir of the config, else ./rules)")
    ap.add_argument("--since", metavar="TIME", default="7d", help="journal entries since TIME (ISO 8601, or 2h, 7d; default 7d)")
    ap.add_argument("--limit", type=int, default=10_000, help="at most this many journal entries (default 10000)")
    ap.add_argument("--show", type=int, default=50, metavar="N", help="list at most N changed messages (default 50)")
    ap.add_argument("--json", action="store_true", help="print the whole report as JSON")
    _add_directory_flag(ap, config=False)
    add_config_flags(ap)
    ap.set_defaults(run=_guarded(_diff))


def _diff(args: argparse.Namespace, prog: str) -> int:
    from gateway import logs
    from gateway.commands.common import load_config
    from gateway.timeparse import parse_time
    from routing.rules import diff

    config = load_config(args, prog)
    if config is None:
        return 2
    logs.configure("warning", config.log_format)  # the report is the output, not the store's log
    try:
        since = parse_time(args.since, config.timezone)
    except ValueError as exc:
        print(f"{prog}: --since: {exc}", file=sys.stderr)
        return 2
    known, calendars = _directory(args.directory or config.directory, prog)
    live = _load(args.rules or config.rules_dir or DEFAULT_DIR, known, calendars, prog)
    candidate = _load(args.new_dir, known, calendars, prog)
    inputs, skipped = journal_inputs(config, since, args.limit)
    report = diff(live, candidate, inputs, calendars)
    if args.json:
        print(json.dumps({**report.to_dict(), "skipped": skipped}, ensure_ascii=False))
        return 0
    print(f"replayed {report.total} messages since {since:%Y-%m-%d %H:%M %z}: {len(report.changed)} would be routed differently"
          + (f" ({len(skipped)} journal entries could not be parsed)" if skipped else ""))
    width = max((len(k) for k in report.counts), default=0)
    for change, n in report.counts.items():
        print(f"  {change:<{width}}  × {n}")
    for m in report.changed[: args.show]:
        subject = f" {m.subject!r}" if m.subject else ""
        print(f"{m.key} {m.channel}{subject}: " + "; ".join(map(str, m.changes)))
    return 0


def journal_inputs(config, since: datetime, limit: int) -> tuple[list, list[str]]:
    """The journal's messages since ``since`` as RuleInputs (with the contact
    the pipeline resolved, when it did), and the ids of entries that could not
    be parsed. Reads the store through :mod:`gateway.store`."""
    import asyncio

    return asyncio.run(_journal_inputs(config, since, limit))


async def _journal_inputs(config, since: datetime, limit: int) -> tuple[list, list[str]]:
    from gateway.app import context_factory
    from gateway.store.factory import has_store, open_store

    if not has_store(config):
        return [], []
    store = open_store(config, consumer="omnigate-rules")
    context_for = context_factory(config)
    inputs: list = []
    skipped: list[str] = []
    try:
        async for entry in _journal_entries(store, since, limit):
            contact = await store.get_contact(entry.contact_id) if entry.contact_id else None
            try:
                inputs += [_rule_input(ib, entry, contact) for ib in _parse_entry(entry, context_for)]
            except Exception as exc:  # a parser error must not stop the replay: count it, go on
                skipped.append(f"{entry.id}: {type(exc).__name__}: {exc}")
    finally:
        await store.close()
    return inputs, skipped


async def _journal_entries(store, since: datetime, limit: int) -> AsyncIterator:
    after, seen = 0, 0
    while seen < limit:
        batch = await store.journal_list(since=since, after_seq=after, limit=min(500, limit - seen), with_raw=True)
        if not batch:
            return
        for entry in batch:
            if entry.status in _ROUTED:
                yield entry
        after, seen = batch[-1].seq, seen + len(batch)


def _parse_entry(entry, context_for) -> list:
    from connectors.registry import parser_for

    return parser_for(entry.channel)(entry.raw, context_for(entry.channel, entry.account, entry.meta))


def _rule_input(inbound, entry, contact):
    import msgspec

    from routing.rules import RuleInput

    inbound = msgspec.structs.replace(inbound, id=inbound.id or entry.id, received_at=entry.received_at)
    return RuleInput(
        inbound=inbound,
        now=entry.received_at,
        contact_name=contact.name if contact else None,
        contact_tier=contact.tier if contact else None,
        contact_tags=tuple(contact.tags) if contact else (),
        contact_language=contact.attributes.get("language") if contact else None,
    )
