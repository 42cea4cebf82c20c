"""Contract tests (CONTRACTS.md held against the gateway from outside): the
gateway fixture of tests/gateway."""

from tests.gateway.conftest import gw  # noqa: F401 - the fixture, re-exported
