"""The outbox dispatcher on a real SQLite store and the real Telegram
connector against its Bot API stand-in: leases (no double send), restarts,
other topics left alone, back-off, giving up."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime

import pytest

from connectors.telegram.client import TelegramConnector
from gateway.attachments import AttachmentStore
from gateway.outbox import Dispatcher, backoff_s
from gateway.store.base import REPLY_TOPIC, Delivery, ReplyDraft
from gateway.store.sqlite import SQLiteStore
from routing.model import Identity, ReplyTarget, utcnow
from routing.state import Commit, NewContact, NewTicket, OutboxEvent
from tests.clock import BUSINESS_HOURS, INSTANTS, FakeClock
from tests.connectors.telegram.conftest import MemoryContext
from tests.standins.telegram_api import ApiError, TelegramApiStandIn

BOT_TOKEN = "1111111:webhook-bot-token"
CHAT = "111111"


@pytest.fixture
async def bot_api(aiohttp_server):
    standin = TelegramApiStandIn()
    bot = standin.add_bot(BOT_TOKEN, "support_bot")
    server = await aiohttp_server(standin.app(), host="127.0.0.1")
    connector = TelegramConnector(MemoryContext({
        "api_base": str(server.make_url("")).rstrip("/"),
        "bots": {"support": {"token": BOT_TOKEN, "secret_token": "s3cret", "mode": "webhook"}},
    }))
    yield bot, {"telegram": connector}
    await connector.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def backend(request):
    """Which store the test runs on: a maker ``(tmp_path, clock=None) -> store`` (on Redis, every store
    made is another instance on the same Redis and key prefix)."""
    if request.param == "sqlite":
        return lambda tmp_path, **kw: SQLiteStore.in_dir(tmp_path / "data", **kw)
    from gateway.store.redis_store import RedisStore

    url, prefix = request.getfixturevalue("redis_server").url, request.getfixturevalue("redis_prefix")
    return lambda tmp_path, **kw: RedisStore(url, prefix=prefix, **kw)


def open_store(tmp_path, backend=None):
    return backend(tmp_path) if backend else SQLiteStore.in_dir(tmp_path / "data")


def dispatcher(store: SQLiteStore, connectors: dict, tmp_path, **kw) -> Dispatcher:
    return Dispatcher(store, connectors, AttachmentStore(tmp_path / "data" / "attachments"), **kw)


async def telegram_ticket(store: SQLiteStore) -> str:
    """A ticket opened by a Telegram message, with a webhook event beside it in the outbox."""
    now = utcnow()
    target = ReplyTarget(channel="telegram", account="1111111", to=Identity("telegram", CHAT))
    j = (await store.journal_append("telegram", "1111111", "u5", b"{}")).journal_id
    await store.commit(Commit(
        journal_id=j, outcome="processed", message_key=("telegram", "1111111", f"{CHAT}:5"), contact_id="C1",
        new_contact=NewContact("C1", "Test", now), ticket_id="T1",
        new_ticket=NewTicket(id="T1", subject="Hello", channel="telegram", created_at=now, reply_to=target),
        outbox=[OutboxEvent("ticket.created", {"ticket_id": "T1"}, "T1")]))
    return "T1"


async def outbox(store) -> dict[str, tuple]:
    """topic → (status, attempts, lease) of the outbox rows, read from either backend."""
    if store.backend == "sqlite":
        with sqlite3.connect(store.path) as conn:
            return {r[0]: r[1:] for r in conn.execute("SELECT topic, status, attempts, lease FROM outbox")}
    out = {}
    async for key in store.r.scan_iter(match=store.k.outbox_item("*")):
        topic, status, attempts, lease = await store.r.hmget(key, "topic", "status", "attempts", "lease")
        out[topic.decode()] = ((status or b"pending").decode(), int(attempts), lease.decode() if lease else None)
    for _sid, f in await store.r.xrange(store.k.events):  # events wait in the webhooks' stream (redis_webhooks.py)
        out[f[b"topic"].decode()] = ("pending", 0, None)
    return out


async def test_two_dispatchers_send_a_reply_once_and_leave_other_topics(tmp_path, bot_api, backend) -> None:
    bot, connectors = bot_api
    store = open_store(tmp_path, backend)
    other = open_store(tmp_path, backend) if store.backend == "redis" else store  # on Redis: two instances
    try:
        ticket = await telegram_ticket(store)
        await store.reply_create(ticket, ReplyDraft(text="Hi there"))
        a, b = dispatcher(store, connectors, tmp_path), dispatcher(other, connectors, tmp_path)
        claimed = await asyncio.gather(a.dispatch_due(), b.dispatch_due())
        assert sorted(claimed) == [0, 1]
        assert [p["text"] for _, p in bot.sent] == ["Hi there"]
        rows = await outbox(store)
        assert rows[REPLY_TOPIC] == ("sent", 1, None)
        assert rows["ticket.created"] == ("pending", 0, None)  # the webhook issue's to deliver
    finally:
        await store.close()
        if other is not store:
            await other.close()


async def test_a_pending_reply_is_sent_after_a_restart(tmp_path, bot_api, backend) -> None:
    bot, connectors = bot_api
    store = open_store(tmp_path, backend)
    ticket = await telegram_ticket(store)
    entry = await store.reply_create(ticket, ReplyDraft(text="Sent after the restart", author="agent-1"))
    await store.close()  # the process stops before any dispatcher ran
    store = open_store(tmp_path, backend)
    try:
        assert await dispatcher(store, connectors, tmp_path).dispatch_due() == 1
        assert [p["text"] for _, p in bot.sent] == ["Sent after the restart"]
        (out,) = [e for e in (await store.timeline(ticket_id=ticket)).items if e.id == entry.id]
        assert out.data["delivery"]["status"] == "sent" and out.data["author"] == "agent-1"
    finally:
        await store.close()


async def test_an_expired_lease_passes_the_row_on_and_the_old_holder_cannot_settle(tmp_path, bot_api,
                                                                                   backend) -> None:
    _, connectors = bot_api
    store = open_store(tmp_path, backend)
    try:
        ticket = await telegram_ticket(store)
        await store.reply_create(ticket, ReplyDraft(text="Hi"))
        (stale,) = await store.outbox_claim(REPLY_TOPIC, 10, lease_s=0)  # a holder that died at once
        assert await store.outbox_claim(REPLY_TOPIC, 10, lease_s=60) != []
        assert await store.outbox_settle(stale, Delivery(status="sent", at=utcnow(), attempts=1)) is False
        assert (await outbox(store))[REPLY_TOPIC][:2] == ("sending", 2)
    finally:
        await store.close()


async def test_retryable_errors_back_off_then_give_up(tmp_path, bot_api, backend) -> None:
    """A 502 is retried only once its back-off (5 s, then 10 s, +≤10% jitter)
    has passed on the dispatcher's clock, and the last attempt gives up."""
    bot, connectors = bot_api
    clock = FakeClock(INSTANTS[BUSINESS_HOURS])
    store = backend(tmp_path, clock=clock)
    try:
        ticket = await telegram_ticket(store)
        entry = await store.reply_create(ticket, ReplyDraft(text="Hi"))
        for _ in range(3):
            bot.fail_next("sendMessage", ApiError(502, "Bad Gateway"))
        d = dispatcher(store, connectors, tmp_path, base_delay_s=5, max_attempts=3, clock=clock)

        async def delivery() -> dict:
            (out,) = [e for e in (await store.timeline(ticket_id=ticket)).items if e.id == entry.id]
            return out.data["delivery"]

        for attempt, base in ((1, 5), (2, 10)):
            assert await d.dispatch_due() == 1
            first = await delivery()
            assert (first["status"], first["attempts"]) == ("retrying", attempt)
            wait = (datetime.fromisoformat(first["next_at"]) - clock()).total_seconds()
            assert base <= wait <= base * 1.1
            clock.advance(seconds=wait - 0.5)
            assert await d.dispatch_due() == 0  # not yet due: nothing is sent early
            clock.advance(seconds=0.5)
        assert await d.dispatch_due() == 1
        last = await delivery()
        assert last["status"] == "failed"
        assert last["reason"].startswith("gave up after 3 attempts: Telegram unreachable")
        assert bot.sent == [] and (await outbox(store))[REPLY_TOPIC][:2] == ("failed", 3)
    finally:
        await store.close()


def test_backoff_honours_retry_after_and_is_capped() -> None:
    no_jitter = {"jitter": lambda: 0.0}
    assert backoff_s(1, base_s=5, max_s=900, retry_after=17, **no_jitter) == 17
    assert [backoff_s(n, base_s=5, max_s=900, **no_jitter) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert backoff_s(30, base_s=5, max_s=900, **no_jitter) == 900
    assert backoff_s(30, base_s=5, max_s=900, jitter=lambda: 1.0) == pytest.approx(990)
