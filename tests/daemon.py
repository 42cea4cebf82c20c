"""A real ``omnigate serve`` in a subprocess, for the tests that need one
(crash recovery, the data-folder lock, ``tokens``/``replay`` through the
daemon, the browser tests): a free loopback port, the process started on it,
waiting until it answers ``/healthz`` (async and blocking forms), stopping it,
and reading a paginated API listing whole."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

OMNIGATE = str(Path(sys.executable).with_name("omnigate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(data_dir: Path | str, port: int, env: dict[str, str], cwd: Path | str | None = None) -> subprocess.Popen:
    """``omnigate serve`` on 127.0.0.1:``port`` over ``data_dir`` with exactly
    ``env``; stdout dropped, stderr kept (what it says when it dies)."""
    return subprocess.Popen([OMNIGATE, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
                            env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    """Until ``{base}/healthz`` answers 200 (without blocking the event loop);
    a daemon that exits first fails the test with its stderr."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                async with s.get(f"{base}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError("omnigate serve did not come up")


def wait_up(base: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """:func:`wait_ready` for tests without an event loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=10) as r:
                if r.status == 200:
                    return
        except OSError:  # not listening yet (HTTPError included)
            pass
        time.sleep(0.05)
    raise TimeoutError("omnigate serve did not come up")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 15 s; nothing when it has exited already."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def pages(s: aiohttp.ClientSession, url: str, headers: dict[str, str], limit: int) -> list[dict[str, Any]]:
    """Every item of a cursor-paginated API listing (``items``, ``next_cursor``)."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = f"?limit={limit}&cursor={cursor}" if cursor else f"?limit={limit}"
        async with s.get(f"{url}{q}", headers=headers) as r:
            page = await r.json()
        items += page["items"]
        if not page["next_cursor"]:
            return items
        cursor = page["next_cursor"]
