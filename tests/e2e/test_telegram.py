"""Telegram end to end: corpus updates through the webhook to one ticket,
replies out through the Bot API stand-in (429 included), edits applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clock import BUSINESS_HOURS, EVENING
from tests.corpus import require_corpus
from tests.e2e.conftest import Gateway
from tests.standins.telegram_api import TelegramApiStandIn, rate_limited

BOT_TOKEN = "1111111:webhook-bot-token"
SECRET = "s3cret-Token_value"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "telegram"


def section(api: TelegramApiStandIn) -> dict:
    return {"api_base": api.base, "bots": {"support": {"token": BOT_TOKEN, "secret_token": SECRET, "mode": "webhook"}}}


async def push(gw: Gateway, body: bytes) -> None:
    resp = await gw.client.post("/channels/telegram/support", data=body,
                                headers={"X-Telegram-Bot-Api-Secret-Token": SECRET, "Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()


@pytest.fixture
async def gw(start_gateway, telegram_api) -> Gateway:
    telegram_api.bot = telegram_api.add_bot(BOT_TOKEN, "support_bot")
    return await start_gateway(telegram=section(telegram_api))


def corpus_text() -> bytes:
    return (require_corpus() / "telegram" / "zammad_private_text.json").read_bytes()


async def test_private_text_becomes_a_ticket_and_a_redelivery_changes_nothing(gw: Gateway) -> None:
    await push(gw, corpus_text())
    await gw.drain()
    entry, ticket, contact = await gw.only_ticket()
    assert {"kind": "telegram", "value": "111111"} in contact["identities"]
    assert contact["name"] == "Test Firstname Test Lastname"
    assert ticket["channels"] == ["telegram"] and ticket["status"] == "new"
    await push(gw, corpus_text())  # Telegram retries a webhook it thinks failed
    await gw.drain()
    assert [e["id"] for e in await gw.journal()] == [entry["id"]]
    (message,) = await gw.timeline(ticket["id"])
    assert (message["kind"], message["text"]) == ("message_in", "Hello, I need your Help")


@pytest.mark.clock(BUSINESS_HOURS)  # asserts every send: the evening's opening-hours reply aside
async def test_reply_is_sent_to_the_chat(gw: Gateway, telegram_api) -> None:
    await push(gw, corpus_text())
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    reply = await gw.reply(ticket["number"], "We are on it.", author="agent-7")
    assert reply["kind"] == "message_out" and reply["data"]["delivery"] == {"status": "queued"}
    delivery = await gw.delivery(ticket["id"], reply["id"], lambda d: d["status"] != "queued")
    assert delivery["status"] == "sent" and delivery["external_id"] == "111111:1"
    ((method, params),) = telegram_api.bot.sent
    assert (method, str(params["chat_id"]), params["text"]) == ("sendMessage", "111111", "We are on it.")
    assert (await gw.get(f"/api/v1/tickets/{ticket['id']}"))["status"] == "open"


@pytest.mark.clock(BUSINESS_HOURS)  # asserts every send: the evening's opening-hours reply aside
async def test_rate_limited_reply_is_retried_after_retry_after(gw: Gateway, telegram_api) -> None:
    await push(gw, corpus_text())
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    telegram_api.bot.fail_next("sendMessage", rate_limited(1))
    reply = await gw.reply(ticket["id"], "Thanks for waiting.")
    retrying = await gw.delivery(ticket["id"], reply["id"], lambda d: d["status"] != "queued")
    assert (retrying["status"], retrying["attempts"], retrying["code"]) == ("retrying", 1, "429")
    assert _seconds(retrying["next_at"]) - _seconds(retrying["at"]) == pytest.approx(1.0)
    sent = await gw.delivery(ticket["id"], reply["id"], lambda d: d["status"] != "retrying")
    assert (sent["status"], sent["attempts"]) == ("sent", 2)
    assert _seconds(sent["at"]) >= _seconds(retrying["next_at"])  # Retry-After was waited out (the gateway's clock)
    assert [p["text"] for _, p in telegram_api.bot.sent] == ["Thanks for waiting."]
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'omnigate_replies_total{channel="telegram",status="retrying"} 1.0' in metrics
    assert 'omnigate_replies_total{channel="telegram",status="sent"} 1.0' in metrics


@pytest.mark.clock(EVENING)
async def test_in_the_evening_the_opening_hours_reply_goes_to_the_chat(gw: Gateway, telegram_api) -> None:
    """The shipped after-hours rule answers through the channel, by the gateway's clock."""
    await push(gw, corpus_text())
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    (auto,) = await gw.auto_replies(ticket["id"])
    delivery = await gw.delivery(ticket["id"], auto["id"], lambda d: d["status"] != "queued")
    assert delivery["status"] == "sent"
    ((method, params),) = telegram_api.bot.sent
    assert method == "sendMessage" and f"工单号 {ticket['number']}" in params["text"] and "非工作时间" in params["text"]
    assert "after-hours" in (await gw.get(f"/api/v1/tickets/{ticket['id']}"))["tags"]


@pytest.mark.clock(BUSINESS_HOURS)
async def test_in_business_hours_nothing_answers_on_its_own(gw: Gateway, telegram_api) -> None:
    await push(gw, corpus_text())
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    assert await gw.auto_replies(ticket["id"]) == [] and telegram_api.bot.sent == []
    assert "after-hours" not in (await gw.get(f"/api/v1/tickets/{ticket['id']}")).get("tags", [])


async def test_edited_message_updates_the_earlier_entry(gw: Gateway) -> None:
    await push(gw, corpus_text())
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    await push(gw, (FIXTURES / "synthetic_edited_message.json").read_bytes())
    await gw.drain()
    (message,) = await gw.timeline(ticket["id"])
    assert message["text"] == "Hello, I need your help with order 4711"
    assert message["data"]["edits"][0]["previous_text"] == "Hello, I need your Help"
    assert message["edited_at"]


def _seconds(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()

