"""A real gateway app on a real SQLite store in a temporary directory."""

from __future__ import annotations

import pytest

from gateway import keys
from gateway.app import create_app
from gateway.config import load

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_config(tmp_path, **flags):
    env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data")}
    return load(None, environ=env, flags=flags)


@pytest.fixture
async def gw(aiohttp_client, tmp_path):
    """(client, app) of a running gateway; ``await drain(app)`` waits for the pipeline."""
    app = create_app(make_config(tmp_path, max_body_bytes=64 * 1024))
    client = await aiohttp_client(app)
    return client, app


async def drain(app) -> None:
    await app[keys.WORKER].drain()
