"""Help-desk sync end to end: a real gateway (SQLite, pipeline, WeChat connector,
webhook service, outbox dispatcher) on a FakeClock, beside a desk stand-in
(tests/standins/{zammad,zendesk,freshdesk}_api.py) and the WeChat stand-in,
all on loopback."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from dataclasses import dataclass
from datetime import timezone
from typing import Any, Awaitable, Callable

import pytest

from gateway import keys
from gateway.app import create_app
from gateway.config import load
from gateway.desks.service import SYNC
from tests.clock import BUSINESS_HOURS, INSTANTS, FakeClock
from tests.connectors.wechat.support import AES_KEY, TOKEN as WX_TOKEN, plain_query
from tests.gateway.conftest import AUTH, RULES, TOKEN
from tests.standins.freshdesk_api import FreshdeskApiStandin
from tests.standins.wechat_api import WeChatApiStandin
from tests.standins.zammad_api import ZammadApiStandin
from tests.standins.zendesk_api import ZendeskApiStandin

APPID, APP_SECRET = "wxdeskofficial01", "oa-secret-desk"
DESK_TOKEN, DESK_EMAIL, HOOK_SECRET = "desk-api-token-1", "api@desk.example", "desk-hook-secret-1"
PATIENCE_S = 30.0  # a safety net against a hung test, not a timing assertion

#: per kind: the desk's status words for "solved" and "pending", and its new-ticket status
WORDS = {"zammad": {"solved": "closed", "pending": "pending reminder", "open": "open"},
         "zendesk": {"solved": "solved", "pending": "pending", "open": "open"},
         "freshdesk": {"solved": 4, "pending": 3, "open": 2}}


async def wait_for(read: Callable[[], Any], until: Callable[[Any], bool] = bool) -> Any:
    deadline = time.monotonic() + PATIENCE_S
    while True:
        value = read()
        if asyncio.iscoroutine(value):
            value = await value
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met before the deadline; last value: {value!r}")
        await asyncio.sleep(0.02)


def standin(kind: str, clock: Any) -> Any:
    if kind == "zammad":
        return ZammadApiStandin(DESK_TOKEN, clock)
    if kind == "zendesk":
        return ZendeskApiStandin(DESK_EMAIL, DESK_TOKEN, clock)
    return FreshdeskApiStandin(DESK_TOKEN, clock)


def sign_nudge(kind: str, body: bytes, clock: Any, secret: str = HOOK_SECRET) -> dict[str, str]:
    """The headers the desk's own webhook sends."""
    if kind == "zammad":
        return {"X-Hub-Signature": "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()}
    if kind == "zendesk":
        ts = clock().astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        sig = base64.b64encode(hmac.new(secret.encode(), ts.encode() + body, hashlib.sha256).digest()).decode()
        return {"X-Zendesk-Webhook-Signature": sig, "X-Zendesk-Webhook-Signature-Timestamp": ts}
    return {"X-Omnigate-Token": secret}


@dataclass
class Rig:
    kind: str
    client: Any
    app: Any
    desk: Any
    wechat: WeChatApiStandin
    clock: FakeClock
    nonce: int = 0

    @property
    def store(self) -> Any:
        return self.app[keys.STORE]

    async def wechat_message(self, text: str, msg_id: int, openid: str = "fromUser") -> None:
        xml = (f"<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
               f"<CreateTime>{int(self.clock().timestamp())}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
               f"<Content><![CDATA[{text}]]></Content><MsgId>{msg_id}</MsgId></xml>")
        self.nonce += 1
        query = plain_query(timestamp=str(int(self.clock().timestamp())), nonce=f"desk-nonce-{self.nonce}")
        resp = await self.client.post(f"/channels/wechat/{APPID}", params=query, data=xml.encode())
        assert (resp.status, await resp.text()) == (200, "success")
        await self.app[keys.WORKER].drain()

    async def nudge(self, body: bytes = b'{"ticket": {"id": 1}}', headers: dict | None = None) -> Any:
        headers = sign_nudge(self.kind, body, self.clock) if headers is None else headers
        return await self.client.post("/channels/desks/hd", data=body,
                                      headers={"Content-Type": "application/json", **headers})

    async def only_ticket(self) -> dict:
        items = (await (await self.client.get("/api/v1/journal", headers=AUTH)).json())["items"]
        tid = items[0]["ticket_id"]
        return await (await self.client.get(f"/api/v1/tickets/{tid}", headers=AUTH)).json()

    async def desk_ticket(self) -> dict:
        await wait_for(lambda: self.desk.tickets)
        (t,) = self.desk.tickets.values()
        return t

    def status_word(self, t: dict) -> Any:
        return t["state"] if self.kind == "zammad" else t["status"]


@pytest.fixture
def desk_clock() -> FakeClock:
    return FakeClock(INSTANTS[BUSINESS_HOURS].astimezone(timezone.utc))


@pytest.fixture
def make_rig(aiohttp_client, aiohttp_server, tmp_path, desk_clock) -> Callable[..., Awaitable[Rig]]:
    async def make(kind: str, *, directory: str | None = None, env_extra: dict | None = None, **desk: Any) -> Rig:
        wechat = WeChatApiStandin()
        wechat.oa_apps[APPID] = APP_SECRET
        server = await aiohttp_server(wechat.app(), host="127.0.0.1")
        wechat.base = str(server.make_url("")).rstrip("/")
        api = standin(kind, desk_clock)
        dserver = await aiohttp_server(api.app(), host="127.0.0.1")
        api.base = str(dserver.make_url("")).rstrip("/")
        section = {"kind": kind, "url": api.base, "token": DESK_TOKEN, "webhook_secret": HOOK_SECRET,
                   "allow_private": True, "timeout": "0.5s", **desk}
        if kind == "zendesk":
            section["email"] = DESK_EMAIL
        env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data"), "OMNIGATE_RULES_DIR": RULES,
               **(env_extra or {})}
        if directory is not None:
            (tmp_path / "directory.yaml").write_text(directory, encoding="utf-8")
            env["OMNIGATE_DIRECTORY"] = str(tmp_path / "directory.yaml")
            env["OMNIGATE_RULES_DIR"] = str(tmp_path / "no-rules")  # the shipped rules name teams it lacks
        account = {"appid": APPID, "app_secret": APP_SECRET, "token": WX_TOKEN, "encoding_aes_key": AES_KEY,
                   "mode": "plain"}
        config = load(None, environ=env, flags={"wechat": {"api_base": wechat.base, "accounts": {"main": account}},
                                               "desks": {"hd": section}})
        app = create_app(config, clock=desk_clock)
        client = await aiohttp_client(app)
        app[SYNC].tick_s = 0.02
        return Rig(kind, client, app, api, wechat, desk_clock)

    return make
