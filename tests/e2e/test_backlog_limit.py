"""The optional backlog limit (``pipeline.backlog_limit``) end to end: with
the backlog at the limit the API channel answers 503 + ``Retry-After``, while
WeChat and Telegram callbacks are still taken (their platforms give up
within seconds: a refusal there loses the message)."""

from __future__ import annotations

from gateway import keys
from gateway.app import create_app
from gateway.config import load
from tests.connectors.wechat.support import TOKEN as WX_TOKEN, plain_query
from tests.gateway.conftest import AUTH, RULES, TOKEN

APPID = "wxbacklog0000001"
TG_SECRET = "tg-secret-backlog"


def wechat_text(n: int, ts: str) -> bytes:
    return (f"<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[o{n}]]></FromUserName>"
            f"<CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[订单 {n} 还没有到]]></Content><MsgId>{10**15 + n}</MsgId></xml>").encode()


def telegram_update(n: int) -> dict:
    chat = {"id": 5000 + n, "type": "private", "first_name": "T"}
    return {"update_id": n, "message": {"message_id": n, "date": 1700000000, "text": f"order {n} is late",
                                        "chat": chat, "from": {"id": 5000 + n, "is_bot": False, "first_name": "T"}}}


async def post_wechat_and_telegram(client, n: int, ts: str) -> None:
    """Send WeChat text n and Telegram update n; both are taken (never refused for load)."""
    resp = await client.post(f"/channels/wechat/{APPID}", params=plain_query(timestamp=ts, nonce=f"n{n}"),
                             data=wechat_text(n, ts))
    assert (resp.status, await resp.text()) == (200, "success")
    resp = await client.post("/channels/telegram/main", json=telegram_update(n),
                             headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET})
    assert resp.status == 200


async def test_at_the_limit_api_is_refused_with_retry_after_and_wechat_telegram_never(
        aiohttp_client, tmp_path, gateway_clock, wechat_api, telegram_api):
    env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data"), "OMNIGATE_RULES_DIR": RULES,
           # an ingest-only node: nothing drains the backlog during the test
           "OMNIGATE_PIPELINE__WORKERS": "0", "OMNIGATE_PIPELINE__BACKLOG_LIMIT": "1"}
    sections = {
        "wechat": {"api_base": wechat_api.base, "accounts": {"main": {
            "appid": APPID, "app_secret": "s", "token": WX_TOKEN, "mode": "plain"}}},
        "telegram": {"api_base": telegram_api.base, "bots": {"main": {
            "token": "123456:backlog-test", "secret_token": TG_SECRET, "mode": "webhook"}}},
    }
    app = create_app(load(None, environ=env, flags=sections), clock=gateway_clock)
    client = await aiohttp_client(app)
    msg = {"external_id": "a1", "sender": {"kind": "email", "value": "a@example.com"}, "text": "hello"}
    assert (await client.post("/channels/api/messages", json=msg, headers=AUTH)).status == 202
    assert app[keys.INGEST].backlog_full()

    ts = str(int(gateway_clock().timestamp()))
    for n in range(3):  # over the limit, WeChat is answered "success" and journaled
        await post_wechat_and_telegram(client, n, ts)

    msg["external_id"] = "a2"
    resp = await client.post("/channels/api/messages", json=msg, headers=AUTH)
    assert resp.status == 503 and int(resp.headers["Retry-After"]) == 30
    entries = await app[keys.STORE].journal_list(status="pending", limit=100)
    assert sorted(e.channel for e in entries) == ["api"] + ["telegram"] * 3 + ["wechat"] * 3
