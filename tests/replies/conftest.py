"""The replies tests run against the same real app as tests/gateway."""

from tests.gateway.conftest import gw  # noqa: F401 - the fixture, shared
