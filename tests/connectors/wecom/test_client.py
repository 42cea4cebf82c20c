"""The WeCom connector over HTTP: callbacks, the 微信客服 pull with its
persisted cursor, replies and media, against the loopback WeCom stand-in."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from wechatpy.enterprise.crypto import PrpCrypto

from connectors.base import Fatal, SendError
from connectors.wechat.tokens import MemoryTokenStore, TokenCache
from connectors.wecom.client import WeComConnector
from connectors.wecom.parse import parse
from routing.model import Attachment, Identity, Inbound, Outbound, Sender, ThreadHints
from tests.connectors.wechat.support import AES_KEY, NONCE, TIMESTAMP, TOKEN, MemoryContext, envelope, sign
from tests.standins.wechat_api import WeChatApiStandin

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "wecom"
SYNC = json.loads((FIXTURES / "kf_sync_msg_synthetic.json").read_text(encoding="utf-8"))
CORP, SECRET, KF = SYNC["corp_id"], "kf-secret-1", "wkSyntheticKf01"
URL = f"/channels/wecom/{CORP}/kf"
APP_TEXT = (
    f"<xml><ToUserName>{CORP}</ToUserName><FromUserName>lisi</FromUserName><CreateTime>1700000000</CreateTime>"
    "<MsgType>text</MsgType><Content>打印机坏了</Content><MsgId>77</MsgId><AgentID>1000002</AgentID></xml>"
)


@pytest.fixture
async def standin(aiohttp_server):
    api = WeChatApiStandin(work_apps={(CORP, SECRET): "kf"}, kf_messages=list(SYNC["msg_list"]))
    api.server = await aiohttp_server(api.app())
    return api


def config(api_base: str, secret: str = SECRET) -> dict:
    account = {"corp_id": CORP, "secret": secret, "token": TOKEN, "encoding_aes_key": AES_KEY, "open_kfid": KF, "agent_id": 1000002}
    return {"api_base": api_base, "accounts": {"kf": account}}


def make(ctx: MemoryContext) -> WeComConnector:
    return WeComConnector(ctx, tokens=TokenCache(MemoryTokenStore()))


@pytest.fixture
async def connector(standin):
    conn = make(MemoryContext(config(str(standin.server.make_url(""))), channel="wecom"))
    yield conn
    await conn.close()


async def serve(aiohttp_client, conn: WeComConnector):
    app = web.Application()
    app.add_routes(conn.routes())
    return await aiohttp_client(app)


@pytest.fixture
async def client(aiohttp_client, connector):
    return await serve(aiohttp_client, connector)


def signed(xml: str) -> tuple[bytes, dict[str, str]]:
    body, msg_signature = envelope("wecom", xml, CORP)
    return body, {"msg_signature": msg_signature, "timestamp": TIMESTAMP, "nonce": NONCE}


async def test_url_verification_decrypts_echostr(client):
    echostr = PrpCrypto(base64.b64decode(AES_KEY + "=")).encrypt("echo-42", CORP).decode()
    query = {"msg_signature": sign(TOKEN, TIMESTAMP, NONCE, echostr), "timestamp": TIMESTAMP, "nonce": NONCE, "echostr": echostr}
    resp = await client.get(URL, params=query)
    assert (resp.status, await resp.text()) == (200, "echo-42")
    resp = await client.get(URL, params=dict(query, msg_signature="0" * 40))
    assert resp.status == 401


async def test_a_signed_echostr_that_decodes_to_nothing_is_a_400(client):
    """``echostr=%%%`` (base64 of no bytes) with a valid msg_signature: wechatpy's
    unpadding indexes an empty plaintext — an IndexError that was a 500."""
    for echostr in ("%%%", "===="):
        query = {"msg_signature": sign(TOKEN, TIMESTAMP, NONCE, echostr), "timestamp": TIMESTAMP, "nonce": NONCE,
                 "echostr": echostr}
        resp = await client.get(URL, params=query)
        assert resp.status == 400, await resp.text()


async def test_app_message_is_journaled_under_its_msgid(client, connector):
    body, query = signed(APP_TEXT)
    resp = await client.post(URL, params=query, data=body)
    assert (resp.status, await resp.text()) == (200, "success")
    (entry,) = connector.ctx.journal
    assert (entry.account, entry.key) == ("kf", "77")
    (inbound,) = parse(entry.raw, {**entry.meta, "token": TOKEN, "encoding_aes_key": AES_KEY, "corp_id": CORP, "account": "kf"})
    assert (inbound.sender.kind, inbound.sender.value, inbound.text) == ("wecom_userid", f"{CORP}:lisi", "打印机坏了")


async def test_unsigned_or_plain_callbacks_are_refused(client, connector):
    body, query = signed(APP_TEXT)
    assert (await client.post(URL, params={"timestamp": "1", "nonce": "2"}, data=body)).status == 401
    forged = await client.post(URL, params=dict(query, msg_signature="0" * 40), data=body)
    assert forged.status == 401 and (await forged.json())["field"] == "msg_signature"
    plain = await client.post(URL, params=query, data=APP_TEXT.encode())
    assert plain.status == 400 and (await plain.json())["field"] == "body"
    assert (await client.post("/channels/wecom/wwother/kf", params=query, data=body)).status == 404
    assert connector.ctx.journal == []


async def test_kf_notification_pulls_each_message_into_the_journal(client, connector, standin):
    body, query = signed((FIXTURES / "kf_msg_or_event_synthetic.xml").read_text(encoding="utf-8"))
    resp = await client.post(URL, params=query, data=body)
    assert (resp.status, await resp.text()) == (200, "success")
    msgids = [m["msgid"] for m in SYNC["msg_list"]]
    assert [e.key for e in connector.ctx.journal] == msgids
    assert all(e.account == "kf" and e.meta["source"] == "kf/sync_msg" for e in connector.ctx.journal)
    assert msgspec.json.decode(connector.ctx.journal[1].raw) == SYNC["msg_list"][1]
    # paged with the callback's token, the cursor saved after each durable page
    assert [c["cursor"] for c in standin.sync_calls] == ["", "c2", "c4", "c6", "c8"]
    assert {c["token"] for c in standin.sync_calls} == {"ENCSyntheticSyncToken"}
    assert connector.ctx.state == {f"kf_cursor:kf:{KF}": "c10"}


async def test_cursor_survives_a_restart(aiohttp_client, connector, standin):
    await connector.pull("kf", KF)
    ctx = connector.ctx
    standin.kf_messages.append(dict(SYNC["msg_list"][1], msgid="kfmsg-0011", send_time=1700000111))
    restarted = make(ctx)  # a new process: same journal and state store
    try:
        assert await restarted.pull("kf", KF) == 1
    finally:
        await restarted.close()
    assert [e.key for e in ctx.journal][-2:] == ["kfmsg-0010", "kfmsg-0011"]
    assert len(ctx.journal) == 11


async def test_failed_pull_answers_503_so_wecom_calls_again(aiohttp_client, standin):
    conn = make(MemoryContext(config(str(standin.server.make_url("")), secret="wrong"), channel="wecom"))
    try:
        client = await serve(aiohttp_client, conn)
        body, query = signed((FIXTURES / "kf_msg_or_event_synthetic.xml").read_text(encoding="utf-8"))
        resp = await client.post(URL, params=query, data=body)
        assert resp.status == 503 and conn.ctx.journal == [] and conn.ctx.state == {}
    finally:
        await conn.close()


def kf_reply(to: Identity, session_id: str | None = None) -> Outbound:
    return Outbound(id="o-1", ticket_id="t-1", channel="wecom", account="kf", to=to, text="已为您办理退货", thread=ThreadHints(session_id=session_id))


async def test_reply_to_a_customer_goes_through_kf_send_msg(connector, standin):
    result = await connector.send(kf_reply(Identity("wecom_external", "wmSyntheticCustomer01"), f"{KF}:wmSyntheticCustomer01"))
    (sent,) = standin.sent
    assert sent.path == "/cgi-bin/kf/send_msg"
    assert sent.body == {"touser": "wmSyntheticCustomer01", "open_kfid": KF, "msgtype": "text", "text": {"content": "已为您办理退货"}}
    assert result.external_id == "kf-sent-1"


async def test_reply_to_an_employee_goes_through_the_app(connector, standin):
    await connector.send(kf_reply(Identity("wecom_userid", f"{CORP}:lisi")))
    (sent,) = standin.sent
    assert (sent.path, sent.body["touser"], sent.body["agentid"]) == ("/cgi-bin/message/send", "lisi", 1000002)


async def test_kf_message_limit_is_a_send_error(connector, standin):
    standin.limited.add("wmSyntheticCustomer01")
    with pytest.raises(SendError, match="must write again") as err:
        await connector.send(kf_reply(Identity("wecom_external", "wmSyntheticCustomer01")))
    assert err.value.code == "95001"


async def test_expired_token_is_refreshed_once(connector, standin):
    await connector.send(kf_reply(Identity("wecom_external", "wmSyntheticCustomer01")))
    standin.revoke_tokens()  # 40014 invalid access_token
    await connector.send(kf_reply(Identity("wecom_external", "wmSyntheticCustomer01")))
    assert standin.tokens_issued == 2 and len(standin.sent) == 2


async def test_fetch_media(connector, standin):
    standin.media["kf-image-media-1"] = (b"jpeg-bytes", "image/jpeg")
    att = Attachment(name=None, content_type="image/jpeg", size=0, sha256="", url="kf-image-media-1")
    inbound = Inbound(channel="wecom", account="kf", external_id="kfmsg-0003", kind="message", sender=Sender("wecom_external", "wm1"), attachments=[att])
    await connector.fetch_media(inbound)
    assert (att.data, att.size, inbound.defects) == (b"jpeg-bytes", 10, [])


def test_bad_config_is_fatal():
    section = config("http://127.0.0.1:1")
    del section["accounts"]["kf"]["encoding_aes_key"]
    with pytest.raises(Fatal, match="encoding_aes_key"):
        make(MemoryContext(section))


# ---------------------------------------------------------------- can_send (409 before queueing)


def _kf_outbound(kind: str = "wecom_external") -> Outbound:
    return Outbound(id="o1", ticket_id="t1", channel="wecom", account="kf", to=Identity(kind, "wmCustomer"), text="hi")


@pytest.mark.parametrize(("facts", "refused"), [
    ({"last_inbound_at": T0, "sent_since_inbound": 4, "now": T0 + timedelta(hours=47)}, None),
    ({"last_inbound_at": T0, "sent_since_inbound": 5, "now": T0 + timedelta(hours=1)}, "5 messages"),
    ({"last_inbound_at": T0, "sent_since_inbound": 0, "now": T0 + timedelta(hours=49)}, "48 hours"),
    ({"last_inbound_at": None, "sent_since_inbound": 0, "now": T0}, None),  # the store knows nothing: let WeCom judge
])
async def test_kf_replies_past_the_limits_the_store_knows_are_refused(standin, facts, refused) -> None:
    conn = WeComConnector(MemoryContext(config(str(standin.server.make_url(""))), channel="wecom"),
                          tokens=TokenCache(MemoryTokenStore()))
    try:
        reason = conn.can_send(_kf_outbound(), facts)
        assert (reason is None) if refused is None else (refused in reason)
        # an employee (wecom_userid) has no such limit
        assert conn.can_send(_kf_outbound("wecom_userid"), facts) is None
    finally:
        await conn.close()
