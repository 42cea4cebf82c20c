"""Crash recovery: a real `omnigate serve` is killed (SIGKILL, no cleanup) at
exact moments — right after a journal append, in the middle of a commit,
during an outbox delivery — through the test-only crash points
(gateway/crashpoints.py), then restarted on the same data. Every acknowledged
message must become exactly one timeline entry on exactly one ticket, and an
accepted reply must still go out (DESIGN.md: nothing lost, nothing twice).

Each test first proves it tested something: the process died of SIGKILL,
and work was in flight (pending journal entries, an unsettled reply) at the
kill."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from tests.clock import BUSINESS_HOURS, INSTANTS
from tests.daemon import OMNIGATE, free_port, pages, serve, stop, wait_ready  # noqa: F401 (test_webhooks_crash imports OMNIGATE here)
from tests.gateway.conftest import AUTH, TOKEN
from tests.standins.telegram_api import TelegramApiStandIn

pytestmark = pytest.mark.integration

DEADLINE_S = 120  # the whole test; a hung daemon fails it instead of hanging the suite
#: the daemons' clock: business hours (no opening-hours auto-replies in the way)
START = INSTANTS[BUSINESS_HOURS]


def start(data_dir: Path, port: int, *, crash_at: str | None = None, clock=START,
          env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, "OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_LOG_LEVEL": "warning",
         "OMNIGATE_TEST_CLOCK": clock.isoformat(), **(env or {})}
    e.pop("OMNIGATE_TEST_CRASH_AT", None)
    if crash_at:
        e["OMNIGATE_TEST_CRASH_AT"] = crash_at
    return serve(data_dir, port, e)


async def killed(proc: subprocess.Popen) -> None:
    """The daemon died of its crash point's SIGKILL (not of an error, not gracefully)."""
    while proc.poll() is None:
        await asyncio.sleep(0.02)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr.read().decode()[-2000:])


def in_db(data_dir: Path, sql: str) -> int:
    """One number from the dead daemon's database (what was in flight at the kill)."""
    conn = sqlite3.connect(data_dir / "omnigate.db")
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("crash_at", ["journal_append:300", "commit:100"])
async def test_kill_9_while_ingesting_loses_nothing_and_duplicates_nothing(tmp_path, crash_at):
    async with asyncio.timeout(DEADLINE_S):
        await _ingest_and_crash(tmp_path, crash_at)


async def _ingest_and_crash(tmp_path: Path, crash_at: str) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, port, crash_at=crash_at)
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
            await killed(proc)
            await asyncio.gather(*tasks)
        assert len(acked) >= 50, "the daemon died before it acknowledged anything worth checking"
        pending = in_db(tmp_path, "SELECT count(*) FROM journal WHERE status = 'pending'")
        assert pending > 0, "nothing was in flight at the kill: the test proved nothing"

        proc = start(tmp_path, port)
        await wait_ready(base, proc)
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(f"{base}/readyz") as r:
                    journal = (await r.json())["detail"]["store"]["journal"]
                if journal["pending"] == 0:
                    break
                await asyncio.sleep(0.1)
            assert journal["failed"] == 0
            contacts: dict[str, str] = {}
            for ext, jid in acked.items():
                async with s.get(f"{base}/api/v1/journal/{jid}", headers=AUTH) as r:
                    entry = await r.json()
                assert entry["status"] == "processed", entry
                contacts[ext] = entry["contact_id"]
            # exactly one timeline entry per acknowledged message, one ticket per contact
            for contact_id in set(contacts.values()):
                items = await pages(s, f"{base}/api/v1/contacts/{contact_id}/timeline", AUTH, 500)
                messages = [e["external_id"] for e in items if e["kind"] in ("message_in", "duplicate")]
                assert len(messages) == len(set(messages)), "a message was committed twice"
                mine = {ext for ext, c in contacts.items() if c == contact_id}
                assert mine <= set(messages)
                async with s.get(f"{base}/api/v1/contacts/{contact_id}", headers=AUTH) as r:
                    assert len((await r.json())["tickets"]) == 1, "a ticket was created twice"
    finally:
        stop(proc)


BOT_TOKEN, SECRET = "2222222:crash-bot-token", "crash-Secret_1"
UPDATE = (b'{"update_id": 7, "message": {"message_id": 7, "date": 1764554400, "text": "where is my order?",'
          b' "chat": {"id": 4242, "type": "private", "first_name": "Lin"},'
          b' "from": {"id": 4242, "is_bot": false, "first_name": "Lin"}}}')


async def test_kill_9_during_an_outbox_delivery_still_delivers_the_reply(tmp_path, aiohttp_server):
    """Killed after the channel took the reply and before its delivery was
    recorded: after the restart (once the dead holder's lease ran out) the
    reply is sent again and recorded as sent — at least once, never lost."""
    async with asyncio.timeout(DEADLINE_S):
        api = TelegramApiStandIn()
        bot = api.add_bot(BOT_TOKEN, "crash_bot")
        server = await aiohttp_server(api.app(), host="127.0.0.1")
        channel = {"OMNIGATE_TELEGRAM__API_BASE": str(server.make_url("")).rstrip("/"),
                   "OMNIGATE_TELEGRAM__BOTS__SUPPORT__TOKEN": BOT_TOKEN,
                   "OMNIGATE_TELEGRAM__BOTS__SUPPORT__SECRET_TOKEN": SECRET,
                   "OMNIGATE_TELEGRAM__BOTS__SUPPORT__MODE": "webhook"}
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start(tmp_path, port, crash_at="outbox_send", env=channel)
        try:
            await wait_ready(base, proc)
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{base}/channels/telegram/support", data=UPDATE,
                                  headers={"X-Telegram-Bot-Api-Secret-Token": SECRET,
                                           "Content-Type": "application/json"}) as r:
                    assert r.status == 200, await r.text()
                ticket_id = None
                while ticket_id is None:
                    async with s.get(f"{base}/api/v1/journal", headers=AUTH) as r:
                        items = (await r.json())["items"]
                    ticket_id = items[0].get("ticket_id") if items else None
                    await asyncio.sleep(0.05)
                async with s.post(f"{base}/api/v1/tickets/{ticket_id}/replies", json={"text": "On its way."},
                                  headers=AUTH) as r:
                    assert r.status == 202, await r.text()
                    reply_id = (await r.json())["id"]
            await killed(proc)
            assert [p["text"] for _, p in bot.sent] == ["On its way."]  # it left before the kill…
            unsettled = in_db(tmp_path, "SELECT count(*) FROM outbox WHERE topic = 'reply.send' AND status = 'sending'")
            assert unsettled == 1, "…and its delivery was not recorded: otherwise the test proved nothing"

            # the restart comes after the dead process's lease (a clock 1 h on)
            proc = start(tmp_path, port, clock=START + timedelta(hours=1), env=channel)
            await wait_ready(base, proc)
            async with aiohttp.ClientSession() as s:
                while True:
                    async with s.get(f"{base}/api/v1/tickets/{ticket_id}/timeline", headers=AUTH) as r:
                        (entry,) = [e for e in (await r.json())["items"] if e["id"] == reply_id]
                    if entry["data"]["delivery"]["status"] == "sent":
                        break
                    await asyncio.sleep(0.05)
            assert [p["text"] for _, p in bot.sent] == ["On its way.", "On its way."]
        finally:
            stop(proc)
