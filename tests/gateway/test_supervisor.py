"""The supervisor's policy, without sleeping: the back-off schedule is a pure
function, and the supervisor runs with an injected clock, sleep and random
draw, so restarts, resets, auth parking and /readyz states are checked
exactly."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from connectors.base import AuthFailed, Fatal, NotReady
from gateway.supervisor import BackoffPolicy, Supervisor, TaskState, backoff_delay

POLICY = BackoffPolicy(base=1.0, cap=30.0, reset_after=60.0)


def test_schedule_doubles_up_to_the_cap():
    ceilings = [backoff_delay(n, POLICY, rand=1.0) for n in range(1, 9)]
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_full_jitter_scales_the_ceiling():
    assert backoff_delay(3, POLICY, rand=0.0) == 0.0
    assert backoff_delay(3, POLICY, rand=0.25) == 1.0
    assert backoff_delay(10_000, POLICY, rand=0.5) == 15.0  # no overflow far out


@pytest.mark.parametrize("attempt", [0, -1])
def test_attempts_are_one_based(attempt):
    with pytest.raises(ValueError):
        backoff_delay(attempt, POLICY, rand=0.5)


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError):
        BackoffPolicy(base=10.0, cap=1.0)


class Script:
    """A fake world: a clock that only moves when told to, a sleep that
    records and advances the clock, and a task that fails as scripted."""

    def __init__(self, outcomes: list[BaseException | float | None]):
        # an exception is raised; a float means "stay up that long, then drop the
        # connection"; None means return normally
        self.outcomes = list(outcomes)
        self.now = 1000.0
        self.slept: list[float] = []
        self.runs = 0

    def supervisor(self) -> Supervisor:
        return Supervisor(POLICY, clock=lambda: self.now, wall_clock=lambda: self.now,
                          sleep=self.sleep, rand=lambda: 1.0)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def task(self) -> None:
        self.runs += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, float):
            self.now += outcome
            raise ConnectionResetError("peer went away")
        if outcome is not None:
            raise outcome


async def test_retries_transient_errors_with_growing_delays_then_stops():
    script = Script([NotReady("busy"), OSError("refused"), TimeoutError(), NotReady("again"), None])
    sup = script.supervisor()
    await sup.run({"mail:imap:a": script.task})
    assert script.slept == [1.0, 2.0, 4.0, 8.0]
    assert sup.states() == {"mail:imap:a": TaskState("stopped")}


async def test_a_run_that_stayed_up_resets_the_back_off():
    # two quick failures, then up for two minutes, then a drop: back to 1 s
    script = Script([NotReady("x"), NotReady("x"), 120.0, NotReady("x"), None])
    await script.supervisor().run({"t": script.task})
    assert script.slept == [1.0, 2.0, 1.0, 2.0]


async def test_fatal_stops_the_task_alone():
    a = Script([Fatal("folder 'Nope' does not exist")])
    b = Script([NotReady("x"), None])
    sup = a.supervisor()
    await sup.run({"a": a.task, "b": b.task})
    states = sup.states()
    assert states["a"] == TaskState("failed", reason="Fatal: folder 'Nope' does not exist")
    assert states["b"].status == "stopped"
    assert a.runs == 1


async def test_unexpected_errors_are_retried():
    script = Script([KeyError("odd reply"), None])
    await script.supervisor().run({"t": script.task})
    assert script.runs == 2 and script.slept == [1.0]


async def test_auth_failure_waits_for_reconfiguration():
    script = Script([AuthFailed("login refused"), None])
    sup = script.supervisor()
    run = asyncio.create_task(sup.run({"t": script.task}))
    while sup.states().get("t", TaskState("running")).status != "failed":
        await asyncio.sleep(0)
    for _ in range(10):  # it does not retry by itself
        await asyncio.sleep(0)
    assert script.runs == 1 and script.slept == []
    assert sup.states()["t"] == TaskState("failed", reason="AuthFailed: login refused")
    assert not sup.ready()
    sup.restart("t")
    await asyncio.wait_for(run, 5)
    assert script.runs == 2 and sup.states()["t"].status == "stopped"


async def test_retrying_state_tells_attempt_and_next_try():
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        await gate.wait()

    async def flaky() -> None:
        if not gate.is_set():
            raise NotReady("connection refused")

    sup = Supervisor(POLICY, clock=lambda: 0.0, wall_clock=lambda: 1_700_000_000.0, sleep=sleep, rand=lambda: 0.5)
    run = asyncio.create_task(sup.run({"t": flaky}))
    while "t" not in sup.states() or sup.states()["t"].status != "retrying":
        await asyncio.sleep(0)
    assert sup.states()["t"] == TaskState(
        "retrying",
        attempt=1,
        next_try_at=datetime.fromtimestamp(1_700_000_000.5, tz=timezone.utc),
        reason="NotReady: connection refused",
    )
    assert not sup.ready()
    gate.set()
    await asyncio.wait_for(run, 5)
    assert sup.ready()


async def _running_forever() -> tuple[Supervisor, asyncio.Task]:
    """A supervisor running task "a", which runs until cancelled."""
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    sup = Supervisor(POLICY)
    run = asyncio.create_task(sup.run({"a": forever}))
    await asyncio.wait_for(started.wait(), 5)
    return sup, run


async def test_cancelling_stops_every_task():
    sup, run = await _running_forever()
    assert sup.states()["a"].status == "running" and sup.ready()
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert sup.states()["a"] == TaskState("stopped", reason="cancelled")


async def test_names_are_unique_while_running():
    sup, run = await _running_forever()
    with pytest.raises(ValueError, match="already supervised: a"):
        await sup.run({"a": asyncio.Event().wait})
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run


async def test_a_webhook_only_connector_is_ready_not_stopped(aiohttp_client, tmp_path):
    """WeChat's run() returns at once (WeChat pushes): /readyz says ready (webhook),
    as for the api channel, and the gateway is ready."""
    from gateway.app import create_app
    from gateway.config import load
    from tests.gateway.conftest import TOKEN

    env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data"),
           "OMNIGATE_RULES_DIR": str(tmp_path / "no-rules"),
           "OMNIGATE_WECHAT__ACCOUNTS__MAIN__APPID": "wx0123456789abcdef",
           "OMNIGATE_WECHAT__ACCOUNTS__MAIN__APP_SECRET": "s", "OMNIGATE_WECHAT__ACCOUNTS__MAIN__TOKEN": "t"}
    client = await aiohttp_client(create_app(load(None, environ=env)))
    for _ in range(200):  # the supervisor runs the connector on the loop
        body = await (await client.get("/readyz")).json()
        if body["detail"]["connectors"]["tasks"].get("wechat", {}).get("status") not in (None, "running"):
            break
        await asyncio.sleep(0.01)
    tasks = body["detail"]["connectors"]["tasks"]
    assert tasks["wechat"] == {"status": "ready (webhook)"} and tasks["api"] == {"status": "ready (webhook)"}
    assert body["status"] == "ready"
