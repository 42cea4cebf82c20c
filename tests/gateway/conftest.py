"""A real gateway app on a real SQLite store in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import keys
from gateway.app import create_app
from gateway.clock import ticking_from
from gateway.config import load
from tests.clock import BUSINESS_HOURS, INSTANTS

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


RULES = str(Path(__file__).resolve().parents[2] / "rules")


def make_config(tmp_path, **flags):
    """A gateway configuration in ``tmp_path``; no routing rules unless
    ``rules_dir`` is given (e.g. ``RULES``, the shipped defaults)."""
    env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data"),
           "OMNIGATE_RULES_DIR": str(tmp_path / "no-rules")}
    return load(None, environ=env, flags=flags)


@pytest.fixture
async def gw(aiohttp_client, tmp_path):
    """(client, app) of a running gateway; ``await drain(app)`` waits for the pipeline."""
    app = create_app(make_config(tmp_path, max_body_bytes=64 * 1024), clock=business_hours())
    client = await aiohttp_client(app)
    return client, app


def business_hours():
    """A gateway clock pinned to Shanghai business hours (tests/clock.py) that
    ticks on: for tests whose subject is not the time of day."""
    return ticking_from(INSTANTS[BUSINESS_HOURS])


async def drain(app) -> None:
    await app[keys.WORKER].drain()
