"""A throw-away ``redis-server`` (Debian's package) for the integration tests.

Each server runs from a temporary directory of its own (its ``dir``, the AOF
files, the log), on a free loopback port, with no configuration file of the
system's: ``appendonly yes`` and ``appendfsync always``, so an acknowledged
write survives the server being killed (the durability tests restart it on
the same directory). It is a child process, stopped by its pid.

Fixtures (import the module into a conftest or test module):

- ``redis_server``: one server per test module (starting one costs tens of
  milliseconds, but per module keeps the suite lean); each test gets a
  fresh key prefix from ``redis_prefix`` so tests never see each other's
  state;
- ``redis_prefix``: ``og<n>:``, unique per test;
- :class:`RedisServer` itself, for tests that stop and restart it.

Both skip when redis-server is not installed, and fail under ``CI=true``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import need

_START_DEADLINE_S = 15.0


def redis_binary() -> str | None:
    return shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_clock_env() -> dict[str, str]:
    """The environment without libfaketime: the suite's faked-clock re-run
    (scripts/test) fakes the gateway's clock, not the server's (redis-server
    under libfaketime stops answering)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKETIME")}
    preload = [p for p in env.pop("LD_PRELOAD", "").split() if "faketime" not in p]
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    return env


class RedisServer:
    """One redis-server child: ``start()``, ``kill()`` (SIGKILL: no goodbye,
    no final fsync), ``stop()`` (SIGTERM, waited), ``start()`` again on the same
    directory and port (the AOF is replayed)."""

    def __init__(self, root: Path, port: int | None = None, *, fsync: str = "always",
                 replica_of: "RedisServer | None" = None):
        self.root = Path(root)
        self.port = port or free_port()
        self.fsync = fsync
        self.replica_of = replica_of
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        binary = redis_binary()
        assert binary, "redis-server is not installed"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root),
                "--appendonly", "yes", "--appendfsync", self.fsync, "--save", "",
                "--daemonize", "no", "--logfile", str(self.root / "redis.log"), "--protected-mode", "yes",
                "--repl-diskless-sync-delay", "0"]  # a replica's first sync at once (tests)
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=_real_clock_env())
        deadline = time.monotonic() + _START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.root / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {log}")
            if self._ping():
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("redis-server did not answer PING in time")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    need("redis-server", redis_binary() is not None, "it is not installed (apt-get install redis-server)")
    root = Path(tempfile.mkdtemp(prefix="omnigate-redis-"))
    server = RedisServer(root)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


_prefixes = itertools.count()


@pytest.fixture
def redis_prefix() -> str:
    return f"og{os.getpid()}x{next(_prefixes)}:"
