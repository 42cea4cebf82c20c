"""WeChat/WeCom callbacks against a running gateway (real SQLite journal):
none lost (a signed body in TCP segments with pauses, chunked, or large is
read whole), none forged (timestamp window, nonces remembered with the
journal, mode-dependent ``<Encrypt>``), bad encodings answered 400 — and
every refusal stores nothing and is counted by reason."""

from __future__ import annotations

import asyncio

import pytest

from gateway import keys
from tests.connectors.wechat.support import AES_KEY, TOKEN, envelope, plain_query
from tests.e2e.conftest import Gateway

APPID, APP_SECRET = "wxe2ecallbacks1", "oa-secret-1"
PATH = f"/channels/wechat/{APPID}"


def text_xml(content: str = "你好", msg_id: str = "7001", sender: str = "oCustomer") -> str:
    return (f"<xml><ToUserName>gh_e2e</ToUserName><FromUserName>{sender}</FromUserName>"
            f"<CreateTime>1700000000</CreateTime><MsgType>text</MsgType><Content>{content}</Content>"
            f"<MsgId>{msg_id}</MsgId></xml>")


async def oa_gateway(start_gateway, wechat_api, **section) -> Gateway:
    wechat_api.oa_apps[APPID] = APP_SECRET
    account = {"appid": APPID, "app_secret": APP_SECRET, "token": TOKEN, "encoding_aes_key": AES_KEY,
               "mode": section.pop("mode", "plain")}
    return await start_gateway(wechat={"api_base": wechat_api.base, "accounts": {"main": account}, **section})


def now_ts(gw: Gateway, channel: str = "wechat", offset: int = 0) -> str:
    return str(int(gw.app[keys.CONNECTORS][channel].ctx.clock().timestamp()) + offset)


def rejected(gw: Gateway, channel: str, reason: str) -> float:
    value = gw.app[keys.METRICS].registry.get_sample_value("omnigate_rejected_total",
                                                           {"channel": channel, "reason": reason})
    return value or 0.0


async def raw_post(gw: Gateway, target: str, head: list[str], parts: list[bytes]) -> tuple[int, bytes]:
    """POST over a raw socket: the header block, then each part as its own
    write with a pause between (separate TCP segments); returns (status, body)."""
    server = gw.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write((f"POST {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      + "".join(h + "\r\n" for h in head) + "\r\n").encode())
        await writer.drain()
        for part in parts:
            await asyncio.sleep(0.05)
            writer.write(part)
            await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def target(query: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return f"{PATH}?{urlencode(query)}"


# ---------------------------------------------------------------- none lost


def _split(body: bytes, n: int) -> list[bytes]:
    size = -(-len(body) // n)
    return [body[i:i + size] for i in range(0, len(body), size)]


@pytest.mark.parametrize("shape", ["segments", "chunked", "large"])
async def test_a_signed_callback_is_read_whole_however_it_arrives(start_gateway, wechat_api, shape) -> None:
    gw = await oa_gateway(start_gateway, wechat_api)
    content = "长" * 60_000 if shape == "large" else "分段送达的消息"  # ~180 KB: past any first read
    body = text_xml(content).encode()
    query = plain_query(timestamp=now_ts(gw), nonce=f"n-{shape}")
    if shape == "chunked":
        parts = [b"%x\r\n%s\r\n" % (len(p), p) for p in _split(body, 3)] + [b"0\r\n\r\n"]
        head = ["Transfer-Encoding: chunked"]
    else:
        parts, head = _split(body, 4), [f"Content-Length: {len(body)}"]
    status, answer = await raw_post(gw, target(query), head, parts)
    assert (status, answer) == (200, b"success")
    (entry,) = await gw.journal()
    assert entry["size"] == len(body)
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    (message,) = await gw.timeline(ticket["id"])
    assert message["text"] == content


async def test_413_names_the_channel_limit(start_gateway, wechat_api) -> None:
    gw = await oa_gateway(start_gateway, wechat_api, max_body_bytes=4096)
    body = text_xml("x" * 5000).encode()
    resp = await gw.client.post(PATH, params=plain_query(timestamp=now_ts(gw)), data=body)
    assert resp.status == 413
    assert "4096" in (await resp.json())["detail"]
    assert await gw.journal() == []


# ---------------------------------------------------------------- none forged


async def test_a_redelivery_with_the_same_nonce_is_deduplicated_a_new_body_is_refused(
        start_gateway, wechat_api) -> None:
    gw = await oa_gateway(start_gateway, wechat_api)
    query = plain_query(timestamp=now_ts(gw), nonce="seen-once")
    body = text_xml().encode()
    for _ in range(3):  # WeChat's retries: same query, same body
        resp = await gw.client.post(PATH, params=query, data=body)
        assert (resp.status, await resp.text()) == (200, "success")
    # the same signed query (from a proxy log, say) with a forged message
    forged = text_xml("transfer my account", msg_id="7002", sender="oVictim").encode()
    resp = await gw.client.post(PATH, params=query, data=forged)
    assert resp.status == 403 and "nonce" in await resp.text()
    (entry,) = await gw.journal()
    assert entry["size"] == len(body)
    assert rejected(gw, "wechat", "nonce_reused") == 1


@pytest.mark.parametrize("offset", [-301, 301, -100_000])
async def test_a_timestamp_outside_the_window_is_refused(start_gateway, wechat_api, offset) -> None:
    gw = await oa_gateway(start_gateway, wechat_api)
    resp = await gw.client.post(PATH, params=plain_query(timestamp=now_ts(gw, offset=offset)),
                                data=text_xml().encode())
    assert resp.status == 403 and "window" in await resp.text()
    assert await gw.journal() == []
    assert rejected(gw, "wechat", "stale_timestamp") == 1


async def test_the_window_is_configurable(start_gateway, wechat_api) -> None:
    gw = await oa_gateway(start_gateway, wechat_api, replay_window_s=30)
    resp = await gw.client.post(PATH, params=plain_query(timestamp=now_ts(gw, offset=-60)), data=text_xml().encode())
    assert resp.status == 403


@pytest.mark.parametrize("mode", ["compatible", "safe"])
async def test_encrypted_modes_refuse_a_plain_body(start_gateway, wechat_api, mode) -> None:
    gw = await oa_gateway(start_gateway, wechat_api, mode=mode)
    resp = await gw.client.post(PATH, params=plain_query(timestamp=now_ts(gw)), data=text_xml().encode())
    assert resp.status == 400 and "<Encrypt>" in await resp.text()
    assert await gw.journal() == []
    assert rejected(gw, "wechat", "not_encrypted") == 1


async def test_compatible_mode_trusts_only_the_encrypted_part(start_gateway, wechat_api) -> None:
    gw = await oa_gateway(start_gateway, wechat_api, mode="compatible")
    ts = now_ts(gw)
    sealed, msg_signature = envelope("oa", text_xml("真的", sender="oReal"), APPID, timestamp=ts, nonce="c1")
    encrypt = sealed.decode().split("<Encrypt><![CDATA[")[1].split("]]>")[0]
    # compatible mode sends both; here the plaintext half is forged
    body = (text_xml("forged", sender="oForger")[:-6] + f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>").encode()
    query = plain_query(timestamp=ts, nonce="c1", encrypt_type="aes", msg_signature=msg_signature)
    resp = await gw.client.post(PATH, params=query, data=body)
    assert (resp.status, await resp.text()) == (200, "success")
    await gw.drain()
    _, ticket, contact = await gw.only_ticket()
    assert {"kind": "wechat_openid", "value": f"{APPID}:oReal"} in contact["identities"]
    (message,) = await gw.timeline(ticket["id"])
    assert message["text"] == "真的"


@pytest.mark.parametrize("encoding, codec", [("GBK", "gbk"), ("gb2312", "utf-8"), ("x-unknown", "utf-8")])
async def test_a_declared_encoding_expat_does_not_take_is_read(start_gateway, wechat_api, encoding, codec) -> None:
    # a relay's GBK declaration (multi-byte: expat refuses it) over GBK bytes, or over UTF-8 bytes
    # after all, or an unknown name over UTF-8 bytes: read, no longer a 400
    gw = await oa_gateway(start_gateway, wechat_api)
    body = f'<?xml version="1.0" encoding="{encoding}"?>{text_xml("你好")}'.encode(codec)
    resp = await gw.client.post(PATH, params=plain_query(timestamp=now_ts(gw)), data=body)
    assert (resp.status, await resp.text()) == (200, "success")
    await gw.drain()
    _, ticket, _contact = await gw.only_ticket()
    (message,) = await gw.timeline(ticket["id"])
    assert message["text"] == "你好"


async def test_an_encoding_that_decodes_nowhere_is_400(start_gateway, wechat_api) -> None:
    gw = await oa_gateway(start_gateway, wechat_api)
    body = f'<?xml version="1.0" encoding="x-unknown"?>{text_xml("abc")}'.encode().replace(b"abc", b"a\xffc")
    resp = await gw.client.post(PATH, params=plain_query(timestamp=now_ts(gw)), data=body)
    assert resp.status == 400 and "encoding" in await resp.text()
    assert await gw.journal() == []


# ---------------------------------------------------------------- WeCom

CORP = "wwe2ecallbacks01"


async def test_wecom_refuses_stale_and_replayed_callbacks(start_gateway, wechat_api) -> None:
    wechat_api.work_apps[(CORP, "s")] = "app"
    account = {"corp_id": CORP, "secret": "s", "token": TOKEN, "encoding_aes_key": AES_KEY, "agent_id": 1}
    gw = await start_gateway(wecom={"api_base": wechat_api.base, "accounts": {"app": account}})
    path = f"/channels/wecom/{CORP}/app"

    async def post(sealed: tuple[bytes, str], ts: str, nonce: str) -> int:
        body, sig = sealed
        resp = await gw.client.post(path, params={"msg_signature": sig, "timestamp": ts, "nonce": nonce}, data=body)
        return resp.status

    ts, old = now_ts(gw, "wecom"), now_ts(gw, "wecom", -1000)
    assert await post(envelope("wecom", text_xml(), CORP, timestamp=old, nonce="old"), old, "old") == 403
    first = envelope("wecom", text_xml(), CORP, timestamp=ts, nonce="w1")
    assert await post(first, ts, "w1") == 200
    assert await post(first, ts, "w1") == 200  # WeCom's retry (the same bytes): deduplicated
    forged = envelope("wecom", text_xml("other", msg_id="7009"), CORP, timestamp=ts, nonce="w1")
    assert await post(forged, ts, "w1") == 403
    assert len(await gw.journal()) == 1
    assert rejected(gw, "wecom", "stale_timestamp") == 1 and rejected(gw, "wecom", "nonce_reused") == 1
