"""Sentinel: ``redis_url: redis+sentinel://host:port,…/service`` finds the
primary through the Sentinels; a fail-over (real redis-server primary and
replica, a real Sentinel: ``redis-server --sentinel``) keeps every append
acknowledged with ``WAIT`` for the replica, and the store follows the new
primary by itself."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from gateway.config import ConfigError, load
from gateway.store.base import StoreError
from gateway.store.redis_conn import SentinelURL, parse_sentinel_url
from gateway.store.redis_store import RedisStore
from tests.conftest import need
from tests.integration.redis import RedisServer, _real_clock_env, free_port, redis_binary

SERVICE = "omni"


def test_sentinel_urls_parse_and_bad_ones_are_refused_by_name():
    assert parse_sentinel_url("redis+sentinel://:s3cret@10.0.0.1:26379,[::1]:26380/omni/2?sentinel_password=x") == \
        SentinelURL([("10.0.0.1", 26379), ("::1", 26380)], "omni", 2, None, "s3cret", "x")
    assert parse_sentinel_url("redis+sentinel://h:1/m").hosts == [("h", 1)]
    for bad, why in (("redis+sentinel://h:1", "names no service"), ("redis+sentinel://h/m", "not host:port"),
                     ("redis+sentinel://h:1/m/x", "database number"), ("redis+sentinel://h:1/m?tls=1", "unknown option")):
        with pytest.raises(ValueError, match=why):
            parse_sentinel_url(bad)
    with pytest.raises(ConfigError, match="names no service"):
        load(None, environ={"OMNIGATE_REDIS_URL": "redis+sentinel://127.0.0.1:26379"})


class Sentinel:
    def __init__(self, root: Path, primary: RedisServer):
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        conf = root / "sentinel.conf"
        conf.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {root}\nlogfile {root / 'sentinel.log'}\n"
                        f"sentinel monitor {SERVICE} 127.0.0.1 {primary.port} 1\n"
                        f"sentinel down-after-milliseconds {SERVICE} 500\n"
                        f"sentinel failover-timeout {SERVICE} 5000\n")
        self.proc = subprocess.Popen([redis_binary(), str(conf), "--sentinel"], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_real_clock_env())

    def ask(self, *cmd: str) -> str:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(("*%d\r\n" % len(cmd) + "".join(f"${len(c)}\r\n{c}\r\n" for c in cmd)).encode())
            time.sleep(0.05)
            return s.recv(65536).decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)


def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.integration
async def test_a_failover_keeps_every_append_acknowledged_with_wait(tmp_path):
    need("redis-server", redis_binary() is not None, "it is not installed (apt-get install redis-server)")
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    primary = RedisServer(tmp_path / "p").start()
    replica = RedisServer(tmp_path / "r", replica_of=primary).start()
    sentinel = Sentinel(tmp_path / "s", primary)
    store = None
    try:
        _until(lambda: "127.0.0.1" in sentinel.ask("SENTINEL", "REPLICAS", SERVICE), 20, "the sentinel to see the replica")
        store = RedisStore(f"redis+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}", prefix="fo:", wait_replicas=1,
                           wait_timeout_ms=3000)
        acked = [(await store.journal_append("api", "api", f"m{i}", f"body {i}".encode())).journal_id
                 for i in range(50)]
        primary.kill()  # SIGKILL: no goodbye; the Sentinel promotes the replica
        store.wait_replicas = 0  # no replica is left to WAIT for until the old primary comes back
        deadline = time.monotonic() + 30
        after = None
        while after is None:
            try:
                after = await store.journal_append("api", "api", "after-failover", b"still here")
            except StoreError:  # 503 while no primary answers: the platform retries
                assert time.monotonic() < deadline, "no new primary within 30 s"
                await asyncio.sleep(0.2)
        assert f"{replica.port}" in sentinel.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        for jid in acked:  # every acknowledged append is on the new primary
            e = await store.journal_get(jid, with_raw=True)
            assert e is not None and e.raw.startswith(b"body ")
        assert (await store.journal_get(after.journal_id)) is not None
        assert (await store.journal_counts())["pending"] == 51
    finally:
        if store is not None:
            await store.close()
        sentinel.stop()
        replica.stop()
        primary.stop()
