"""WhatsApp, Messenger, Instagram and LINE end to end: signed webhooks into a
running gateway (real SQLite, pipeline, outbox dispatcher), replies and
templates out through the Graph and LINE stand-ins, delivery statuses back
onto the reply's timeline entry.

Payloads are the corpus's where it has them (the signed WhatsApp text with
its real signature); the others are synthetic, built here from the
platforms' documentation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway import keys
from gateway.app import create_app
from gateway.config import load
from tests.corpus import require_corpus
from tests.e2e.conftest import Gateway, _serve
from tests.gateway.conftest import AUTH, TOKEN
from tests.standins.graph_api import THROUGHPUT, GraphApiStandIn
from tests.standins.line_api import RATE_LIMITED, LineApiStandIn

WA_SECRET = "1222e786b144d0e85b9f365372d93676"  # the corpus payload's app secret (its meta.json)
WA_PHONE_ID = "277321005464405"
WA_TOKEN = "EAAG-wa-token"
VERIFY = "verify-me-please"
FB_SECRET = "fb-app-secret"
PAGE_ID = "574839570934"
PAGE_TOKEN = "EAAG-page-token"
IG_SECRET = "ig-app-secret"
IG_ID = "17841400000000001"
IG_TOKEN = "IGQV-ig-token"
LINE_SECRET = "line-channel-secret"
LINE_CHANNEL = "1650000001"
LINE_TOKEN = "line-access-token"
LINE_USER = "U206d25c2ea6bd87c17655609a1c37cb8"
T0 = 1_790_000_000  # a fixed platform timestamp (seconds)


class Clock:
    """The gateway's clock: the wall clock moved by ``shift``."""

    def __init__(self) -> None:
        self.shift = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.shift


@pytest.fixture
async def graph(aiohttp_server) -> GraphApiStandIn:
    api = GraphApiStandIn(tokens={WA_PHONE_ID: WA_TOKEN, PAGE_ID: PAGE_TOKEN, IG_ID: IG_TOKEN})
    return await _serve(aiohttp_server, api)


@pytest.fixture
async def line_api(aiohttp_server) -> LineApiStandIn:
    return await _serve(aiohttp_server, LineApiStandIn(tokens={LINE_TOKEN}))


@pytest.fixture
async def gw(aiohttp_client, tmp_path, graph, line_api) -> Gateway:
    sections = {
        "whatsapp": {"graph_base": graph.base, "app_secret": WA_SECRET, "verify_token": VERIFY,
                     "numbers": {"main": {"phone_number_id": WA_PHONE_ID, "access_token": WA_TOKEN}}},
        "messenger": {"graph_base": graph.base, "app_secret": FB_SECRET, "verify_token": VERIFY,
                      "pages": {"shop": {"page_id": PAGE_ID, "access_token": PAGE_TOKEN}}},
        "instagram": {"graph_base": graph.base, "app_secret": IG_SECRET, "verify_token": VERIFY,
                      "accounts": {"shop": {"ig_id": IG_ID, "access_token": IG_TOKEN}}},
        "line": {"api_base": line_api.base, "data_base": line_api.base,
                 "accounts": {"shop": {"channel_id": LINE_CHANNEL, "channel_secret": LINE_SECRET,
                                       "access_token": LINE_TOKEN}}},
    }
    # no rules folder: the shipped after-hours auto-reply would make the
    # timelines depend on the wall clock
    env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data"),
           "OMNIGATE_RULES_DIR": str(tmp_path / "no-rules")}
    app = create_app(load(None, environ=env, flags=sections), clock=Clock())
    client = await aiohttp_client(app)
    return Gateway(client, app)


# ---------------------------------------------------------------- helpers


def hub_sig(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def line_sig(body: bytes) -> str:
    return base64.b64encode(hmac.new(LINE_SECRET.encode(), body, hashlib.sha256).digest()).decode()


async def post(gw: Gateway, path: str, body: bytes, headers: dict[str, str], status: int = 200) -> None:
    resp = await gw.client.post(path, data=body, headers={"Content-Type": "application/json", **headers})
    assert resp.status == status, await resp.text()


async def wa(gw: Gateway, body: bytes, status: int = 200) -> None:
    await post(gw, "/channels/whatsapp", body, {"X-Hub-Signature-256": hub_sig(body, WA_SECRET)}, status)


def wa_body(*, messages=(), statuses=(), name: str = "Dana") -> bytes:
    value = {"messaging_product": "whatsapp",
             "metadata": {"display_phone_number": "15550001111", "phone_number_id": WA_PHONE_ID},
             "contacts": [{"profile": {"name": name}, "wa_id": "972544401243"}]}
    if messages:
        value["messages"] = list(messages)
    if statuses:
        value["statuses"] = list(statuses)
    return json.dumps({"object": "whatsapp_business_account",
                       "entry": [{"id": "1029384756", "changes": [{"value": value, "field": "messages"}]}]}).encode()


def wa_text(mid: str, text: str, ts: int = T0) -> dict:
    return {"from": "972544401243", "id": mid, "timestamp": str(ts), "type": "text", "text": {"body": text}}


def wa_status(wamid: str, status: str, **extra) -> dict:
    return {"id": wamid, "status": status, "timestamp": str(T0 + 60), "recipient_id": "972544401243", **extra}


def signed_corpus() -> tuple[bytes, str]:
    root = require_corpus() / "social"
    meta = json.loads((root / "whatsapp_pywa_signed_text.meta.json").read_text())
    return (root / "whatsapp_pywa_signed_text.json").read_bytes(), meta["headers"]["X-Hub-Signature-256"]


def outbox_events(gw: Gateway, topic: str) -> list[dict]:
    """The topic's events; for ``message.status`` the platform's reports (``source: report``),
    not the dispatcher's own send outcome (``source: send``)."""
    db = Path(gw.app[keys.CONFIG].data_dir) / "omnigate.db"
    with sqlite3.connect(db) as conn:
        return [e for e in (json.loads(r[0]) for r in conn.execute(
            "SELECT payload FROM outbox WHERE topic = ? ORDER BY seq", (topic,))) if e.get("source") != "send"]


async def whatsapp_ticket(gw: Gateway) -> dict:
    body, signature = signed_corpus()
    await post(gw, "/channels/whatsapp", body, {"X-Hub-Signature-256": signature})
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    return ticket


async def reply_status(gw: Gateway, ticket_id: str, entry_id: str, until) -> dict:
    return await gw.delivery(ticket_id, entry_id, until)


# ---------------------------------------------------------------- WhatsApp


@pytest.mark.parametrize("path", ["/channels/whatsapp", "/channels/messenger", "/channels/instagram"])
async def test_meta_verification_handshake(gw: Gateway, path: str) -> None:
    ok = await gw.client.get(path, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "42"})
    assert (ok.status, await ok.text()) == (200, "42")
    wrong = await gw.client.get(path, params={"hub.mode": "subscribe", "hub.verify_token": "x", "hub.challenge": "42"})
    assert wrong.status == 403 and "42" not in await wrong.text()


async def test_whatsapp_forged_signature_is_refused_and_nothing_stored(gw: Gateway) -> None:
    body, signature = signed_corpus()
    await post(gw, "/channels/whatsapp", body, {"X-Hub-Signature-256": hub_sig(body, "not-the-secret")}, 401)
    await post(gw, "/channels/whatsapp", body.replace(b"PyWa", b"PyWA"), {"X-Hub-Signature-256": signature}, 401)
    await post(gw, "/channels/whatsapp", body, {}, 401)
    assert await gw.journal() == []


async def test_whatsapp_message_becomes_a_ticket_with_phone_identity_and_redelivery_is_one(gw: Gateway) -> None:
    body, signature = signed_corpus()
    await post(gw, "/channels/whatsapp", body, {"X-Hub-Signature-256": signature})
    await post(gw, "/channels/whatsapp", body, {"X-Hub-Signature-256": signature})  # Meta retries
    await gw.drain()
    entry, ticket, contact = await gw.only_ticket()
    assert {"kind": "whatsapp", "value": "+972544401243"} in contact["identities"]
    assert {"kind": "phone", "value": "+972544401243"} in contact["identities"]
    assert contact["name"] == "PyWa Tests" and ticket["channels"] == ["whatsapp"]
    (message,) = await gw.timeline(ticket["id"])
    assert (message["kind"], message["text"]) == ("message_in", "Hey there! I am using PyWa.")


async def test_whatsapp_body_with_several_messages_gives_each_once(gw: Gateway) -> None:
    await wa(gw, wa_body(messages=[wa_text("wamid.A1", "first"), wa_text("wamid.A2", "second", T0 + 5)]))
    await wa(gw, wa_body(messages=[wa_text("wamid.A2", "second", T0 + 5)]))  # one of them again, alone
    await gw.drain()
    journal = await gw.journal()
    ticket_id = next(e["ticket_id"] for e in journal if e.get("ticket_id"))
    assert [m["text"] for m in await gw.timeline(ticket_id)] == ["first", "second"]


async def test_whatsapp_username_user_is_one_contact_and_answered_by_bsuid(gw: Gateway, graph) -> None:
    body = (Path(__file__).resolve().parents[1] / "fixtures" / "social" / "whatsapp_synthetic_username_bsuid.json").read_bytes()
    await wa(gw, body.replace(b'"phone_number_id": "106540352242922"', f'"phone_number_id": "{WA_PHONE_ID}"'.encode()))
    await gw.drain()
    (entry,) = await gw.journal()
    assert entry["status"] == "processed"
    contact = await gw.get(f"/api/v1/contacts/{entry['contact_id']}")
    assert {"kind": "external", "value": "whatsapp-user:US.13491208655302741918"} in contact["identities"]
    tickets = (await gw.get("/api/v1/tickets"))["items"]
    assert len(tickets) == 1  # both messages on one ticket of one contact
    assert [m["text"] for m in await gw.timeline(tickets[0]["id"])] == [
        "Is my order 4711 on its way?", "It was due yesterday."]
    reply = await gw.reply(tickets[0]["id"], "It ships today.")
    await reply_status(gw, tickets[0]["id"], reply["id"], lambda d: d["status"] == "sent")
    kind, to, payload = graph.sent[-1]
    assert (kind, to, payload["recipient"]) == ("whatsapp", "bsuid:US.13491208655302741918", "US.13491208655302741918")


async def test_whatsapp_reply_then_statuses_update_that_reply(gw: Gateway, graph: GraphApiStandIn) -> None:
    ticket = await whatsapp_ticket(gw)
    other = await gw.reply(ticket["id"], "An earlier answer.")
    await reply_status(gw, ticket["id"], other["id"], lambda d: d["status"] == "sent")
    reply = await gw.reply(ticket["id"], "We are on it.")
    sent = await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "sent")
    kind, to, payload = graph.sent[-1]
    assert (kind, to, payload["type"], payload["text"]["body"]) == ("whatsapp", "972544401243", "text", "We are on it.")
    wamid = sent["external_id"]
    await wa(gw, wa_body(statuses=[wa_status(wamid, "delivered")]))
    await wa(gw, wa_body(statuses=[wa_status(wamid, "read")]))
    await wa(gw, wa_body(statuses=[wa_status(wamid, "delivered")]))  # late and out of order: no step back
    await gw.drain()
    delivery = await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "read")
    assert delivery["external_id"] == wamid and delivery["delivered_at"] and delivery["read_at"]
    (earlier,) = [e for e in await gw.timeline(ticket["id"]) if e["id"] == other["id"]]
    assert earlier["data"]["delivery"]["status"] == "sent"  # the other reply is untouched
    assert [m["kind"] for m in await gw.timeline(ticket["id"])] == ["message_in", "message_out", "message_out"]
    events = outbox_events(gw, "message.status")
    # the late "delivered" is a redelivery of an applied status: no second event
    assert [(e["timeline_id"], e["status"]) for e in events] == [(reply["id"], "delivered"), (reply["id"], "read")]


async def test_whatsapp_failed_status_carries_the_error(gw: Gateway) -> None:
    ticket = await whatsapp_ticket(gw)
    reply = await gw.reply(ticket["id"], "Here is your invoice.")
    sent = await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "sent")
    error = {"code": 131026, "title": "Message undeliverable",
             "error_data": {"details": "Message Undeliverable."}}
    await wa(gw, wa_body(statuses=[wa_status(sent["external_id"], "failed", errors=[error])]))
    await gw.drain()
    failed = await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "failed")
    assert (failed["code"], failed["reason"]) == ("131026", "Message Undeliverable.")


async def test_whatsapp_free_text_outside_the_window_is_409_and_a_template_goes(gw: Gateway, graph) -> None:
    ticket = await whatsapp_ticket(gw)
    gw.app[keys.CLOCK].shift = timedelta(hours=25)
    resp = await gw.client.post(f"/api/v1/tickets/{ticket['id']}/replies", json={"text": "Still there?"}, headers=AUTH)
    problem = await resp.json()
    assert resp.status == 409 and "24-hour" in problem["detail"] and "template" in problem["detail"]
    reply = await gw.reply(ticket["id"], "", template={"name": "order_update", "language": "en_US",
                                                       "parameters": ["4711", "shipped"]})
    assert reply["text"] == "[template order_update (en_US)]: 4711 | shipped"
    assert reply["data"]["template"] == {"name": "order_update", "language": "en_US", "parameters": ["4711", "shipped"]}
    await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "sent")
    _, _, payload = graph.sent[-1]
    assert payload["type"] == "template"
    assert payload["template"] == {"name": "order_update", "language": {"code": "en_US"},
                                   "components": [{"type": "body", "parameters": [
                                       {"type": "text", "text": "4711"}, {"type": "text", "text": "shipped"}]}]}


async def test_whatsapp_reengagement_error_fails_without_retry(gw: Gateway, graph) -> None:
    ticket = await whatsapp_ticket(gw)
    graph.closed_windows.add("972544401243")  # the platform's view differs from ours (clock skew)
    reply = await gw.reply(ticket["id"], "Hello again")
    failed = await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] != "queued")
    assert (failed["status"], failed["code"], failed["attempts"]) == ("failed", "131047", 1)
    assert "template" in failed["reason"]


async def test_whatsapp_rate_limit_is_retried_later(gw: Gateway, graph) -> None:
    ticket = await whatsapp_ticket(gw)
    graph.fail_next(THROUGHPUT)
    reply = await gw.reply(ticket["id"], "Busy day")
    retrying = await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] != "queued")
    assert (retrying["status"], retrying["code"]) == ("retrying", "130429")
    assert datetime.fromisoformat(retrying["next_at"]) - datetime.fromisoformat(retrying["at"]) == timedelta(seconds=60)


async def test_whatsapp_image_is_downloaded_into_the_attachment_store(gw: Gateway, graph) -> None:
    graph.add_media("9001", "image/png", b"\x89PNG fake image bytes")
    image = {"from": "972544401243", "id": "wamid.IMG", "timestamp": str(T0), "type": "image",
             "image": {"id": "9001", "mime_type": "image/png", "sha256": "x", "caption": "the broken part"}}
    await wa(gw, wa_body(messages=[image]))
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    (message,) = await gw.timeline(ticket["id"])
    (attachment,) = message["attachments"]
    assert not message["data"].get("defects")
    assert message["text"] == "the broken part"
    assert attachment["sha256"] == hashlib.sha256(b"\x89PNG fake image bytes").hexdigest()
    assert attachment["size"] == 21 and attachment["storage_ref"]


# ---------------------------------------------------------------- Messenger and Instagram


def fb_body(obj: str, account: str, *events: dict) -> bytes:
    return json.dumps({"object": obj, "entry": [{"id": account, "time": T0 * 1000, "messaging": list(events)}]}).encode()


def fb_message(user: str, account: str, mid: str, text: str, **extra) -> dict:
    return {"sender": {"id": user}, "recipient": {"id": account}, "timestamp": T0 * 1000,
            "message": {"mid": mid, "text": text, **extra}}


async def fb(gw: Gateway, channel: str, body: bytes, secret: str, status: int = 200) -> None:
    await post(gw, f"/channels/{channel}", body, {"X-Hub-Signature-256": hub_sig(body, secret)}, status)


async def test_messenger_message_echo_delivery_and_reply(gw: Gateway, graph) -> None:
    body = fb_body("page", PAGE_ID, fb_message("6247348", PAGE_ID, "m_1", "Is the blue one in stock?"))
    await fb(gw, "messenger", body, "wrong-secret", 401)
    assert await gw.journal() == []
    await fb(gw, "messenger", body, FB_SECRET)
    await fb(gw, "messenger", body, FB_SECRET)  # redelivered
    await gw.drain()
    _, ticket, contact = await gw.only_ticket()
    assert {"kind": "messenger", "value": f"{PAGE_ID}:6247348"} in contact["identities"]
    # an agent answers from the Page inbox: recorded as outbound, not as the customer
    echo = {"sender": {"id": PAGE_ID}, "recipient": {"id": "6247348"}, "timestamp": T0 * 1000 + 1,
            "message": {"mid": "m_2", "text": "Yes, 3 left.", "is_echo": True, "app_id": 263902037430900}}
    await fb(gw, "messenger", fb_body("page", PAGE_ID, echo), FB_SECRET)
    await gw.drain()
    assert [(m["kind"], m["text"]) for m in await gw.timeline(ticket["id"])] == [
        ("message_in", "Is the blue one in stock?"), ("message_out", "Yes, 3 left.")]
    reply = await gw.reply(ticket["id"], "Shall I reserve one?")
    sent = await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "sent")
    kind, to, message = graph.sent[-1]
    assert (kind, to, message["text"]) == ("messenger", "6247348", "Shall I reserve one?")
    # our own reply's echo and its delivery report: no new entry, the delivery moves on
    own_echo = {"sender": {"id": PAGE_ID}, "recipient": {"id": "6247348"}, "timestamp": T0 * 1000 + 2,
                "message": {"mid": sent["external_id"], "text": "Shall I reserve one?", "is_echo": True,
                            "metadata": message["metadata"]}}
    delivered = {"sender": {"id": "6247348"}, "recipient": {"id": PAGE_ID}, "timestamp": T0 * 1000 + 3,
                 "delivery": {"mids": [sent["external_id"]], "watermark": T0 * 1000 + 2}}
    await fb(gw, "messenger", fb_body("page", PAGE_ID, own_echo, delivered), FB_SECRET)
    await gw.drain()
    assert len(await gw.timeline(ticket["id"])) == 3
    await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "delivered")
    # Messenger's read report names no message: a watermark covers every reply sent before it
    read = {"sender": {"id": "6247348"}, "recipient": {"id": PAGE_ID}, "timestamp": T0 * 1000 + 4,
            "read": {"watermark": int(datetime.now(timezone.utc).timestamp() * 1000) + 60_000}}
    await fb(gw, "messenger", fb_body("page", PAGE_ID, read), FB_SECRET)
    await gw.drain()
    await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "read")
    (echoed,) = [e for e in await gw.timeline(ticket["id"]) if e["text"] == "Yes, 3 left."]
    assert echoed["data"]["delivery"]["status"] == "read"
    statuses = [(e["timeline_id"], e["status"]) for e in outbox_events(gw, "message.status")]
    assert (reply["id"], "read") in statuses and (echoed["id"], "read") in statuses


async def test_messenger_chat_plugin_guests_are_their_own_contacts_and_answered_by_user_ref(gw: Gateway, graph) -> None:
    # A Chat Plugin guest has no PSID, only sender.user_ref (Messenger Platform
    # "messages" webhook reference): two guests were one contact "<page>:unknown".
    guests = [{"sender": {"user_ref": ref}, "recipient": {"id": PAGE_ID}, "timestamp": T0 * 1000,
               "message": {"mid": f"m_{ref}", "text": f"hello from {ref}"}} for ref in ("guest-1", "guest-2")]
    await fb(gw, "messenger", fb_body("page", PAGE_ID, *guests), FB_SECRET)
    await gw.drain()
    entries = await gw.journal()
    assert [e["status"] for e in entries] == ["processed"]  # one body, two messages
    tickets = (await gw.get("/api/v1/tickets"))["items"]
    assert len(tickets) == 2
    contacts = [await gw.get(f"/api/v1/contacts/{t['contact_id']}") for t in tickets]
    assert sorted(i["value"] for c in contacts for i in c["identities"]) == [
        f"{PAGE_ID}:user_ref:guest-1", f"{PAGE_ID}:user_ref:guest-2"]
    (first,) = [t for t, c in zip(tickets, contacts) if c["identities"][0]["value"].endswith("guest-1")]
    reply = await gw.reply(first["id"], "How can I help?")
    await reply_status(gw, first["id"], reply["id"], lambda d: d["status"] == "sent")
    assert graph.sent[-1][:2] == ("messenger", "user_ref:guest-1")


async def test_instagram_message_and_reply_on_its_own_channel(gw: Gateway, graph) -> None:
    body = fb_body("instagram", IG_ID, fb_message("99887766", IG_ID, "aWdfZAG1", "Do you ship to Lyon?"))
    await fb(gw, "instagram", body, FB_SECRET, 401)  # signed with another app's secret
    await fb(gw, "messenger", body, FB_SECRET, 400)  # the Page webhook does not take Instagram objects
    await fb(gw, "instagram", body, IG_SECRET)
    await fb(gw, "instagram", body, IG_SECRET)  # redelivered
    await gw.drain()
    _, ticket, contact = await gw.only_ticket()
    assert ticket["channels"] == ["instagram"]
    assert {"kind": "instagram", "value": f"{IG_ID}:99887766"} in contact["identities"]
    reply = await gw.reply(ticket["id"], "Yes, in 2 days.")
    await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "sent")
    assert graph.sent[-1][:2] == ("messenger", "99887766") and graph.sent[-1][2]["text"] == "Yes, in 2 days."


# ---------------------------------------------------------------- LINE


def line_body(*events: dict) -> bytes:
    return json.dumps({"destination": "Ubot", "events": list(events)}).encode()


def line_text(message_id: str, text: str, event_id: str, redelivery: bool = False) -> dict:
    return {"type": "message", "mode": "active", "timestamp": T0 * 1000, "replyToken": "rt",
            "source": {"type": "user", "userId": LINE_USER}, "webhookEventId": event_id,
            "deliveryContext": {"isRedelivery": redelivery}, "message": {"id": message_id, "type": "text", "text": text}}


async def line(gw: Gateway, body: bytes, status: int = 200, signature: str | None = None) -> None:
    await post(gw, "/channels/line/shop", body, {"X-Line-Signature": signature or line_sig(body)}, status)


async def test_line_message_redelivery_reply_and_rate_limit(gw: Gateway, line_api: LineApiStandIn) -> None:
    first = line_text("468789577898262530", "注文した商品がまだ届きません", "01HZX1")
    await line(gw, line_body(first), 401, signature=base64.b64encode(b"forged" * 6).decode())
    assert await gw.journal() == []
    await line(gw, line_body(first))
    await line(gw, line_body(first))  # the same body again: the same journal entry
    await line(gw, line_body(dict(first, deliveryContext={"isRedelivery": True})))  # flagged: same webhookEventId
    assert len(await gw.journal()) == 1
    # LINE redelivers the event (same webhookEventId, isRedelivery), this time batched with a new one
    again = dict(first, deliveryContext={"isRedelivery": True})
    await line(gw, line_body(again, line_text("468789577898262531", "追跡番号は？", "01HZX2")))
    await gw.drain()
    journal = await gw.journal()
    ticket_id = next(e["ticket_id"] for e in journal if e.get("ticket_id"))
    assert [m["text"] for m in await gw.timeline(ticket_id)] == ["注文した商品がまだ届きません", "追跡番号は？"]
    contact = await gw.get(f"/api/v1/contacts/{journal[0]['contact_id']}")
    assert {"kind": "line", "value": f"{LINE_CHANNEL}:{LINE_USER}"} in contact["identities"]
    line_api.fail_next(RATE_LIMITED)
    reply = await gw.reply(ticket_id, "確認します。")
    retrying = await reply_status(gw, ticket_id, reply["id"], lambda d: d["status"] != "queued")
    assert (retrying["status"], retrying["code"]) == ("retrying", "429")
    sent = await reply_status(gw, ticket_id, reply["id"], lambda d: d["status"] == "sent")
    assert sent["attempts"] == 2 and sent["external_id"]
    assert line_api.pushed == [{"to": LINE_USER, "messages": [{"type": "text", "text": "確認します。"}]}]


async def test_line_image_content_is_downloaded_and_templates_are_refused(gw: Gateway, line_api) -> None:
    line_api.content["468789577898262599"] = ("image/jpeg", b"\xff\xd8 jpeg bytes")
    event = line_text("468789577898262599", "", "01HZX9")
    event["message"] = {"id": "468789577898262599", "type": "image", "contentProvider": {"type": "line"}}
    await line(gw, line_body(event))
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    (message,) = await gw.timeline(ticket["id"])
    assert message["attachments"][0]["sha256"] == hashlib.sha256(b"\xff\xd8 jpeg bytes").hexdigest()
    resp = await gw.client.post(f"/api/v1/tickets/{ticket['id']}/replies", headers=AUTH,
                                json={"text": "", "template": {"name": "x", "language": "ja"}})
    assert resp.status == 400 and (await resp.json())["field"] == "$.template"


async def test_line_verify_button_stores_nothing(gw: Gateway) -> None:
    await line(gw, line_body())
    assert await gw.journal() == []


async def test_whatsapp_edit_and_deletion_update_the_original(gw: Gateway) -> None:
    await wa(gw, wa_body(messages=[wa_text("wamid.ORIG", "order 4711 is late")]))
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    edit = {"from": "972544401243", "id": "wamid.EDIT", "timestamp": str(T0 + 30), "type": "edit",
            "edit": {"original_message_id": "wamid.ORIG", "message": {"type": "text", "text": {"body": "order 4712 is late"}}}}
    await wa(gw, wa_body(messages=[edit]))
    await gw.drain()
    (message,) = await gw.timeline(ticket["id"])
    assert message["text"] == "order 4712 is late"
    revoke = {"from": "972544401243", "id": "wamid.DEL", "timestamp": str(T0 + 60), "type": "revoke",
              "revoke": {"original_message_id": "wamid.ORIG"}}
    await wa(gw, wa_body(messages=[revoke]))
    await gw.drain()
    (message,) = await gw.timeline(ticket["id"])
    assert message["text"] == "" and [e["previous_text"] for e in message["data"]["edits"]] == [
        "order 4711 is late", "order 4712 is late"]


async def test_messenger_attachment_is_downloaded(gw: Gateway, graph) -> None:
    graph.cdn["photo.jpg"] = ("image/jpeg", b"\xff\xd8 a photo of the parcel")
    event = fb_message("6247348", PAGE_ID, "m_IMG", "")
    event["message"] = {"mid": "m_IMG", "attachments": [{"type": "image", "payload": {"url": f"{graph.base}/cdn/photo.jpg"}}]}
    await fb(gw, "messenger", fb_body("page", PAGE_ID, event), FB_SECRET)
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    (message,) = await gw.timeline(ticket["id"])
    assert message["attachments"][0]["sha256"] == hashlib.sha256(b"\xff\xd8 a photo of the parcel").hexdigest()


async def test_whatsapp_reply_with_a_file_uploads_it_first(gw: Gateway, graph) -> None:
    ticket = await whatsapp_ticket(gw)
    pdf = b"%PDF-1.4 invoice"
    reply = await gw.reply(ticket["id"], "Your invoice:", attachments=[
        {"name": "invoice.pdf", "content_type": "application/pdf", "data_base64": base64.b64encode(pdf).decode()}])
    await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "sent")
    assert graph.uploads == [("invoice.pdf", pdf)]
    text, document = [payload for _, _, payload in graph.sent[-2:]]
    assert text["text"]["body"] == "Your invoice:"
    assert document["type"] == "document" and document["document"]["filename"] == "invoice.pdf"
    assert graph.media[document["document"]["id"]] == ("application/pdf", pdf)


async def test_messenger_reply_with_a_file_uploads_it_with_the_message(gw: Gateway, graph) -> None:
    await fb(gw, "messenger", fb_body("page", PAGE_ID, fb_message("6247348", PAGE_ID, "m_F", "The receipt please")),
             FB_SECRET)
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    pdf = b"%PDF-1.4 receipt"
    reply = await gw.reply(ticket["id"], "Here it is:", attachments=[
        {"name": "receipt.pdf", "content_type": "application/pdf", "data_base64": base64.b64encode(pdf).decode()}])
    await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "sent")
    assert graph.uploads == [("receipt.pdf", pdf)]  # multipart filedata on /me/messages
    text, file = graph.sent[-2:]
    assert (text[0], text[1], text[2]["text"]) == ("messenger", "6247348", "Here it is:")
    assert file[1] == "6247348" and file[2]["attachment"]["type"] == "file"


async def test_whatsapp_status_that_beats_the_send_answer_is_applied_at_settle(gw: Gateway, graph) -> None:
    ticket = await whatsapp_ticket(gw)

    async def status_first(wamid: str) -> None:  # Meta's webhook arrives before its own API answer
        await wa(gw, wa_body(statuses=[wa_status(wamid, "delivered")]))
        await gw.drain()

    graph.before_answer = status_first
    reply = await gw.reply(ticket["id"], "Racing the webhook")
    delivery = await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] != "queued")
    assert delivery["status"] == "delivered" and delivery["external_id"].startswith("wamid.standin")
    assert [e["status"] for e in outbox_events(gw, "message.status")] == ["delivered"]


async def test_messenger_reply_after_a_day_goes_with_the_human_agent_tag_and_after_a_week_is_409(gw, graph) -> None:
    await fb(gw, "messenger", fb_body("page", PAGE_ID, fb_message("6247348", PAGE_ID, "m_1", "Any news?")), FB_SECRET)
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    graph.closed_windows.add("6247348")
    gw.app[keys.CLOCK].shift = timedelta(days=2)
    reply = await gw.reply(ticket["id"], "Sorry for the wait: it shipped today.")
    await reply_status(gw, ticket["id"], reply["id"], lambda d: d["status"] == "sent")
    assert graph.messaging_types == [("RESPONSE", None), ("MESSAGE_TAG", "HUMAN_AGENT")]
    gw.app[keys.CLOCK].shift = timedelta(days=8)
    resp = await gw.client.post(f"/api/v1/tickets/{ticket['id']}/replies", json={"text": "Hello?"}, headers=AUTH)
    assert resp.status == 409 and "7 days" in (await resp.json())["detail"]
