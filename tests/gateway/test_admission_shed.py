"""Shedding (``pipeline.admission_shed``, gateway/admission.py): while the
pipeline is starved, an intake on a path whose sender retries for long is
refused when it would have to wait for a credit — decided on an injected
backlog and loop-busy share, never on timing."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission import AdmissionGate
from tests.gateway.test_admission import PATIENCE_S, Probe


def gate(probe: Probe, **kw) -> AdmissionGate:
    kw = {"ratio": 2.0, "high_water": 100, "busy_at": 0.9, "max_delay_s": PATIENCE_S, "burst": 3.0,
          "shed": True, **kw}
    return AdmissionGate(backlog=lambda: probe.backlog, busy=lambda: probe.busy, **kw)


def test_nothing_is_shed_unless_the_pipeline_is_starved():
    probe = Probe()
    g = gate(probe, burst=0.0)
    for backlog, busy in [(0, 0.0), (10_000, 0.0), (10_000, 0.89), (99, 1.0)]:
        probe.backlog, probe.busy = backlog, busy
        assert not any(g.shed() for _ in range(50))
    assert g.shed_count == 0


def test_starved_intake_is_shed_only_when_it_would_wait_and_takes_no_credit():
    g = gate(Probe(backlog=5000, busy=1.0))
    assert not g.shed() and g.credits == 3.0  # a credit is free: not shed, and asking took nothing
    assert [g.try_admit() for _ in range(4)] == [True, True, True, False]  # the burst, then none
    assert g.shed() and g.shed() and g.shed_count == 2
    g.settled(1)  # ratio 2: two more intakes per settled entry
    assert not g.shed()
    assert g.stats == {"free": 0, "credited": 3, "waited": 0, "timed_out": 0}


async def test_a_credit_others_wait_for_is_not_a_free_one():
    """Credits go to waiting intakes first (a WeChat callback delayed, not
    refused): while one waits, a sheddable intake is shed."""
    probe = Probe(backlog=5000, busy=1.0)
    g = gate(probe, burst=1.0)
    assert g.try_admit()  # the one credit
    waiting = asyncio.create_task(g.admit())
    for _ in range(3):
        await asyncio.sleep(0)
    assert g._waiters and g.shed()
    g.settled(1)  # two credits: one to the waiter, one kept (the burst is one)
    await asyncio.wait_for(waiting, PATIENCE_S)
    assert not g.shed()


@pytest.mark.parametrize("kw", [{"shed": False}, {"ratio": 0.0}])
def test_shedding_off_or_no_gate_never_sheds(kw):
    g = gate(Probe(backlog=10**6, busy=1.0), burst=0.0, **kw)
    assert not any(g.shed() for _ in range(100)) and g.shed_count == 0


def test_shedding_is_on_by_default_and_configurable(tmp_path):
    from gateway.config import PipelineConfig, load

    assert PipelineConfig().admission_shed is True
    config = load(None, environ={"OMNIGATE_DATA_DIR": str(tmp_path), "OMNIGATE_PIPELINE__ADMISSION_SHED": "false"})
    assert config.pipeline.admission_shed is False


def test_sheddable_intake_is_held_to_the_shed_ratio_while_others_get_the_ratio():
    """``shed_ratio`` 1 against ``ratio`` 2: once intake of any kind reaches
    one per settled entry, the API channel and SMTP are refused, while a
    channel that may not refuse is still admitted on the second credit."""
    g = gate(Probe(backlog=5000, busy=1.0), burst=2.0, shed_ratio=1.0)
    assert not g.shed() and g.try_admit() and not g.shed() and g.try_admit()  # the burst: two intakes
    assert g.shed()  # both accounts spent
    g.settled(1)  # two credits, one shedding credit
    assert not g.shed() and g.try_admit()  # a sheddable intake takes its turn
    assert g.shed()  # one intake per settled entry reached: refused …
    assert g.try_admit()  # … where a WeChat callback still gets the second credit
    assert g.stats["credited"] == 4 and g.shed_count == 2


def test_intake_that_may_not_refuse_spends_the_shedding_account_too():
    """WeChat callbacks admitted (or waiting) while starved count against
    ``shed_ratio``: the API channel does not add its own share on top."""
    g = gate(Probe(backlog=5000, busy=1.0), burst=4.0, shed_ratio=1.0)
    for _ in range(4):
        g.try_admit()  # four webhook intakes spend the burst of both accounts
    g.settled(2)  # four credits (the burst), two shedding credits
    g.try_admit(), g.try_admit()  # two more webhook intakes
    assert g.credits == 2.0 and g.shed()


def test_the_shedding_account_recovers_within_a_burst():
    """However long a flood of intakes that may not refuse lasted, the
    account is at most one burst below zero: the API channel is admitted
    again after that many settled entries."""
    g = gate(Probe(backlog=5000, busy=1.0), burst=3.0, shed_ratio=1.0)
    for _ in range(1000):
        g.try_admit()
    g.settled(3)
    assert g.shed()
    g.settled(1)
    assert not g.shed()


def test_shed_ratio_defaults_to_one_and_is_validated(tmp_path):
    from gateway.config import ConfigError, PipelineConfig, load

    assert PipelineConfig().admission_shed_ratio == 1.0
    config = load(None, environ={"OMNIGATE_DATA_DIR": str(tmp_path),
                                 "OMNIGATE_PIPELINE__ADMISSION_SHED_RATIO": "1.5"})
    assert config.pipeline.admission_shed_ratio == 1.5
    with pytest.raises(ConfigError, match="admission_shed_ratio"):
        PipelineConfig(admission_shed_ratio=0)


# ---------------------------------------------------------------- the decision made binding (reserve)


def test_reserve_decides_nothing_unless_starved_and_shedding():
    probe = Probe(backlog=0, busy=1.0)
    g = gate(probe)
    assert g.reserve() is None and g.credits == 3.0 and g.shed_credits == 3.0 and g.reserved == 0
    probe.backlog = 5000
    assert gate(probe, shed=False).reserve() is None


def test_a_reservation_takes_the_credit_the_append_would_have_taken():
    """Not refused as parsed means admitted: the credit is taken then, so a
    request that passed cannot be refused later for want of it, and the
    append (``reserved=True``) does not take a second one."""
    g = gate(Probe(backlog=5000, busy=1.0), burst=2.0, shed_ratio=1.0)
    assert g.reserve() is False and g.reserve() is False  # the burst: two credits, taken
    assert g.credits == 0.0 and g.shed_credits == 0.0 and g.reserved == 2
    assert g.reserve() is True and g.shed()  # none left: refused, counted as any shed intake
    assert g.shed_count == 2
    assert g.stats == {"free": 0, "credited": 2, "waited": 0, "timed_out": 0}


def test_a_released_reservation_gives_both_credits_back():
    g = gate(Probe(backlog=5000, busy=1.0), burst=1.0, shed_ratio=1.0)
    assert g.reserve() is False and g.reserve() is True
    g.release()  # its request was refused by the handler, or went away
    assert g.credits == 1.0 and g.shed_credits == 1.0 and g.released == 1
    assert g.stats["credited"] == 0
    assert g.reserve() is False  # the next one gets it


async def test_a_released_reservation_goes_to_an_intake_waiting_for_a_credit():
    """Credits go to waiting intakes first (a WeChat callback delayed, not
    refused), a given-back one too."""
    g = gate(Probe(backlog=5000, busy=1.0), burst=1.0)
    assert g.reserve() is False
    waiting = asyncio.create_task(g.admit())
    for _ in range(3):
        await asyncio.sleep(0)
    assert g._waiters
    g.release()
    await asyncio.wait_for(waiting, PATIENCE_S)
    assert g.credits == 0.0 and g.stats["waited"] == 1 and not g._waiters
