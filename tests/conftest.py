"""Shared fixtures. Two tiers of tests (ARCHITECTURE.md):

- pure tests: no outside resource (parsers, routing stages, rules);
- integration tests (marker ``integration``): a real SQLite store on disk, a
  real Redis, a real dovecot, aiosmtpd and Chromium, started by fixtures on
  loopback ports. Under ``CI=true`` they must run: a missing server fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.clock import ticking_from  # noqa: E402
from tests.clock import INSTANTS  # noqa: E402
from tests.corpus import IN_CI, require_corpus  # noqa: E402

# fixtures that start real servers on loopback ports (dovecot, redis-server…)
pytest_plugins = ["tests.integration.dovecot", "tests.integration.redis"]


def pytest_configure(config):
    config.addinivalue_line("markers", "clock(*names): run the gateway_clock tests only at these INSTANTS (tests/clock.py)")


def pytest_generate_tests(metafunc):
    """A test that uses ``gateway_clock`` runs once per instant of
    ``tests/clock.py`` (business hours, an evening, a public holiday), or at
    those its ``clock`` marker names."""
    if "gateway_instant" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("clock")
        names = list(marker.args) if marker else list(INSTANTS)
        metafunc.parametrize("gateway_instant", [INSTANTS[n] for n in names], ids=names, scope="function")


@pytest.fixture
def gateway_clock(gateway_instant):
    """The gateway's clock: it starts at the test's instant and ticks with the
    monotonic clock (delays and back-off still elapse; the date and hour do not
    depend on when the suite runs)."""
    return ticking_from(gateway_instant)


@pytest.fixture
def cn_holidays_until_2026(monkeypatch):
    """The Chinese holiday data ends with 2026, whatever ``chinesecalendar``
    version is installed: tests of "a year the data does not cover" test that
    behaviour, not the package's current horizon (2027 stays uncovered when
    the package publishes it)."""
    import routing.calendar

    monkeypatch.setattr(routing.calendar, "CN_LAST_YEAR", 2026)
    return 2026


@pytest.fixture
def corpus_row(request):
    """Use with ``@pytest.mark.parametrize("corpus_row", params(CH), indirect=True)``."""
    row = request.param
    if row is None:
        require_corpus()
    return row


def need(what: str, available: bool, why: str) -> None:
    """Skip (or fail under CI) when an outside server cannot be had."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI but {why}")
    pytest.skip(f"{what}: {why}")
