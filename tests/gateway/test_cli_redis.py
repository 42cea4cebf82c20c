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


def test_tokens_live_in_redis_and_a_revocation_reaches_a_running_instance(tmp_path, redis_server):
    """``omnigate tokens`` with redis_url mints, lists and revokes in Redis (no
    local file), and an instance that cached the token refuses it at once."""
    from gateway.auth import Auth
    from gateway.config import RestConfig

    r = cli(tmp_path, redis_server.url, "tokens", "create", "--agent", "ops", "--role", "admin", "--note", "ci")
    assert r.returncode == 0, r.stderr[-2000:]
    token = r.stdout.strip()
    assert token.startswith("og_") and not (tmp_path / "data" / "omnigate.db").exists()
    r = cli(tmp_path, redis_server.url, "tokens", "list", "--json")
    (listed,) = json.loads(r.stdout)
    assert listed["agent_id"] == "ops" and listed["note"] == "ci" and "token" not in listed

    class Req:
        headers = {"Authorization": f"Bearer {token}"}

    async def ask(auth) -> int:
        try:
            await auth.authenticate(Req())
            return 200
        except Exception as exc:  # the Problem raised
            return getattr(exc, "status", 500)

    async def scenario():
        s = RedisStore(redis_server.url, prefix="cli:")
        auth = Auth(s, RestConfig(token_cache_s=3600), None)
        try:
            assert await ask(auth) == 200  # cached for an hour from here
            r = await asyncio.to_thread(cli, tmp_path, redis_server.url, "tokens", "revoke", listed["prefix"])
            assert r.returncode == 0 and f"revoked {listed['id']}" in r.stdout, r.stderr[-2000:]
            assert await ask(auth) == 401  # the cache was dropped: the epoch moved
        finally:
            await s.close()

    asyncio.run(scenario())
