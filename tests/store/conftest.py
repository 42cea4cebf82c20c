"""The store contract runs against every backend: add a backend by adding a
parameter to the ``store`` fixture (the Redis backend comes with its issue)."""

from __future__ import annotations

import pytest

from gateway.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        s = SQLiteStore.in_dir(tmp_path)
    yield s
    await s.close()
