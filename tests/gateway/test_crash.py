"""Crash recovery: kill -9 a real `omnigate serve` while it ingests, restart
it, and check that every acknowledged message became exactly one timeline
entry on exactly one ticket (DESIGN.md: nothing lost, nothing twice)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.gateway.conftest import AUTH, TOKEN

pytestmark = pytest.mark.integration

OMNIGATE = str(Path(sys.executable).with_name("omnigate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_LOG_LEVEL": "warning"}
    return subprocess.Popen([OMNIGATE, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 20) -> None:
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


async def test_kill_9_while_ingesting_loses_nothing_and_duplicates_nothing(tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, port)
    acked: dict[str, str] = {}  # external_id → journal_id
    try:
        await wait_ready(base, proc)

        async def sender(session: aiohttp.ClientSession, worker: int) -> None:
            for n in range(10_000):
                ext = f"w{worker}-{n}"
                body = {"external_id": ext, "sender": {"kind": "email", "value": f"c{worker}-{n % 7}@crash.test"},
                        "text": f"message {ext} about order {n}"}
                try:
                    async with session.post(f"{base}/channels/api/messages", json=body, headers=AUTH) as r:
                        if r.status == 202:
                            acked[ext] = (await r.json())["journal_id"]
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    return  # the server died: stop, unacknowledged messages may be lost

        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(sender(session, w)) for w in range(8)]
            while len(acked) < 400:
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            await asyncio.gather(*tasks)
        assert len(acked) >= 400

        proc = start(tmp_path, port)
        await wait_ready(base, proc)
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 60
            while True:
                async with s.get(f"{base}/readyz") as r:
                    journal = (await r.json())["detail"]["store"]["journal"]
                if journal["pending"] == 0 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert journal["pending"] == 0 and journal["failed"] == 0
            contacts: dict[str, str] = {}
            for ext, jid in acked.items():
                async with s.get(f"{base}/api/v1/journal/{jid}", headers=AUTH) as r:
                    entry = await r.json()
                assert entry["status"] == "processed", entry
                contacts[ext] = entry["contact_id"]
            # exactly one timeline entry per acknowledged message, one ticket per contact
            for contact_id in set(contacts.values()):
                items, cursor = [], None
                while True:
                    q = f"?limit=500&cursor={cursor}" if cursor else "?limit=500"
                    async with s.get(f"{base}/api/v1/contacts/{contact_id}/timeline{q}", headers=AUTH) as r:
                        page = await r.json()
                    items += page["items"]
                    if not page["next_cursor"]:
                        break
                    cursor = page["next_cursor"]
                messages = [e["external_id"] for e in items if e["kind"] in ("message_in", "duplicate")]
                assert len(messages) == len(set(messages)), "a message was committed twice"
                mine = {ext for ext, c in contacts.items() if c == contact_id}
                assert mine <= set(messages)
                async with s.get(f"{base}/api/v1/contacts/{contact_id}", headers=AUTH) as r:
                    assert len((await r.json())["tickets"]) == 1, "a ticket was created twice"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
