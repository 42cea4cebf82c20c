"""A watched Asterisk Master.csv appended while the daemon is dead: kill -9 a
real `omnigate serve` while it tails the file (from outside, and at exact
crash points: rows journaled but the tail offset not stored; inside a
pipeline commit), append more rows (and half a row), restart it, and check
that every complete row became exactly one call (nothing lost, nothing twice)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import aiohttp
import pytest

from tests.gateway.conftest import AUTH, TOKEN
from tests.daemon import free_port, pages, serve, stop, wait_ready

pytestmark = pytest.mark.integration

CALLERS = 7


def row(n: int) -> str:
    return (f'"","1380013800{n % CALLERS}","4008001234","from-trunk","","SIP/trunk-{n:05d}","","Dial","",'
            f'"2026-11-30 10:00:00","","2026-11-30 10:00:20",20,0,"NO ANSWER","DOCUMENTATION","1700000000.{n}",""\n')


def start(data_dir, port: int, cdr_path, crash_at: str | None = None) -> subprocess.Popen:
    """``crash_at``: a crash point (gateway/crashpoints.py) where the daemon kills itself."""
    env = {**{k: v for k, v in os.environ.items() if k != "OMNIGATE_TEST_CRASH_AT"},
           **({"OMNIGATE_TEST_CRASH_AT": crash_at} if crash_at else {}),
           "OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_LOG_LEVEL": "warning",
           "OMNIGATE_PHONE__ACCOUNTS__PBX1__SOURCE": "asterisk",
           "OMNIGATE_PHONE__ACCOUNTS__PBX1__CDR_PATH": str(cdr_path),
           "OMNIGATE_PHONE__POLL_INTERVAL": "0.05"}
    return serve(data_dir, port, env)


async def journal(s: aiohttp.ClientSession, base: str) -> list[dict]:
    return await pages(s, f"{base}/api/v1/journal", AUTH, 1000)


@pytest.mark.parametrize("crash_at", [
    None,  # kill -9 from outside once tailing is under way
    "journal_append:300",  # rows durable in the journal, the tail offset not yet stored
    "commit:200",  # inside a pipeline commit
])
async def test_kill_9_while_tailing_then_append_loses_and_duplicates_no_call(tmp_path, crash_at):
    cdr = tmp_path / "Master.csv"
    rows = [row(n) for n in range(1200)]
    with open(cdr, "w") as fh:
        fh.writelines(rows[:800])
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(tmp_path / "data", port, cdr, crash_at)
    try:
        if crash_at is None:
            await wait_ready(base, proc)
            async with aiohttp.ClientSession() as s:
                while len(await journal(s, base)) < 50:  # tailing is under way
                    await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        with open(cdr, "a") as fh:  # the PBX goes on writing while the gateway is dead
            fh.writelines(rows[800:1100])
            fh.write(rows[1100][:30])  # and is in the middle of a row
        proc = start(tmp_path / "data", port, cdr)
        await wait_ready(base, proc)
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + 120
            while True:
                entries = await journal(s, base)
                if (len(entries) >= 1100 and all(e["status"] != "pending" for e in entries)) \
                        or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert len(entries) == 1100  # the partial row is not taken
            assert {e["status"] for e in entries} == {"processed"}
            calls: list[str] = []
            for contact_id in {e["contact_id"] for e in entries}:
                timeline = await pages(s, f"{base}/api/v1/contacts/{contact_id}/timeline", AUTH, 500)
                calls += [e["external_id"] for e in timeline if e["kind"] == "call"]
            assert sorted(calls) == sorted(f"1700000000.{n}" for n in range(1100))
    finally:
        stop(proc)
