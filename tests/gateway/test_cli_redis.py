"""The offline commands with ``redis_url`` work on the deployment's Redis,
never on a stale SQLite file in the local data folder."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from gateway.store.redis_store import RedisStore

pytestmark = pytest.mark.integration


def cli(tmp_path, redis_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMNIGATE_REDIS_URL": redis_url, "OMNIGATE_STORE__REDIS_PREFIX": "cli:"}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, timeout=120, env=env)


def test_replay_reads_and_writes_redis(tmp_path, redis_server):
    async def seed():
        s = RedisStore(redis_server.url, prefix="cli:")
        for i in range(3):
            body = json.dumps({"external_id": f"r{i}", "sender": {"kind": "email", "value": f"u{i}@x.cn"},
                               "text": f"text {i}"}).encode()
            await s.journal_append("api", "api", f"r{i}", body)
        await s.journal_append("api", "api", "broken", b"{")
        await s.close()

    async def counts():
        s = RedisStore(redis_server.url, prefix="cli:")
        try:
            return await s.counts(), await s.journal_counts()
        finally:
            await s.close()

    asyncio.run(seed())
    r = cli(tmp_path, redis_server.url, "replay")
    assert r.returncode == 1 and "3 processed" in r.stdout and "1 failed" in r.stdout, r.stderr[-2000:]
    rows, journal = asyncio.run(counts())
    assert rows["tickets"] == 3 and journal["failed"] == 1 and journal["pending"] == 0
    assert not (tmp_path / "data" / "omnigate.db").exists()  # nothing went to a local SQLite file
    r = cli(tmp_path, redis_server.url, "replay")
    assert "3 processed" in r.stdout and asyncio.run(counts())[0] == rows  # twice changes nothing


def test_tokens_are_refused_on_redis_until_they_live_there(tmp_path, redis_server):
    r = cli(tmp_path, redis_server.url, "tokens", "create", "--agent", "ops", "--role", "admin")
    assert r.returncode == 2 and "tokens are not kept on the Redis backend yet" in r.stderr
    assert not (tmp_path / "data" / "omnigate.db").exists()
