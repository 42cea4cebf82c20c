"""The Telegram connector's I/O against the Bot API stand-in on 127.0.0.1:
webhook checks, polling with a persisted offset, send errors, media download,
configuration errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from connectors.base import AuthFailed, Fatal, NotReady, SendError
from connectors.telegram.client import SECRET_HEADER, TelegramConnector
from connectors.telegram.parse import parse, update_key
from routing.model import Attachment, Identity, Outbound
from tests.corpus import Row, params
from tests.standins.telegram_api import ApiError, rate_limited

from .conftest import POLLING_TOKEN, SECRET, WEBHOOK_TOKEN, Api, MemoryContext, config_for, run_until

# PTB 22.2+ warns whenever it builds a RetryAfter (int → timedelta migration)
# unless opted in to timedeltas: the connector opts in and reads both shapes,
# so a 429 must not warn.
pytestmark = pytest.mark.filterwarnings("error::telegram.warnings.PTBDeprecationWarning")

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "telegram"
WEBHOOK_ACCOUNT = WEBHOOK_TOKEN.partition(":")[0]
POLLING_ACCOUNT = POLLING_TOKEN.partition(":")[0]
POLLING_BOT = "sales"  # the polling bot's name in config_for


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def update_from(name: str) -> tuple[str, dict[str, Any]]:
    """A fixture as the stand-in queues it: (update kind, object)."""
    update = json.loads(body(name))
    kind = next(k for k, v in update.items() if isinstance(v, dict))
    return kind, update[kind]


@pytest.fixture
async def webhook(api: Api, make_connector, aiohttp_client):
    """(test client with the connector's routes mounted, its context)."""

    async def start(**overrides: Any):
        ctx = MemoryContext(config_for(api, **overrides))
        app = web.Application()
        app.add_routes(make_connector(ctx).routes())
        return await aiohttp_client(app), ctx

    return start


async def post(client, data: bytes, secret: str | None = SECRET, bot: str = "support"):
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    return await client.post(f"/channels/telegram/{bot}", data=data, headers=headers)


# ---------------------------------------------------------------- webhook


@pytest.mark.corpus
@pytest.mark.parametrize("corpus_row", params("telegram"), indirect=True)
async def test_webhook_journals_each_corpus_update(corpus_row: Row, webhook) -> None:
    client, ctx = await webhook()
    raw = corpus_row.read()
    response = await post(client, raw)
    assert response.status == 200
    ((account, key, stored, _),) = [(e.account, e.key, e.raw, e.meta) for e in ctx.journal]
    assert (account, stored) == (WEBHOOK_ACCOUNT, raw)  # the bytes Telegram sent, byte for byte
    assert key == update_key(json.loads(raw)) == parse(stored, {"account": account})[0].external_id


@pytest.mark.parametrize("secret", [None, "", "s3cret-Token_valuX", SECRET + "x"])
async def test_webhook_refuses_a_wrong_or_missing_secret(webhook, secret: str | None) -> None:
    client, ctx = await webhook()
    response = await post(client, body("synthetic_edited_message.json"), secret=secret)
    assert response.status == 401
    assert ctx.journal == []


async def test_webhook_refuses_an_oversize_body(webhook) -> None:
    client, ctx = await webhook(max_body_bytes=256)
    response = await post(client, body("synthetic_callback_query.json"))  # ~1.3 kB
    assert response.status == 413
    assert ctx.journal == []


@pytest.mark.parametrize("data", [b"not json", b'{"message": {"text": "no update_id"}}'])
async def test_webhook_refuses_what_is_not_an_update(webhook, data: bytes) -> None:
    client, ctx = await webhook()
    assert (await post(client, data)).status == 400
    assert ctx.journal == []


async def test_webhook_refusals_are_counted_and_logged_by_reason(webhook) -> None:
    """Each refusal (401, 413, 400) counts its omnigate_rejected reason and logs
    telegram.webhook.refused with reason and status; a 503 counts nothing."""
    from structlog.testing import capture_logs

    client, ctx = await webhook(max_body_bytes=256)
    with capture_logs() as logs:
        statuses = [(await post(client, b"{}", secret="wrong")).status,
                    (await post(client, body("synthetic_callback_query.json"))).status,
                    (await post(client, b"not json")).status]
        ctx.fail_ingest = True
        statuses.append((await post(client, b'{"update_id": 1}')).status)
    assert statuses == [401, 413, 400, 503]
    assert ctx.refusals == ["unauthorized", "too_large", "invalid"]
    refused = [(e["status"], e["reason"]) for e in logs if e["event"] == "telegram.webhook.refused"]
    assert refused[:2] == [(401, "secret token missing or wrong"), (413, "body too large")]
    assert [s for s, _ in refused] == [401, 413, 400]
    assert [e["log_level"] for e in logs if e["event"] == "telegram.webhook.journal_failed"] == ["error"]
    assert ctx.journal == []


async def test_webhook_answers_503_when_the_journal_fails(webhook) -> None:
    client, ctx = await webhook()
    ctx.fail_ingest = True
    assert (await post(client, body("synthetic_edited_message.json"))).status == 503


async def test_webhook_redelivery_is_stored_once(webhook) -> None:
    client, ctx = await webhook()
    for _ in range(2):
        assert (await post(client, body("synthetic_edited_message.json"))).status == 200
    assert ctx.keys == ["111111:5:edit:1441645600"]


async def test_webhook_answers_a_button_press_in_its_response(webhook) -> None:
    client, ctx = await webhook()
    response = await post(client, body("synthetic_callback_query.json"))
    assert response.status == 200
    assert await response.json() == {"method": "answerCallbackQuery", "callback_query_id": "4382bfdwdsb323b2d9"}
    assert ctx.keys == ["callback:4382bfdwdsb323b2d9"]


@pytest.mark.parametrize("bot", ["nobody", "sales"])  # unknown, or a polling bot
async def test_webhook_of_no_webhook_bot_is_404(webhook, bot: str) -> None:
    client, ctx = await webhook()
    assert (await post(client, body("synthetic_edited_message.json"), bot=bot)).status == 404


# ---------------------------------------------------------------- polling


async def test_polling_persists_the_offset_so_a_restart_fetches_nothing_twice(api: Api, make_connector) -> None:
    ctx = MemoryContext(config_for(api))
    names = ["synthetic_group_audio_reply.json", "synthetic_callback_query.json", "synthetic_edited_message.json"]
    pushed = [api.polling_bot.push_update(*update_from(n)) for n in names]

    await run_until(make_connector(ctx), lambda: ctx.wait_for_entries(3))
    assert ctx.state[f"offset:{POLLING_ACCOUNT}"] == str(pushed[-1]["update_id"] + 1)
    assert api.polling_bot.answered_callbacks == ["4382bfdwdsb323b2d9"]

    # "restart": a new connector on the same journal and state
    later = api.polling_bot.push_update(*update_from("synthetic_my_chat_member_kicked.json"))
    calls_before = len(api.polling_bot.poll_offsets)
    await run_until(make_connector(ctx), lambda: ctx.wait_for_entries(4))

    assert api.polling_bot.poll_offsets[calls_before] == pushed[-1]["update_id"] + 1
    assert len(ctx.calls) == 4  # each update offered to the journal exactly once
    assert ctx.keys == [update_key(u) for u in [*pushed, later]]
    assert {e.account for e in ctx.journal} == {POLLING_ACCOUNT}
    assert ctx.state[f"offset:{POLLING_ACCOUNT}"] == str(later["update_id"] + 1)


async def test_several_bots_poll_at_once_each_under_its_own_account(api: Api, make_connector) -> None:
    third = api.standin.add_bot("3333333:third-bot-token", "billing_bot")
    bots = {
        "sales": {"token": POLLING_TOKEN, "mode": "polling", "poll_timeout": 1},
        "billing": {"token": third.token, "mode": "polling", "poll_timeout": 1},
    }
    ctx = MemoryContext(config_for(api, bots=bots))
    api.polling_bot.push_update(*update_from("synthetic_edited_message.json"))
    third.push_update(*update_from("synthetic_edited_message.json"))  # the same chat and message id, another bot
    await run_until(make_connector(ctx), lambda: ctx.wait_for_entries(2))
    assert sorted((e.account, e.key) for e in ctx.journal) == [
        ("2222222", "111111:5:edit:1441645600"),
        ("3333333", "111111:5:edit:1441645600"),
    ]
    assert set(ctx.state) == {"offset:2222222", "offset:3333333"}


async def test_polling_survives_a_failed_callback_answer(api: Api, make_connector) -> None:
    ctx = MemoryContext(config_for(api))
    api.polling_bot.fail_next("answerCallbackQuery", ApiError(400, "Bad Request: query is too old"))
    api.polling_bot.push_update(*update_from("synthetic_callback_query.json"))
    api.polling_bot.push_update(*update_from("synthetic_edited_message.json"))
    await run_until(make_connector(ctx), lambda: ctx.wait_for_entries(2))
    assert ctx.keys == ["callback:4382bfdwdsb323b2d9", "111111:5:edit:1441645600"]


async def test_polling_journals_the_update_json(api: Api, make_connector) -> None:
    ctx = MemoryContext(config_for(api))
    update = api.polling_bot.push_update(*update_from("synthetic_group_audio_reply.json"))
    await run_until(make_connector(ctx), lambda: ctx.wait_for_entries(1))
    (raw,) = [e.raw for e in ctx.journal]
    assert json.loads(raw) == update
    assert parse(raw, {"account": POLLING_ACCOUNT})[0].text == "here is the recording"


async def test_polling_waits_out_a_429_then_continues(api: Api, make_connector) -> None:
    ctx = MemoryContext(config_for(api))
    api.polling_bot.fail_next("getUpdates", rate_limited(1))
    api.polling_bot.push_update(*update_from("synthetic_edited_message.json"))
    connector = make_connector(ctx)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # waits without sleeping, and says how long
        assert ctx.keys == []  # nothing was fetched before the wait
        waits.append(seconds)

    connector.sleep = sleep
    await run_until(connector, lambda: ctx.wait_for_entries(1))
    assert waits == [1.0]  # Retry-After honoured
    assert ctx.keys == ["111111:5:edit:1441645600"]


async def test_polling_with_a_refused_token_is_auth_failed(api: Api, make_connector) -> None:
    config = config_for(api, bots={"ghost": {"token": "3333333:unknown-token", "mode": "polling", "poll_timeout": 1}})
    with pytest.raises(AuthFailed, match="telegram bot ghost: token refused"):
        await make_connector(MemoryContext(config)).run()


async def test_polling_without_the_api_is_not_ready(api: Api, make_connector, unused_tcp_port: int) -> None:
    config = config_for(api, api_base=f"http://127.0.0.1:{unused_tcp_port}")
    with pytest.raises(NotReady, match="telegram bot sales: getUpdates failed"):
        await make_connector(MemoryContext(config)).run()


async def test_polling_keeps_the_offset_when_the_journal_fails(api: Api, make_connector) -> None:
    ctx = MemoryContext(config_for(api), fail_ingest=True)
    api.polling_bot.push_update(*update_from("synthetic_edited_message.json"))
    with pytest.raises(NotReady, match="journal unavailable"):
        await make_connector(ctx).run()
    assert ctx.state == {}


async def test_run_returns_at_once_without_polling_bots(api: Api, make_connector) -> None:
    bots = {"support": {"token": WEBHOOK_TOKEN, "secret_token": SECRET}}
    assert await make_connector(MemoryContext(config_for(api, bots=bots))).run() is None
    assert api.polling_bot.poll_offsets == []


# ---------------------------------------------------------------- send


def outbound(text: str, chat: str = "111111", account: str = WEBHOOK_ACCOUNT, **kw: Any) -> Outbound:
    return Outbound(id="o1", ticket_id="t1", channel="telegram", account=account, to=Identity("telegram", chat), text=text, **kw)


async def test_send_text(api: Api, make_connector) -> None:
    connector = make_connector(MemoryContext(config_for(api)))
    result = await connector.send(outbound("Your order ships today."))
    assert result.external_id == "111111:1"
    ((method, sent),) = api.webhook_bot.sent
    assert (method, sent["chat_id"], sent["text"]) == ("sendMessage", "111111", "Your order ships today.")


async def test_send_by_bot_name_and_long_text_in_parts(api: Api, make_connector) -> None:
    connector = make_connector(MemoryContext(config_for(api)))
    text = "\n".join(f"line {i:04d} " + "x" * 40 for i in range(200))  # ~10 kB
    await connector.send(outbound(text, account="sales"))
    parts = [p["text"] for _, p in api.polling_bot.sent]
    assert len(parts) == 3 and all(len(p) <= 4096 for p in parts)
    assert "\n".join(parts) == text


async def test_send_429_is_retryable_with_the_delay(api: Api, make_connector) -> None:
    connector = make_connector(MemoryContext(config_for(api)))
    api.webhook_bot.fail_next("sendMessage", rate_limited(7))
    with pytest.raises(SendError) as err:
        await connector.send(outbound("hello"))
    assert (err.value.retryable, err.value.retry_after, err.value.code) == (True, 7.0, "429")


async def test_send_to_a_user_who_blocked_the_bot_is_final(api: Api, make_connector) -> None:
    connector = make_connector(MemoryContext(config_for(api)))
    api.webhook_bot.blocked_chats.add("111111")
    with pytest.raises(SendError) as err:
        await connector.send(outbound("hello"))
    assert (err.value.retryable, err.value.code) == (False, "403")
    assert err.value.reason == "the user blocked the bot (Forbidden: bot was blocked by the user)"


async def test_send_attachments_as_photo_and_document(api: Api, make_connector) -> None:
    connector = make_connector(MemoryContext(config_for(api)))
    png, pdf = b"\x89PNG\r\n\x1a\n-pixels-", b"%PDF-1.7 invoice"
    attachments = [
        Attachment(name="shot.png", content_type="image/png", size=len(png), sha256="", data=png),
        Attachment(name="invoice.pdf", content_type="application/pdf", size=len(pdf), sha256="", data=pdf),
    ]
    await connector.send(outbound("See attached.", attachments=attachments))
    assert [m for m, _ in api.webhook_bot.sent] == ["sendMessage", "sendPhoto", "sendDocument"]
    assert [data for _, data in api.webhook_bot.files.values()] == [png, pdf]
    assert [path for path, _ in api.webhook_bot.files.values()] == ["photos/shot.png", "documents/invoice.pdf"]


async def test_send_to_an_unknown_chat_is_final(api: Api, make_connector) -> None:
    connector = make_connector(MemoryContext(config_for(api)))
    api.webhook_bot.fail_next("sendMessage", ApiError(400, "Bad Request: chat not found"))
    with pytest.raises(SendError) as err:
        await connector.send(outbound("hello", chat="424242"))
    assert (err.value.retryable, err.value.code, err.value.reason) == (False, "400", "Telegram refused the message: Chat not found")


async def test_send_when_telegram_is_unreachable_is_retryable(api: Api, make_connector, unused_tcp_port: int) -> None:
    connector = make_connector(MemoryContext(config_for(api, api_base=f"http://127.0.0.1:{unused_tcp_port}")))
    with pytest.raises(SendError) as err:
        await connector.send(outbound("hello"))
    assert err.value.retryable and err.value.retry_after is None


@pytest.mark.parametrize(("account", "text"), [("999", "hi"), (WEBHOOK_ACCOUNT, "  ")])
async def test_send_refuses_what_cannot_go_out(api: Api, make_connector, account: str, text: str) -> None:
    connector = make_connector(MemoryContext(config_for(api)))
    with pytest.raises(SendError) as err:
        await connector.send(outbound(text, account=account))
    assert not err.value.retryable
    assert api.webhook_bot.sent == []


# ---------------------------------------------------------------- media


async def test_fetch_media_downloads_by_file_id(api: Api, make_connector) -> None:
    connector = make_connector(MemoryContext(config_for(api)))
    audio = b"ID3\x04-mp3-frames" * 100
    api.webhook_bot.add_file("audiofileid", "music/file_12.mp3", audio)
    (inbound,) = parse(body("synthetic_group_audio_reply.json"), {"account": WEBHOOK_ACCOUNT})
    await connector.fetch_media(inbound)
    (att,) = inbound.attachments
    assert (att.data, att.size, att.sha256) == (audio, len(audio), hashlib.sha256(audio).hexdigest())
    assert att.name == "call.mp3"  # the sender's file name wins over Telegram's storage path
    assert inbound.defects == []


async def test_fetch_media_records_a_failure_as_a_defect(api: Api, make_connector) -> None:
    connector = make_connector(MemoryContext(config_for(api)))
    raw = b'{"update_id": 3, "message": {"message_id": 3, "date": 1, "chat": {"id": 7}, "photo": [{"file_id": "gone", "width": 9, "height": 9}]}}'
    (inbound,) = parse(raw, {"account": WEBHOOK_ACCOUNT})
    await connector.fetch_media(inbound)
    assert inbound.attachments[0].data is None and inbound.attachments[0].sha256 == ""
    assert inbound.defects == ["attachment gone not downloaded: Invalid file_id"]


async def test_fetch_media_names_an_unnamed_file_from_its_path(api: Api, make_connector) -> None:
    connector = make_connector(MemoryContext(config_for(api)))
    api.webhook_bot.add_file("voicefileid", "voice/file_7.oga", b"OggS-voice")
    raw = b'{"update_id": 7, "message": {"message_id": 7, "date": 1, "chat": {"id": 7}, "voice": {"file_id": "voicefileid"}}}'
    (inbound,) = parse(raw, {"account": WEBHOOK_ACCOUNT})
    await connector.fetch_media(inbound)
    assert (inbound.attachments[0].name, inbound.attachments[0].content_type) == ("file_7.oga", "audio/ogg")


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("bots", "message"),
    [
        ({"a": {"tokn": "1:x"}}, "Object contains unknown field `tokn` - at `$.bots.a`"),
        ({"a": {"token": "not-a-token", "mode": "polling"}}, "at `$.bots.a.token`"),
        ({"a": {"token": "1:x", "mode": "push"}}, "at `$.bots.a.mode`"),
        ({"a b": {"token": "1:x", "mode": "polling"}}, "at `key` in `$.bots`"),
        ({"a": {"token": "1:x"}}, "bots.a: mode webhook needs a secret_token"),
        ({"a": {"token": "1:x", "mode": "polling"}, "b": {"token": "1:y", "mode": "polling"}}, "bots a, b use the same bot (id 1)"),
    ],
)
def test_bad_config_is_fatal_and_says_what(bots: dict, message: str) -> None:
    with pytest.raises(Fatal, match=re.escape(message)) as err:
        TelegramConnector(MemoryContext({"bots": bots}))
    assert str(err.value).startswith("telegram config: ")
    assert "not-a-token" not in str(err.value)  # values (tokens) never reach the message


async def test_config_numbers_may_come_as_strings_from_the_environment(make_connector) -> None:
    config = {"max_body_bytes": "2048", "bots": {"a": {"token": "1:x", "mode": "polling", "poll_timeout": "5"}}}
    assert make_connector(MemoryContext(config)).routes()


# ---------------------------------------------------------------- several instances: one poller per bot


async def test_two_pollers_of_one_bot_get_409_conflict(api: Api, make_connector) -> None:
    """What the lease prevents: Telegram ends a long poll when another
    getUpdates for the bot arrives (the stand-in does the same)."""
    from gateway.tasks import cancel_and_wait

    ctxs = [MemoryContext(config_for(api)) for _ in range(2)]
    runners = [asyncio.create_task(make_connector(c).run()) for c in ctxs]
    try:
        while api.polling_bot.conflicts == 0:
            assert not all(r.done() for r in runners), "both pollers stopped before a conflict"
            await asyncio.sleep(0.02)
    finally:
        await cancel_and_wait(*runners)


@pytest.mark.integration
async def test_two_instances_on_redis_poll_one_bot_one_at_a_time(api: Api, make_connector, redis_server,
                                                                  redis_prefix) -> None:
    """Each instance's connector polls only while it holds the bot's lease:
    one poller (no 409), and when it stops the other takes over."""
    from gateway.ownership import LeaseOwnership
    from gateway.store.redis_store import RedisStore
    from gateway.tasks import cancel_and_wait

    stores = [RedisStore(redis_server.url, prefix=redis_prefix, consumer=n) for n in "ab"]
    ctxs = [MemoryContext(config_for(api)) for _ in stores]
    for n, (ctx, store) in enumerate(zip(ctxs, stores)):
        ctx.ownership = LeaseOwnership(store, f"inst-{n}", ttl_s=1.0)
    ctxs[1].state = ctxs[0].state  # one store: one offset per bot
    runners = [asyncio.create_task(make_connector(c).run()) for c in ctxs]
    journaled = lambda: sum(len(c.journal) for c in ctxs)  # noqa: E731

    stopped: set[int] = set()

    async def until(n: int) -> None:
        while journaled() < n:
            done = [r for i, r in enumerate(runners) if r.done() and i not in stopped]
            assert not done, [r.exception() for r in done]
            await asyncio.sleep(0.02)

    try:
        names = ["synthetic_group_audio_reply.json", "synthetic_edited_message.json", "synthetic_callback_query.json"]
        for n, name in enumerate(names[:2], 1):
            api.polling_bot.push_update(*update_from(name))
            await asyncio.wait_for(until(n), 30)
        owner = next(i for i, c in enumerate(ctxs) if c.journal)
        assert not ctxs[1 - owner].journal
        assert ctxs[owner].ownership.states() == {f"telegram:poll:{POLLING_BOT}": "owner"}
        assert ctxs[1 - owner].ownership.states() == {f"telegram:poll:{POLLING_BOT}": "standby"}
        stopped.add(owner)
        await cancel_and_wait(runners[owner])  # the owning instance stops: it hands the lease over
        api.polling_bot.push_update(*update_from(names[2]))
        await asyncio.wait_for(until(3), 30)
        assert len(ctxs[1 - owner].journal) == 1
        assert api.polling_bot.conflicts == 0
    finally:
        await cancel_and_wait(*runners)
        for s in stores:
            await s.close()
