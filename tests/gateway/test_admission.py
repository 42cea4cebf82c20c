"""Load (gateway/admission.py): the fair-share gate's decisions on an
injected backlog and loop-busy share, the backlog estimate and its optional limit
(the API channel's 503 + Retry-After), and the worker's bounded memory
whatever the journal's backlog. No timing assertions: the decisions are
driven through the injected backlog and busy share; waits end on events."""

from __future__ import annotations

import asyncio

import pytest

from gateway import keys
from gateway.admission import AdmissionGate, Backlog, LoopBusy
from gateway.app import create_app
from gateway.config import ConfigError
from gateway.store.sqlite import SQLiteStore
from gateway.worker import Worker
from tests.gateway.conftest import AUTH, business_hours, make_config

PATIENCE_S = 30.0  # a safety net against a hung test, not a timing assertion


class Probe:
    """The gate's inputs, set by the test."""

    def __init__(self, backlog: int = 0, busy: float = 0.0):
        self.backlog, self.busy = backlog, busy


def gate(probe: Probe, **kw) -> AdmissionGate:
    kw = {"ratio": 2.0, "high_water": 100, "busy_at": 0.9, "max_delay_s": PATIENCE_S, "burst": 3.0, **kw}
    return AdmissionGate(backlog=lambda: probe.backlog, busy=lambda: probe.busy, **kw)


def test_nobody_waits_unless_backlog_and_a_busy_loop_both_say_starved():
    probe = Probe()
    g = gate(probe)
    for backlog, busy in [(0, 0.0), (10_000, 0.0), (10_000, 0.89), (99, 1.0)]:
        probe.backlog, probe.busy = backlog, busy
        assert not g.starved()
        assert all(g.try_admit() for _ in range(50))
    assert g.stats["free"] == 200 and g.credits == 3.0
    probe.backlog, probe.busy = 100, 0.9
    assert g.starved()


def test_starved_intake_is_held_to_ratio_times_what_the_pipeline_settles():
    probe = Probe(backlog=5000, busy=1.0)
    g = gate(probe)
    assert [g.try_admit() for _ in range(4)] == [True, True, True, False]  # the burst, then none
    g.settled(1)  # ratio 2: two more intakes per settled entry
    assert [g.try_admit() for _ in range(3)] == [True, True, False]
    g.settled(10)  # credits are capped at the burst
    assert g.credits == 3.0
    assert g.stats == {"free": 0, "credited": 5, "waited": 0, "timed_out": 0}


def test_ratio_zero_turns_the_gate_off():
    g = gate(Probe(backlog=10**6, busy=1.0), ratio=0)
    assert not g.enabled and not g.starved()
    assert all(g.try_admit() for _ in range(100))


async def test_a_waiting_intake_goes_through_when_the_pipeline_settles_in_arrival_order():
    probe = Probe(backlog=5000, busy=1.0)
    g = gate(probe, burst=1.0, ratio=1.0)
    assert g.try_admit()  # the one credit
    order: list[int] = []

    async def intake(n: int) -> None:
        await g.admit()
        order.append(n)

    tasks = [asyncio.create_task(intake(n)) for n in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == []  # all waiting for credit
    g.settled(1)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert order == [0]
    g.settled(2)
    await asyncio.wait_for(asyncio.gather(*tasks), PATIENCE_S)
    assert order == [0, 1, 2] and g.stats["waited"] == 3


async def test_waiting_intake_is_admitted_at_once_when_starvation_ends():
    probe = Probe(backlog=5000, busy=1.0)
    g = gate(probe, burst=0.0)
    task = asyncio.create_task(g.admit())
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()
    probe.backlog = 0  # the pipeline caught up
    g.settled(0)
    await asyncio.wait_for(task, PATIENCE_S)


async def test_the_gate_delays_but_never_refuses():
    """No credit ever comes (the pipeline stalled): the intake still goes
    through after the longest wait — a WeChat callback must get its answer."""
    g = gate(Probe(backlog=5000, busy=1.0), burst=0.0, max_delay_s=0.01)
    await asyncio.wait_for(g.admit(), PATIENCE_S)  # returns, raises nothing
    assert g.stats["timed_out"] == 1 and not g._waiters


async def test_waits_that_run_out_end_in_arrival_order_on_one_timer(monkeypatch):
    """Every wait is max_delay_s long, so one timer set for the oldest
    waiter's deadline ends them all in arrival order; a waiter that goes
    away meanwhile is dropped, and a credit still goes to the oldest.

    The waits run out when the test moves the loop's clock past them, not
    after a real 20 ms: a loaded machine that stalled this process that long
    while the waiters queued ended them before the credit came."""
    loop = asyncio.get_running_loop()
    real_time, moved = loop.time, [0.0]
    monkeypatch.setattr(loop, "time", lambda: real_time() + moved[0])  # the loop's timers follow it
    g = gate(Probe(backlog=5000, busy=1.0), burst=0.0, max_delay_s=PATIENCE_S)
    order: list[int] = []

    async def intake(n: int) -> None:
        await g.admit()
        order.append(n)

    tasks = []
    for n in range(4):
        tasks.append(asyncio.create_task(intake(n)))
        await asyncio.sleep(0)
        if n == 0:
            timer = g._timer
            assert timer is not None
    assert g._timer is timer and len(g._waiters) == 4  # one timer, whatever the number waiting
    tasks[2].cancel()  # went away
    await asyncio.gather(tasks[2], return_exceptions=True)
    assert [f for _, f in g._waiters if f.done()] == [] and len(g._waiters) == 3
    g.ratio = 0.5
    g.settled(2)  # one credit: the oldest
    await asyncio.sleep(0)
    assert order == [0] and g._timer is timer  # the others still wait
    moved[0] = PATIENCE_S + 1  # their waits run out
    await asyncio.wait_for(asyncio.gather(tasks[0], tasks[1], tasks[3]), PATIENCE_S)
    assert order == [0, 1, 3]
    assert g.stats["waited"] == 1 and g.stats["timed_out"] == 2
    assert not g._waiters and g._timer is None


def test_loop_busy_is_an_average_of_the_share_of_time_outside_select():
    b = LoopBusy(alpha=0.5)
    b.observe(1.0)
    assert b() == pytest.approx(0.5)
    b.observe(-0.3)  # clamped to [0, 1]
    assert b() == pytest.approx(0.25)


async def test_loop_busy_times_the_selector_and_gives_it_back():
    """Installed on the running loop, the probe counts the time spent
    waiting in select; stopped, the loop's selector is as it was."""
    loop = asyncio.get_running_loop()
    b = LoopBusy(tick_s=0.01)
    await b.start()
    assert "select" in loop._selector.__dict__
    await asyncio.sleep(0.05)  # an idle loop: time goes to select
    await b.stop()
    assert b.idle > 0
    assert "select" not in loop._selector.__dict__


class CountingStore:
    def __init__(self, pending: int):
        self.pending = pending

    async def journal_counts(self) -> dict[str, int]:
        return {"pending": self.pending, "processed": 7}


async def test_backlog_estimate_moves_with_appends_and_settles_and_resamples():
    store = CountingStore(40)
    b = Backlog(store, limit=50)
    assert await b.sample() == 40
    b.appended(12)
    b.settled(1)
    assert b.pending == 51 and b.full()
    store.pending = 3  # other instances drained it (Redis): the next sample wins
    await b.sample()
    assert b.pending == 3 and not b.full()
    assert not Backlog(store, limit=0).full()  # 0: no limit


@pytest.mark.parametrize("key, value", [("admission_ratio", "-1"), ("admission_max_delay_s", "0"),
                                        ("admission_max_delay_s", "5"), ("backlog_limit", "-2"),
                                        ("backlog_retry_after_s", "0")])
def test_config_refuses_bad_load_settings(tmp_path, key, value):
    from gateway.config import load

    with pytest.raises(ConfigError, match=f"pipeline.{key}"):
        load(None, environ={"OMNIGATE_DATA_DIR": str(tmp_path), f"OMNIGATE_PIPELINE__{key.upper()}": value})


def message(n: int) -> dict:
    return {"external_id": f"m{n}", "sender": {"kind": "email", "value": f"c{n}@example.com"}, "text": "hello"}


async def test_api_channel_answers_503_with_retry_after_at_the_backlog_limit(aiohttp_client, tmp_path):
    """An ingest-only node (workers 0) so the backlog stays: two entries fill
    a limit of two; the third is refused with Retry-After and not journaled."""
    config = make_config(tmp_path, pipeline={"workers": 0, "backlog_limit": 2, "backlog_retry_after_s": 45})
    app = create_app(config, clock=business_hours())
    client = await aiohttp_client(app)
    for n in range(2):
        resp = await client.post("/channels/api/messages", json=message(n), headers=AUTH)
        assert resp.status == 202
    resp = await client.post("/channels/api/messages", json=message(2), headers=AUTH)
    assert resp.status == 503 and resp.headers["Retry-After"] == "45"
    assert resp.content_type == "application/problem+json"
    assert "backlog_limit" in (await resp.json())["detail"]
    assert (await app[keys.STORE].journal_counts())["pending"] == 2
    assert app[keys.INGEST].gate is None  # an ingest-only node has no pipeline to make room for


async def test_without_a_limit_the_api_channel_takes_any_backlog(aiohttp_client, tmp_path):
    app = create_app(make_config(tmp_path, pipeline={"workers": 0}), clock=business_hours())
    client = await aiohttp_client(app)
    app[keys.LOAD].backlog.appended(10**6)
    resp = await client.post("/channels/api/messages", json=message(1), headers=AUTH)
    assert resp.status == 202


async def test_the_gate_is_wired_between_ingest_and_the_worker(aiohttp_client, tmp_path):
    app = create_app(make_config(tmp_path), clock=business_hours())
    client = await aiohttp_client(app)
    load = app[keys.LOAD]
    assert app[keys.INGEST].gate is load.gate and load.gate.ratio == 2.0
    resp = await client.post("/channels/api/messages", json=message(1), headers=AUTH)
    assert resp.status == 202
    await app[keys.WORKER].drain()
    assert load.gate.stats["free"] == 1  # not starved: admitted at once
    assert load.backlog.pending == 0  # appended, then settled by the worker


async def test_a_large_backlog_stays_in_the_journal_not_in_memory(tmp_path):
    """5,000 pending entries and a pipeline that cannot keep up: the worker
    never holds more than its claim batches and its tasks' entries, however
    long the backlog (counted, not timed)."""
    store = SQLiteStore(tmp_path / "omnigate.db", synchronous="normal")
    try:
        for n in range(50):
            await asyncio.gather(*(store.journal_append("api", "api", f"k{n}-{i}", b"{}") for i in range(100)))
        claimed: list[int] = []
        real_claim = store.claim_pending

        async def claim_pending(after_seq: int, limit: int):
            entries = await real_claim(after_seq, limit)
            claimed.append(len(entries))
            return entries

        store.claim_pending = claim_pending  # type: ignore[method-assign]
        release = asyncio.Event()
        held: list[int] = []

        class SlowPipeline:
            def __init__(self) -> None:
                self.store = store

            async def process(self, entry) -> None:
                held.append(len(worker._inflight))
                await release.wait()
                await store.journal_mark_processed(entry.id)

        batch, concurrency = 50, 4
        worker = Worker(SlowPipeline(), concurrency=concurrency, batch=batch)  # type: ignore[arg-type]
        bound = 2 * batch + concurrency + 1  # the queue, the tasks' entries, the one being queued
        await worker.start()
        try:
            async def stalled() -> None:
                while worker._queue.qsize() < 2 * batch or len(held) < concurrency:
                    await asyncio.sleep(0.01)

            await asyncio.wait_for(stalled(), PATIENCE_S)
            for _ in range(20):  # the claimer has had every chance to read further
                await asyncio.sleep(0)
            assert len(worker._inflight) <= bound
            assert sum(claimed) <= bound + batch  # read from disk so far: what is held and one batch
            release.set()
            await worker.drain(timeout=PATIENCE_S * 4)
        finally:
            await worker.stop()
        assert max(held) <= bound and len(held) == 5000
        assert (await store.journal_counts())["pending"] == 0
    finally:
        await store.close()


async def test_two_probes_on_one_loop_unwind_in_either_order():
    """Two apps in one process (the two-daemon tests) each time the selector."""
    loop = asyncio.get_running_loop()
    first, second = LoopBusy(tick_s=0.01), LoopBusy(tick_s=0.01)
    await first.start()
    await second.start()
    await second.stop()  # the first keeps timing
    idle = first.idle
    await asyncio.sleep(0.02)
    assert first.idle > idle
    await first.stop()
    assert "select" not in loop._selector.__dict__


def test_the_gate_logs_when_starvation_starts_and_ends_not_per_intake():
    from structlog.testing import capture_logs

    probe = Probe()
    g = gate(probe)
    with capture_logs() as logs:
        g.try_admit()
        probe.backlog, probe.busy = 5000, 1.0
        for _ in range(5):
            g.try_admit()
        probe.backlog = 0
        g.try_admit()
        g.try_admit()
    assert [e["event"] for e in logs] == ["admission.starved", "admission.recovered"]
    assert logs[0]["backlog"] == 5000 and logs[0]["loop_busy"] == 1.0


async def test_an_intake_that_goes_away_while_waiting_leaves_no_waiter_behind():
    g = gate(Probe(backlog=5000, busy=1.0), burst=1.0)
    assert g.try_admit()  # the one credit
    task = asyncio.create_task(g.admit())
    for _ in range(3):
        await asyncio.sleep(0)
    assert len(g._waiters) == 1
    task.cancel()  # the client closed the connection
    await asyncio.gather(task, return_exceptions=True)
    assert not g._waiters
    g.settled(1)  # its credit is kept for the next intake
    assert g.try_admit()


class Seconds:
    """A monotonic clock the test moves by hand (the gate's ``clock``)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def starved_gate(probe: Probe, clock: Seconds | None = None, **kw) -> AdmissionGate:
    """A gate (high water 100, busy at 0.9, low water 50, calm after 2 s) that has become starved."""
    g = gate(probe, clock=clock or Seconds(), calm_s=2.0, **kw)
    probe.backlog, probe.busy = 100, 0.9
    assert g.starved() and g.episodes == 1
    return g


def test_starvation_lasts_until_the_backlog_falls_below_half_the_high_water_mark():
    """Past capacity intake is held to the processing rate and the backlog
    hovers at the high-water mark: a backlog just under it keeps the
    pipeline starved (intake still needs a credit), only one under half of
    it ends the starvation; starting again takes the high-water mark."""
    probe = Probe()
    g = starved_gate(probe, burst=0.0)
    for backlog in (99, 75, 50):
        probe.backlog = backlog
        assert g.starved() and not g.try_admit()  # held: no credit, no free admission
    probe.backlog = 49
    assert not g.starved() and g.try_admit() and g.stats["free"] == 1
    probe.backlog = 99  # under the high-water mark: not starved again
    assert not g.starved() and g.try_admit()
    probe.backlog = 100
    assert g.starved() and g.episodes == 2


def test_an_empty_backlog_ends_starvation_at_once_however_busy_the_loop():
    probe = Probe()
    g = starved_gate(probe, low_water=0)  # even with no low-water mark to speak of
    probe.busy = 1.0
    probe.backlog = 0
    assert not g.starved() and g.try_admit()


def test_a_dip_in_the_busy_share_does_not_end_starvation_a_calm_loop_does():
    """The busy share under ``busy_at`` ends the starvation only once it has
    stayed there for ``calm_s``; a reading back above it starts the count
    again. Driven on the injected clock: nothing here waits."""
    probe, clock = Probe(), Seconds()
    g = starved_gate(probe, clock, burst=0.0, shed=True)
    probe.busy = 0.5  # the machine made the process wait for a core
    for clock.now in (0.0, 1.0, 1.99):
        assert g.starved() and not g.try_admit() and g.shed()
    probe.busy = 0.95  # busy again: the calm period starts over
    assert g.starved()
    probe.busy = 0.5
    for clock.now in (2.5, 4.49):
        assert g.starved()
    clock.now = 4.5  # two seconds on end under busy_at: time to spare
    assert not g.starved() and g.try_admit() and not g.shed()
    assert g.stats["free"] == 1 and g.stats["credited"] == 0


async def test_waiters_are_let_in_when_starvation_ends_not_when_the_backlog_dips():
    """``settled`` lets everyone waiting in when the (hysteresis) test says
    the starvation is over, not at the first backlog under the high-water mark."""
    probe = Probe()
    g = starved_gate(probe, burst=0.0)
    task = asyncio.create_task(g.admit())
    for _ in range(3):
        await asyncio.sleep(0)
    probe.backlog = 80  # under the high-water mark, above the low: still starved
    g.settled(0)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done() and len(g._waiters) == 1
    probe.backlog = 10
    g.settled(0)
    await asyncio.wait_for(task, PATIENCE_S)
    assert g.stats["waited"] == 1 and not g._waiters


def test_the_gate_logs_why_starvation_ended():
    from structlog.testing import capture_logs

    probe, clock = Probe(), Seconds()
    g = gate(probe, clock=clock, calm_s=2.0)
    with capture_logs() as logs:
        probe.backlog, probe.busy = 5000, 1.0
        g.try_admit()
        probe.busy = 0.1
        for clock.now in (0.0, 1.0, 2.0, 3.0):
            g.try_admit()
        probe.busy = 1.0
        g.try_admit()
        probe.backlog = 0
        g.try_admit()
    assert [(e["event"], e.get("why")) for e in logs] == [
        ("admission.starved", None), ("admission.recovered", "loop_calm"),
        ("admission.starved", None), ("admission.recovered", "backlog")]
    assert g.episodes == 2
