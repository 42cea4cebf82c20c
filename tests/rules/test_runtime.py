"""Hot reload: a good edit is picked up, a bad one keeps the last good tree
and reports where it is wrong, SIGHUP forces a reload."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from structlog.testing import capture_logs

from gateway.rules_runtime import RulesRuntime
from tests.rules.helpers import message

GOOD = "route: {id: root, title: R, owner: o, team: frontline}\n"
BILLING = GOOD + "routes:\n  - {id: refund, title: t, owner: o, keywords: {any: [退款]}, team: billing}\n"
BAD = GOOD + "routes:\n  - {id: refund, title: t, owner: o, keywords: {any: [退款]}, team: billing, priorty: high}\n"


def write(folder: Path, text: str, tick: int) -> None:
    """Write and give the file a distinct mtime (file systems with coarse
    timestamps would otherwise hide a quick second edit)."""
    path = folder / "00.yaml"
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(tick * 1_000_000_000, tick * 1_000_000_000))


def team_for_refund(rt: RulesRuntime) -> str | None:
    return rt.evaluate(message(text="我要退款")).team


def test_good_change_is_picked_up_and_bad_change_keeps_the_last_good_tree(tmp_path):
    write(tmp_path, GOOD, 1)
    rt = RulesRuntime(tmp_path, clock=lambda: 1000.0)
    assert rt.evaluate(message()) is None and rt.readiness()[0] is False  # nothing loaded yet
    assert rt.reload() is True
    assert team_for_refund(rt) == "frontline"
    assert rt.poll() is None  # nothing changed

    write(tmp_path, BILLING, 2)
    assert rt.poll() is True
    assert team_for_refund(rt) == "billing"
    good_tree = rt.tree

    write(tmp_path, BAD, 3)
    with capture_logs() as logs:
        assert rt.poll() is False
    assert [(e["event"], e["log_level"], e["keeping"], e["errors"]) for e in logs] == [("rules_reload_failed", "error", True, 1)]
    assert rt.tree is good_tree and team_for_refund(rt) == "billing"
    ready, status = rt.readiness()
    assert ready is True  # still serving the last good tree
    assert status["errors"] == [f"{tmp_path}/00.yaml:3:76: unknown key 'priorty' in rule (did you mean 'priority'?)"]
    assert (status["reloads"], status["reload_errors"], status["last_success"]) == (2, 1, 1000.0)
    assert rt.poll() is None  # a refused edit is not retried every second

    write(tmp_path, GOOD, 4)  # fixed: errors clear
    assert rt.poll() is True and rt.status()["errors"] == [] and team_for_refund(rt) == "frontline"


def test_a_bad_tree_at_start_is_not_ready(tmp_path):
    write(tmp_path, BAD, 1)
    rt = RulesRuntime(tmp_path)
    assert rt.reload() is False
    ready, status = rt.readiness()
    assert ready is False and status["loaded"] is False and len(status["errors"]) == 1


def test_metrics_collector(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    write(tmp_path, GOOD, 1)
    rt = RulesRuntime(tmp_path, clock=lambda: 1234.5)
    rt.reload()
    write(tmp_path, BAD, 2)
    rt.poll()
    registry = CollectorRegistry()
    registry.register(rt.collector())
    text = generate_latest(registry).decode()
    assert "omnigate_rules_reload_errors_total 1.0" in text
    assert "omnigate_rules_reloads_total 1.0" in text
    assert "omnigate_rules_last_reload_success_timestamp_seconds 1234.5" in text
    assert "omnigate_rules_loaded 1.0" in text


async def test_run_polls_and_sighup_forces_a_reload(tmp_path):
    write(tmp_path, GOOD, 1)
    rt = RulesRuntime(tmp_path, poll_seconds=0.05)
    rt.reload()
    task = asyncio.create_task(rt.run())
    try:
        write(tmp_path, BILLING, 2)
        await _until(lambda: rt.reloads_total == 2)
        assert team_for_refund(rt) == "billing"

        # SIGHUP to this very process, through the handler the runtime installs
        rt.install_sighup()
        try:
            os.kill(os.getpid(), signal.SIGHUP)
            await _until(lambda: rt.reloads_total == 3)
        finally:
            rt.remove_sighup()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_request_reload_reloads_even_without_a_change(tmp_path):
    write(tmp_path, GOOD, 1)
    rt = RulesRuntime(tmp_path, poll_seconds=60)
    rt.reload()
    task = asyncio.create_task(rt.run())
    try:
        rt.request_reload()  # what the SIGHUP handler calls
        await _until(lambda: rt.reloads_total == 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _until(condition, attempts: int = 200) -> None:
    """Wait for the background reload (bounded; not a timing assertion)."""
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the runtime did not reload")
