"""The Official Account connector over HTTP: its routes driven by aiohttp's
test client, its API calls answered by the loopback WeChat stand-in."""

from __future__ import annotations

import hashlib

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from connectors.base import Fatal, SendError
from connectors.wechat.client import WeChatConnector
from connectors.wechat.envelope import DecryptionFailed
from connectors.wechat.parse import parse
from connectors.wechat.tokens import MemoryTokenStore, TokenCache
from routing.model import Attachment, Identity, Inbound, Outbound, Sender
from tests.connectors.wechat.support import AES_KEY, TOKEN, MemoryContext, envelope, plain_query
from tests.standins.wechat_api import WeChatApiStandin

APPID, SECRET = "wxsyntheticapp01", "app-secret-1"
URL = f"/channels/wechat/{APPID}"
TEXT = (
    "<xml><ToUserName>gh_synthetic01</ToUserName><FromUserName>oUser1</FromUserName>"
    "<CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>你好</Content><MsgId>42</MsgId></xml>"
)


@pytest.fixture
async def standin(aiohttp_server):
    api = WeChatApiStandin(oa_apps={APPID: SECRET})
    api.server = await aiohttp_server(api.app())
    return api


def config(api_base: str, **extra) -> dict:
    account = {"appid": APPID, "app_secret": SECRET, "token": TOKEN, "encoding_aes_key": AES_KEY, "mode": "plain"}
    return {"api_base": api_base, "accounts": {"main": account}, **extra}


@pytest.fixture
async def connector(standin):
    ctx = MemoryContext(config(str(standin.server.make_url(""))))
    conn = WeChatConnector(ctx, tokens=TokenCache(MemoryTokenStore()))
    yield conn
    await conn.close()


@pytest.fixture
async def client(aiohttp_client, connector):
    app = web.Application()
    app.add_routes(connector.routes())
    return await aiohttp_client(app)


# ---------------------------------------------------------------- verification


async def test_url_verification_echoes_echostr(client):
    resp = await client.get(URL, params=plain_query(echostr="echo-123"))
    assert (resp.status, await resp.text()) == (200, "echo-123")


async def test_url_verification_with_forged_signature_is_401(client):
    resp = await client.get(URL, params=plain_query(token="forged", echostr="echo-123"))
    assert resp.status == 401


# ---------------------------------------------------------------- callbacks


async def test_signed_callback_is_journaled_then_answered_success(client, connector):
    resp = await client.post(URL, params=plain_query(openid="oUser1"), data=TEXT.encode())
    assert (resp.status, await resp.text()) == (200, "success")
    (entry,) = connector.ctx.journal
    assert (entry.account, entry.key, entry.raw) == (APPID, "42", TEXT.encode())
    assert entry.meta["query"]["openid"] == "oUser1" and entry.meta["url"] == URL
    # what the gateway will parse on replay: the same Inbound as live
    (inbound,) = parse(entry.raw, {**entry.meta, "token": TOKEN, "appid": APPID})
    assert (inbound.external_id, inbound.sender.value) == ("42", f"{APPID}:oUser1")


async def test_redelivery_is_answered_and_stored_once(client, connector):
    for _ in range(3):  # WeChat retries up to three times
        resp = await client.post(URL, params=plain_query(), data=TEXT.encode())
        assert await resp.text() == "success"
    assert len(connector.ctx.journal) == 1


async def test_event_key_is_sender_time_and_event(client, connector):
    xml = TEXT.replace("<MsgType>text</MsgType>", "<MsgType>event</MsgType><Event>subscribe</Event>").replace("<MsgId>42</MsgId>", "")
    await client.post(URL, params=plain_query(), data=xml.encode())
    assert connector.ctx.journal[0].key == "oUser1:1700000000:subscribe"


@pytest.mark.parametrize(
    "query",
    [plain_query(token="forged"), {"timestamp": "1", "nonce": "2"}],
    ids=["forged", "missing"],
)
async def test_bad_signature_is_401_and_nothing_stored(client, connector, query):
    resp = await client.post(URL, params=query, data=TEXT.encode())
    assert resp.status == 401 and (await resp.json())["field"] == "signature"
    assert connector.ctx.journal == []


async def test_doctype_is_400_and_nothing_stored(client, connector):
    xml = b'<!DOCTYPE xml [<!ENTITY e "x">]><xml><MsgType>&e;</MsgType></xml>'
    resp = await client.post(URL, params=plain_query(), data=xml)
    assert resp.status == 400 and "DOCTYPE" in await resp.text() and (await resp.json())["field"] == "body"
    assert connector.ctx.journal == []


async def test_oversize_body_is_413(client, connector):
    resp = await client.post(URL, params=plain_query(), data=b"<xml>" + b"x" * 300_000 + b"</xml>")
    assert resp.status == 413
    assert connector.ctx.journal == []


async def test_unknown_appid_is_404(client):
    resp = await client.post("/channels/wechat/wxunknown", params=plain_query(), data=TEXT.encode())
    assert resp.status == 404


async def test_journal_failure_is_503_so_wechat_retries(client, connector):
    connector.ctx.fail_ingest = True
    resp = await client.post(URL, params=plain_query(), data=TEXT.encode())
    assert resp.status == 503


async def test_safe_mode_envelope_is_journaled_under_its_msgid(client, connector):
    body, msg_signature = envelope("oa", TEXT, APPID)
    resp = await client.post(URL, params=plain_query(encrypt_type="aes", msg_signature=msg_signature), data=body)
    assert await resp.text() == "success"
    (entry,) = connector.ctx.journal
    assert entry.key == "42" and entry.raw == body
    (inbound,) = parse(entry.raw, {**entry.meta, "token": TOKEN, "encoding_aes_key": AES_KEY, "appid": APPID})
    assert inbound.text == "你好"


async def test_forged_msg_signature_is_401(client, connector):
    body, _ = envelope("oa", TEXT, APPID)
    resp = await client.post(URL, params=plain_query(encrypt_type="aes", msg_signature="0" * 40), data=body)
    assert resp.status == 401 and connector.ctx.journal == []


async def test_undecryptable_but_signed_payload_is_journaled_and_logged(client, connector):
    body, msg_signature = envelope("oa", TEXT, "wxsomeoneelse")  # encrypted for another appid
    with capture_logs() as logs:
        resp = await client.post(URL, params=plain_query(encrypt_type="aes", msg_signature=msg_signature), data=body)
    assert await resp.text() == "success"
    (entry,) = connector.ctx.journal
    assert entry.key == "sha256:" + hashlib.sha256(body).hexdigest()
    (failure,) = [e for e in logs if e["event"] == "wechat.decrypt_failed"]
    assert "not addressed to appid" in failure["reason"] and AES_KEY not in str(failure)
    with pytest.raises(DecryptionFailed):  # the pipeline's parse fails it into the journal
        parse(entry.raw, {**entry.meta, "token": TOKEN, "encoding_aes_key": AES_KEY, "appid": APPID})


# ---------------------------------------------------------------- replies


def reply(openid: str = "oUser1", text: str = "您好") -> Outbound:
    return Outbound(id="out-1", ticket_id="t-1", channel="wechat", account=APPID, to=Identity("wechat_openid", f"{APPID}:{openid}"), text=text)


async def test_reply_goes_through_custom_send_with_one_token(connector, standin):
    await connector.send(reply())
    await connector.send(reply(text="second"))
    assert [s.body for s in standin.sent] == [
        {"touser": "oUser1", "msgtype": "text", "text": {"content": "您好"}},
        {"touser": "oUser1", "msgtype": "text", "text": {"content": "second"}},
    ]
    assert standin.tokens_issued == 1


@pytest.mark.parametrize("steer", ["expire_tokens", "revoke_tokens"])
async def test_refused_token_is_refreshed_once(connector, standin, steer):
    await connector.send(reply())
    getattr(standin, steer)()  # 42001 / 40001 on the next call
    await connector.send(reply(text="after"))
    assert standin.tokens_issued == 2 and len(standin.sent) == 2


async def test_closed_48_hour_window_is_a_clear_send_error(connector, standin):
    standin.closed_windows.add("oUser1")
    with pytest.raises(SendError, match="48-hour reply window is closed") as err:
        await connector.send(reply())
    assert (err.value.code, err.value.retryable) == ("45015", False)


async def test_message_limit_is_a_send_error(connector, standin):
    standin.limited.add("oUser1")
    with pytest.raises(SendError) as err:
        await connector.send(reply())
    assert err.value.code == "45047"


async def test_reply_to_an_unknown_appid_is_refused(connector):
    out = reply()
    out.to = Identity("wechat_openid", "wxother:oUser1")
    with pytest.raises(SendError, match="no configured official account"):
        await connector.send(out)


# ---------------------------------------------------------------- media


def media_inbound(*media_ids: str) -> Inbound:
    atts = [Attachment(name=None, content_type="image/jpeg", size=0, sha256="", url=m) for m in media_ids]
    return Inbound(channel="wechat", account=APPID, external_id="42", kind="message", sender=Sender("wechat_openid", f"{APPID}:oUser1"), attachments=atts)


async def test_fetch_media_downloads_images_and_videos(connector, standin):
    standin.media["img-1"] = (b"\x89PNG-bytes", "image/png")
    standin.videos["vid-1"] = b"mp4-bytes"
    inbound = media_inbound("img-1", "vid-1")
    await connector.fetch_media(inbound)
    image, video = inbound.attachments
    assert (image.data, image.size, image.content_type, image.name) == (b"\x89PNG-bytes", 10, "image/png", "img-1.bin")
    assert image.sha256 == hashlib.sha256(b"\x89PNG-bytes").hexdigest()
    assert (video.data, video.content_type) == (b"mp4-bytes", "video/mp4")
    assert inbound.defects == [] and standin.tokens_issued == 1


async def test_failed_media_is_a_defect(connector):
    inbound = media_inbound("missing")
    await connector.fetch_media(inbound)
    assert inbound.attachments[0].data is None
    assert inbound.defects == ["media missing not downloaded: /cgi-bin/media/get: errcode 40007: invalid media_id"]


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "section, reason",
    [
        (config("http://127.0.0.1:1", verbose=True), "unknown field `verbose`"),
        ({"accounts": {"main": {"appid": APPID, "token": TOKEN}}}, "app_secret"),
        (config("http://127.0.0.1:1") | {"accounts": {"main": {"appid": APPID, "app_secret": "s", "token": "t", "encoding_aes_key": "short"}}}, "43 base64"),
        ({"accounts": {}}, "accounts is empty"),
    ],
)
def test_bad_config_is_fatal(section, reason):
    with pytest.raises(Fatal, match=reason):
        WeChatConnector(MemoryContext(section))


@pytest.mark.parametrize("timestamp", ["9" * 400, "1e9", "-5", "１４１１５２５９０３"])
async def test_a_signed_but_absurd_timestamp_is_refused_not_a_crash(client, connector, timestamp):
    resp = await client.post(URL, params=plain_query(timestamp=timestamp), data=TEXT.encode())
    assert resp.status == 403 and "Unix time" in (await resp.json())["detail"]
    assert (await resp.json())["field"] == "timestamp"
    assert connector.ctx.journal == [] and connector.ctx.refusals == ["stale_timestamp"]
