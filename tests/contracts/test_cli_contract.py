"""CONTRACTS.md "CLI": command, flag, parser and bench figure names that
operators script against."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.cli import COMMANDS

#: The bench figures CONTRACTS.md fixes ("Figure names are stable").
CONTRACT_FIGURES = {"ingest_http", "pipeline", "pipeline_bare", "sustained", "assign_next_store", "webhook_delivery",
                    "console_page", "webchat_push", "calllog_rows", "social_webhook", "redis_ingest",
                    "redis_pipeline"}
#: The parser names CONTRACTS.md lists for `omnigate parse --list`.
CONTRACT_PARSERS = {"api", "email", "wechat", "wecom", "telegram", "webchat", "asterisk", "freeswitch", "twilio",
                    "whatsapp", "messenger", "instagram", "line"}


def _omnigate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=120)


def test_every_contract_bench_figure_is_registered() -> None:
    from gateway.bench.runner import REGISTRY

    figures = {f for group in REGISTRY.values() for f in group.figures}
    assert CONTRACT_FIGURES <= figures, CONTRACT_FIGURES - figures


def test_parse_list_prints_the_contract_parser_names_one_per_line_and_nothing_else() -> None:
    done = _omnigate("parse", "--list")
    assert done.returncode == 0 and done.stderr == ""
    names = done.stdout.splitlines()
    assert all(n and n == n.strip() and n.isidentifier() for n in names), names
    assert CONTRACT_PARSERS <= set(names), CONTRACT_PARSERS - set(names)


@pytest.mark.parametrize("command, flags", [
    ("serve", ["--config", "--listen", "--data-dir"]),
    ("parse", ["--list", "--context"]),
    ("bench", ["--json", "--only"]),
    ("replay", ["--failed", "--since", "--id"]),
])
def test_contract_commands_and_flags_exist(command, flags) -> None:
    assert command in COMMANDS
    done = _omnigate(command, "--help")
    assert done.returncode == 0, done.stderr
    for flag in flags:
        assert flag in done.stdout, (command, flag)


def test_rules_subcommands_exist() -> None:
    done = _omnigate("rules", "--help")
    assert done.returncode == 0 and all(sub in done.stdout for sub in ("check", "test", "diff"))
