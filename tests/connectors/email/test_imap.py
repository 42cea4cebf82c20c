"""IMAP intake against a real dovecot: IDLE push, the polling fallback,
UID tracking across restarts and reconnects (nothing fetched twice, nothing
missed), UIDVALIDITY re-sync, after-actions checked on the server, and the
lifecycle errors the supervisor sees (auth, missing folder).

Mail is delivered with IMAP APPEND through a second client while the
connector runs, as a mail server's delivery would add it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage

import aioimaplib
import pytest
from structlog.testing import capture_logs

from gateway.supervisor import TaskState
from tests.connectors.email.conftest import MemoryContext, eventually, running
from tests.integration.dovecot import DovecotServer

pytestmark = pytest.mark.integration

STATE_KEY = "imap:support:INBOX"


def config(server: DovecotServer, **imap: object) -> dict:
    settings = {"host": server.host, "port": server.port, "ssl": False, "user": server.user,
                "password": server.password, "idle_refresh": 600, "timeout": 10, **imap}
    return {"imap": {"support": settings}}


def mail(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Customer <c@customer.example.net>"
    msg["To"] = "support@example.com"
    msg["Subject"] = f"question {n}"
    msg["Message-ID"] = f"<q{n}@customer.example.net>"
    msg.set_content(f"问题 {n}")
    return msg.as_bytes()


@asynccontextmanager
async def mail_client(server: DovecotServer) -> AsyncIterator[aioimaplib.IMAP4]:
    """A second IMAP session: what delivers mail and inspects the server."""
    client = aioimaplib.IMAP4(host=server.host, port=server.port, timeout=10)
    await client.wait_hello_from_server()
    assert (await client.login(server.user, server.password)).result == "OK"
    try:
        yield client
    finally:
        await client.logout()


async def deliver(server: DovecotServer, *numbers: int) -> None:
    async with mail_client(server) as client:
        for n in numbers:
            assert (await client.append(mail(n), mailbox="INBOX")).result == "OK"


async def flags(server: DovecotServer, folder: str) -> list[str]:
    """The flags of each message in ``folder``, in UID order."""
    async with mail_client(server) as client:
        assert (await client.select(folder)).result == "OK"
        response = await client.uid("fetch", "1:*", "(FLAGS)")
    return [m.group(1).decode() for line in response.lines[:-1] if (m := re.search(rb"FLAGS \(([^)]*)\)", bytes(line)))]


def recorded_up_to(ctx: MemoryContext, uid: int) -> Callable[[], bool]:
    """True once the last UID is stored (after the ingest and the after-action)."""
    return lambda: STATE_KEY in ctx.state and json.loads(ctx.state[STATE_KEY])["last_uid"] == uid


def keys(ctx: MemoryContext) -> list[str]:
    return [e.key for e in ctx.journal]


def task_state(ctx: MemoryContext) -> TaskState | None:
    return ctx.supervisor.states().get("email:imap:support")


def waiting(logs: list[dict], after: int = 0) -> Callable[[], bool]:
    """True once the connector waits for news (IDLE or poll) after log index ``after``."""
    return lambda: any(e["event"] == "imap_waiting" for e in logs[after:])


async def test_idle_push_ingests_each_message_once_then_flags_it_seen(dovecot: DovecotServer):
    ctx = MemoryContext(config(dovecot, after="seen"))
    with capture_logs() as logs:
        async with running(ctx):
            await eventually(waiting(logs), "the connector to idle")
            assert [e["mode"] for e in logs if e["event"] == "imap_waiting"] == ["idle"]
            await deliver(dovecot, 1, 2)
            await eventually(recorded_up_to(ctx, 2), "two messages ingested and recorded")
    assert [k.split("#")[0] for k in keys(ctx)] == ["mid:<q1@customer.example.net>", "mid:<q2@customer.example.net>"]
    assert len(ctx.calls) == 2  # fetched once each
    assert [e.account for e in ctx.journal] == ["support", "support"]
    assert ctx.journal[0].raw.replace(b"\r\n", b"\n") == mail(1).replace(b"\r\n", b"\n")
    assert [e.meta["uid"] for e in ctx.journal] == [1, 2]
    assert all("\\Seen" in f for f in await flags(dovecot, "INBOX"))


async def test_restart_neither_repeats_nor_misses(dovecot: DovecotServer):
    first = MemoryContext(config(dovecot, after="leave"))
    await deliver(dovecot, 1)
    async with running(first):
        await eventually(recorded_up_to(first, 1), "the waiting message ingested")
    await deliver(dovecot, 2)  # while the connector is down
    # a new gateway process: same store (state and journal), new connector
    second = MemoryContext(first.config, journal=first.journal, calls=first.calls, state=first.state)
    with capture_logs() as logs:
        async with running(second):
            await eventually(lambda: len(second.journal) == 2, "the message sent while down ingested")
            await eventually(waiting(logs), "the catch-up to finish")
            await deliver(dovecot, 3)
            await eventually(lambda: len(second.journal) == 3, "a new message ingested")
    assert [k.split("#")[0] for k in keys(second)] == [f"mid:<q{n}@customer.example.net>" for n in (1, 2, 3)]
    assert len(second.calls) == 3  # nothing fetched twice
    assert not any("\\Seen" in f for f in await flags(dovecot, "INBOX"))  # "leave" leaves them


async def test_reconnects_after_the_server_drops_the_connection(dovecot: DovecotServer):
    ctx = MemoryContext(config(dovecot, after="leave"))
    with capture_logs() as logs:
        async with running(ctx):
            await eventually(waiting(logs), "the connector to idle")
            mark = len(logs)
            dovecot.kick()
            await eventually(lambda: any(e["event"] == "task_retrying" for e in logs[mark:]), "a retry")
            await eventually(waiting(logs, mark), "the connector to idle again")
            await deliver(dovecot, 1)
            await eventually(lambda: len(ctx.journal) == 1, "the message ingested after reconnecting")
    assert len(ctx.calls) == 1
    retry = next(e for e in logs if e["event"] == "task_retrying")
    assert retry["task"] == "email:imap:support" and "connection lost" in retry["reason"]


async def test_uidvalidity_change_resyncs_and_the_journal_dedupes(dovecot: DovecotServer):
    ctx = MemoryContext(config(dovecot, after="leave"))
    await deliver(dovecot, 1, 2)
    async with running(ctx):
        await eventually(recorded_up_to(ctx, 2), "both messages ingested")
    real = json.loads(ctx.state[STATE_KEY])
    # as if the server had renumbered the folder since
    ctx.state[STATE_KEY] = json.dumps({"uidvalidity": real["uidvalidity"] + 1, "last_uid": 99})
    again = MemoryContext(ctx.config, journal=ctx.journal, calls=ctx.calls, state=ctx.state)
    async with running(again):
        await eventually(lambda: len(again.calls) == 4, "the folder fetched again")
    assert len(again.journal) == 2  # the redeliveries answered as such
    assert json.loads(again.state[STATE_KEY]) == real


async def test_move_after_action(dovecot: DovecotServer):
    ctx = MemoryContext(config(dovecot, after="move:Processed"))
    await deliver(dovecot, 1)
    async with running(ctx):
        await eventually(recorded_up_to(ctx, 1), "the message ingested and moved")
    assert await flags(dovecot, "INBOX") == []
    assert len(await flags(dovecot, "Processed")) == 1


async def test_polls_when_the_server_has_no_idle(dovecot_without_idle: DovecotServer):
    ctx = MemoryContext(config(dovecot_without_idle, poll_interval=0.1))
    with capture_logs() as logs:
        async with running(ctx):
            await eventually(waiting(logs), "the first poll wait")
            await deliver(dovecot_without_idle, 1)
            await eventually(lambda: len(ctx.journal) == 1, "the message ingested by polling")
    assert {e["mode"] for e in logs if e["event"] == "imap_waiting"} == {"poll"}


async def test_refused_login_waits_for_new_credentials(dovecot: DovecotServer):
    ctx = MemoryContext(config(dovecot, password="wrong"))
    async with running(ctx):
        await eventually(lambda: (s := task_state(ctx)) is not None and s.status == "failed", "the auth failure")
    reason = task_state(ctx).reason or ""
    assert reason.startswith(f"AuthFailed: imap support: login refused for '{dovecot.user}'")
    assert "wrong" not in reason
    assert ctx.calls == []


async def test_missing_folder_is_fatal(dovecot: DovecotServer):
    ctx = MemoryContext(config(dovecot, folder="Nope"))
    async with running(ctx):
        await eventually(lambda: (s := task_state(ctx)) is not None and s.status == "failed", "the failure")
    reason = task_state(ctx).reason or ""
    assert reason.startswith("Fatal: imap support: cannot select folder 'Nope'")
