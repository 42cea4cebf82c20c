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

from tests.corpus import IN_CI, require_corpus  # noqa: E402

# fixtures that start real servers on loopback ports (dovecot, …)
pytest_plugins = ["tests.integration.dovecot"]


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
