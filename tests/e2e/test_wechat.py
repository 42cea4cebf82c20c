"""WeChat Official Account and WeCom end to end: corpus callbacks (plain,
AES-encrypted with wechatpy, WeCom's encrypted corpus with its meta secrets)
to one ticket each, redeliveries deduplicated, replies through the API
stand-in, and the 48-hour window refusal recorded on the reply."""

from __future__ import annotations

import pytest

from tests.clock import BUSINESS_HOURS
from tests.connectors.wechat.support import AES_KEY, TOKEN, envelope, plain_query
from gateway import keys
from tests.corpus import Row, require_corpus, rows
from tests.e2e.conftest import Gateway
from tests.gateway.conftest import AUTH

APPID, APP_SECRET = "wxe2eofficial01", "oa-secret-1"
WORK_SECRET = "work-secret-1"


def corpus(name: str) -> Row:
    require_corpus()
    (row,) = [r for r in rows("wechat") if r.path == f"wechat/{name}"]
    return row


@pytest.fixture
async def oa(start_gateway, wechat_api) -> Gateway:
    wechat_api.oa_apps[APPID] = APP_SECRET
    account = {"appid": APPID, "app_secret": APP_SECRET, "token": TOKEN, "encoding_aes_key": AES_KEY,
               "mode": "plain"}  # plain mode: plain bodies taken, an <Encrypt> still opened
    return await start_gateway(wechat={"api_base": wechat_api.base, "accounts": {"main": account}})


def signed_now(gw: Gateway, channel: str = "wechat") -> dict[str, str]:
    """A timestamp (and a nonce) as WeChat would sign them now, by the gateway's clock."""
    now = gw.app[keys.CONNECTORS][channel].ctx.clock()
    return {"timestamp": str(int(now.timestamp())), "nonce": "e2e-nonce-1"}


async def callback(gw: Gateway, path: str, query: dict, body: bytes) -> None:
    resp = await gw.client.post(path, params=query, data=body)
    assert (resp.status, await resp.text()) == (200, "success")


async def check_one_ticket(gw: Gateway, identity: dict, text: str) -> dict:
    entry, ticket, contact = await gw.only_ticket()
    assert identity in contact["identities"]
    (message,) = await gw.timeline(ticket["id"])
    assert (message["kind"], message["text"], message["journal_id"]) == ("message_in", text, entry["id"])
    return ticket


@pytest.mark.clock(BUSINESS_HOURS)  # asserts every send: the evening's opening-hours reply aside
@pytest.mark.parametrize("safe_mode", [False, True], ids=["plain", "aes"])
async def test_oa_text_to_ticket_redelivery_and_reply(oa: Gateway, wechat_api, safe_mode: bool) -> None:
    xml = corpus("wechatpy_oa_text_message.xml").read()
    if safe_mode:  # what WeChat sends in 安全模式: the corpus message encrypted for this account
        body, msg_signature = envelope("oa", xml.decode(), APPID, **signed_now(oa))
        query = plain_query(encrypt_type="aes", msg_signature=msg_signature, **signed_now(oa))
    else:
        body, query = xml, plain_query(**signed_now(oa))
    for _ in range(2):  # WeChat redelivers when it does not hear "success" within 5 s
        await callback(oa, f"/channels/wechat/{APPID}", query, body)
        await oa.drain()
    ticket = await check_one_ticket(oa, {"kind": "wechat_openid", "value": f"{APPID}:fromUser"}, "this is a test")
    reply = await oa.reply(ticket["id"], "您好，我们来处理。")
    delivery = await oa.delivery(ticket["id"], reply["id"], lambda d: d["status"] != "queued")
    assert delivery["status"] == "sent"
    (sent,) = wechat_api.sent
    assert sent.path == "/cgi-bin/message/custom/send"
    assert sent.body == {"touser": "fromUser", "msgtype": "text", "text": {"content": "您好，我们来处理。"}}


async def test_oa_reply_after_the_48_hour_window_fails_with_the_reason(oa: Gateway, wechat_api) -> None:
    await callback(oa, f"/channels/wechat/{APPID}", plain_query(**signed_now(oa)),
                   corpus("wechatpy_oa_text_message.xml").read())
    await oa.drain()
    _, ticket, _ = await oa.only_ticket()
    wechat_api.closed_windows.add("fromUser")
    reply = await oa.reply(ticket["id"], "Sorry for the delay.")
    delivery = await oa.delivery(ticket["id"], reply["id"], lambda d: d["status"] != "queued")
    assert (delivery["status"], delivery["code"], delivery["attempts"]) == ("failed", "45015", 1)
    assert "48-hour reply window is closed" in delivery["reason"]
    assert wechat_api.sent == []


@pytest.mark.clock(BUSINESS_HOURS)  # asserts every send: the evening's opening-hours reply aside
@pytest.mark.parametrize("name", ["wechatpy_work_encrypted_text.xml", "wechatpy_work_encrypted_reply.xml"])
async def test_wecom_encrypted_corpus_to_ticket_and_reply(start_gateway, wechat_api, name: str) -> None:
    row = corpus(name)
    meta, facts = row.meta, _decrypted_facts(row)
    corp = meta["corp_id"]
    wechat_api.work_apps[(corp, WORK_SECRET)] = "app"
    account = {"corp_id": corp, "secret": WORK_SECRET, "token": meta["token"],
               "encoding_aes_key": meta["encoding_aes_key"], "agent_id": 1}
    # a corpus payload was signed long ago: open the timestamp window wide enough to take it
    gw = await start_gateway(wecom={"api_base": wechat_api.base, "accounts": {"app": account},
                                    "replay_window_s": 100 * 365 * 86400})
    query = meta.get("query") or {"msg_signature": facts["MsgSignature"], "timestamp": facts["TimeStamp"],
                                  "nonce": facts["Nonce"]}
    for _ in range(2):
        await callback(gw, f"/channels/wecom/{corp}/app", query, row.read())
        await gw.drain()
    user = facts["FromUserName"]
    ticket = await check_one_ticket(gw, {"kind": "wecom_userid", "value": f"{corp}:{user}"}, facts["Content"])
    reply = await gw.reply(ticket["id"], "收到")
    delivery = await gw.delivery(ticket["id"], reply["id"], lambda d: d["status"] != "queued")
    assert delivery["status"] == "sent" and delivery["external_id"] == "app-sent-1"
    (sent,) = wechat_api.sent
    assert sent.path == "/cgi-bin/message/send"
    assert sent.body == {"touser": user, "msgtype": "text", "agentid": 1, "text": {"content": "收到"}}


def _decrypted_facts(row: Row) -> dict[str, str]:
    """Fields of the meta's ``decrypted_xml`` (the expected plaintext), plus the
    envelope's own signature fields for the payload that carries them."""
    from connectors.wechat.safexml import parse_xml

    fields = {k: str(v) for k, v in parse_xml(row.meta["decrypted_xml"]).items()}
    fields.update({k: str(v) for k, v in parse_xml(row.read()).items() if k in ("MsgSignature", "TimeStamp", "Nonce")})
    return fields



async def test_oa_reply_after_the_48_hour_window_is_refused_at_post_time(oa: Gateway, wechat_api) -> None:
    import sqlite3

    await callback(oa, f"/channels/wechat/{APPID}", plain_query(**signed_now(oa)),
                   corpus("wechatpy_oa_text_message.xml").read())
    await oa.drain()
    _, ticket, _ = await oa.only_ticket()
    # what the store knows: the customer last wrote 49 hours ago
    with sqlite3.connect(oa.app[keys.STORE].path) as conn:
        conn.execute("UPDATE timeline SET at = at - ? WHERE kind = 'message_in'", (49 * 3600 * 1000,))
    resp = await oa.client.post(f"/api/v1/tickets/{ticket['id']}/replies", json={"text": "Sorry for the delay."},
                                headers=AUTH)
    assert resp.status == 409
    problem = await resp.json()
    assert "48-hour reply window is closed" in problem["detail"] and "45015" in problem["detail"]
    assert [e for e in await oa.timeline(ticket["id"]) if e["kind"] == "message_out"] == []
    assert wechat_api.sent == []
