"""The store contract runs against every backend: SQLite, and Redis (a real
``redis-server`` started by ``tests/integration/redis.py``; marker
``integration``). Each Redis test gets a key prefix of its own."""

from __future__ import annotations

import pytest

from gateway.store.sqlite import SQLiteStore



@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
async def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteStore.in_dir(tmp_path)
    else:
        from gateway.store.redis_store import RedisStore

        server = request.getfixturevalue("redis_server")
        s = RedisStore(server.url, prefix=request.getfixturevalue("redis_prefix"))
    yield s
    await s.close()
