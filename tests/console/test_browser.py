"""The console in a real browser (Debian's chromium through Playwright; never
a downloaded browser): the issue's flow in zh-CN and in English.

An agent signs in with their token, finds the customer's ticket in their
queue by keyboard, sees the WeChat message and the email of the same customer
on one timeline with the routing and assignment reasons, replies (the
composer names the WeChat account) and sees the reply reach the WeChat
stand-in with its delivery status, adds a note mentioning a colleague,
changes the status, and sees a new Telegram message appear without a reload;
an agent of another team gets the 403 page for that ticket. axe-core
(vendored, tests/console/vendor) finds no serious or critical violation on
the queue, the ticket and the 403 pages. Screenshots go to
``test-artifacts/console/`` (git-ignored; CI keeps them as artefacts).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import aiosmtplib
import pytest

from gateway import keys
from gateway.app import create_app
from gateway.config import load
from tests.clock import BUSINESS_HOURS
from tests.connectors.email.conftest import listening
from tests.connectors.wechat.support import TOKEN as WX_TOKEN
from tests.connectors.wechat.support import plain_query
from tests.console.conftest import agent_token, console_env
from tests.gateway.conftest import AUTH, drain
from tests.standins.telegram_api import TelegramApiStandIn
from tests.standins.wechat_api import WeChatApiStandin

pytestmark = [pytest.mark.integration, pytest.mark.clock(BUSINESS_HOURS)]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "console"
AXE = Path(__file__).parent / "vendor" / "axe-4.10.2.min.js"
APPID, APP_SECRET = "wxconsoleoa01", "oa-secret-console"
BOT_TOKEN, TG_SECRET = "2222222:console-bot-token", "console-secret-token"
MAILBOX = "support@example.com"
CUSTOMER_OPENID = "oCustomerLi"
PATIENCE_MS = 30_000  # a safety net against a hung test, not a timing assertion


@pytest.fixture(scope="module")
def browser_available() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is missing (scripts/test installs Debian's chromium)")


async def _serve(aiohttp_server, api):
    server = await aiohttp_server(api.app(), host="127.0.0.1")
    api.base = str(server.make_url("")).rstrip("/")
    return api


def wechat_text(content: str, msg_id: int, now: int, openid: str = CUSTOMER_OPENID) -> bytes:
    return (f"<xml><ToUserName><![CDATA[gh_console]]></ToUserName><FromUserName><![CDATA[{openid}]]>"
            f"</FromUserName><CreateTime>{now}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>").encode()


def telegram_update(update_id: int, text: str, now: int) -> bytes:
    user = {"id": 7001, "is_bot": False, "first_name": "Lei", "last_name": "Li", "language_code": "zh-hans"}
    return json.dumps({"update_id": update_id, "message": {
        "message_id": update_id, "from": user, "chat": {"id": 7001, "type": "private", "first_name": "Lei"},
        "date": now, "text": text}}).encode()


class World:
    """The running gateway, its stand-ins, and the customer's facts."""

    def __init__(self, client, wechat, telegram, smtp_port) -> None:
        self.client, self.wechat, self.telegram, self.smtp_port = client, wechat, telegram, smtp_port
        self.app = client.app

    @property
    def base(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    def now(self) -> int:
        return int(self.app[keys.CLOCK]().timestamp())

    async def wechat_message(self, text: str, msg_id: int, openid: str = CUSTOMER_OPENID) -> None:
        now = str(self.now())
        resp = await self.client.post(f"/channels/wechat/{APPID}", params=plain_query(timestamp=now, nonce=f"n{msg_id}"),
                                      data=wechat_text(text, msg_id, self.now(), openid))
        assert (resp.status, await resp.text()) == (200, "success")
        await drain(self.app)

    async def telegram_message(self, text: str, update_id: int) -> None:
        resp = await self.client.post("/channels/telegram/support", data=telegram_update(update_id, text, self.now()),
                                      headers={"X-Telegram-Bot-Api-Secret-Token": TG_SECRET,
                                               "Content-Type": "application/json"})
        assert resp.status == 200, await resp.text()
        await drain(self.app)

    async def email(self, subject: str, text: str) -> None:
        before = len((await self.get("/api/v1/journal"))["items"])
        raw = (f"From: Li Lei <li.lei@example.cn>\r\nTo: {MAILBOX}\r\nSubject: {subject}\r\n"
               f"Message-ID: <console-{before}@example.cn>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
               f"Date: Tue, 1 Dec 2026 10:00:00 +0800\r\n\r\n{text}\r\n").encode()
        await aiosmtplib.send(raw, sender="li.lei@example.cn", recipients=[MAILBOX], hostname="127.0.0.1",
                              port=self.smtp_port)
        deadline = time.monotonic() + 30
        while len((await self.get("/api/v1/journal"))["items"]) == before:
            assert time.monotonic() < deadline, "the mail never reached the journal"
            import asyncio

            await asyncio.sleep(0.05)
        await drain(self.app)

    async def get(self, path: str) -> dict:
        resp = await self.client.get(path, headers=AUTH)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def contact_of(self, kind: str, value: str) -> str:
        found = await self.get(f"/api/v1/contacts?kind={kind}&value={value}")
        return found["items"][0]["id"]


@pytest.fixture
async def world(aiohttp_client, aiohttp_server, tmp_path, gateway_clock, unused_tcp_port_factory, browser_available):
    wechat = await _serve(aiohttp_server, WeChatApiStandin())
    wechat.oa_apps[APPID] = APP_SECRET
    telegram = await _serve(aiohttp_server, TelegramApiStandIn())
    telegram.bot = telegram.add_bot(BOT_TOKEN, "support_bot")
    smtp_port = unused_tcp_port_factory()
    sections = {
        "wechat": {"api_base": wechat.base, "accounts": {"main": {"appid": APPID, "app_secret": APP_SECRET,
                                                                  "token": WX_TOKEN, "mode": "plain"}}},
        "telegram": {"api_base": telegram.base, "bots": {"support": {"token": BOT_TOKEN, "secret_token": TG_SECRET,
                                                                     "mode": "webhook"}}},
        "email": {"smtp": {"listen": f"127.0.0.1:{smtp_port}", "mailboxes": {"support": MAILBOX}}},
    }
    app = create_app(load(None, environ=console_env(tmp_path), flags=sections), clock=gateway_clock)
    client = await aiohttp_client(app, server_kwargs={"host": "127.0.0.1"})
    await listening(smtp_port)
    return World(client, wechat, telegram, smtp_port)


@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


async def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def axe_check(page, where: str) -> None:
    """No serious or critical axe-core violation (labels, contrast, names, structure…)."""
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    bad = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in result["violations"]
           if v["impact"] in ("serious", "critical")]
    assert bad == [], f"{where}: {bad}"


async def tab_to(page, selector: str, limit: int = 80) -> None:
    """Press Tab until ``selector`` has the focus (keyboard only)."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        if await page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


async def sign_in(context, base: str, token: str):
    page = await context.new_page()
    page.set_default_timeout(PATIENCE_MS)
    await page.goto(f"{base}/console/login")
    await page.fill("#token", token)
    await page.keyboard.press("Enter")
    await page.wait_for_url("**/console/queue")
    return page


TEXTS = {
    "zh-CN": {"locale": "zh-CN", "tz": "Asia/Shanghai", "local": "2026-12-01 11:", "via": "将通过 微信", "sent": "已发送", "status": "等待客户", "forbidden": "你无权打开此页面",
              "routed": "由规则 billing-refund 路由", "assigned": "分配给 李雷", "mine": "我的工单", "teams": "我的团队"},
    "en": {"locale": "en-US", "tz": "Europe/Berlin", "local": "2026-12-01 04:", "via": "Leaves through WeChat", "sent": "sent", "status": "Pending",
           "forbidden": "You may not open this page", "routed": "routed by rule billing-refund",
           "assigned": "assigned to 李雷", "mine": "My tickets", "teams": "My teams"},
}


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
async def test_the_agents_flow_in_a_real_browser(world: World, browser, lang: str) -> None:
    x = TEXTS[lang]
    # the customer writes on WeChat and by email (both about a refund), then once on Telegram
    await world.wechat_message("你好，我要退款，订单 20261201-001 重复扣款了", 9001)
    await world.email("申请退款", "订单 20261201-001 重复扣款，请退款。")
    await world.telegram_message("我在 Telegram 上也问一下", 1)
    tickets = (await world.get("/api/v1/tickets"))["items"]
    wx_ticket = next(t for t in tickets if t["channels"] == ["wechat"])
    assert wx_ticket["team"] == "billing"
    # the three identities are one customer: a lead merges them (the email one in the console below)
    wx_contact = wx_ticket["contact_id"]
    tg_contact = await world.contact_of("telegram", "7001")
    mail_contact = await world.contact_of("email", "li.lei@example.cn")
    resp = await world.client.post(f"/api/v1/contacts/{tg_contact}/merge", json={"into": wx_contact}, headers=AUTH)
    assert resp.status == 200, await resp.text()
    # the Telegram ticket went to the social-media team (the shipped rules): billing takes it over
    tg_ticket = next(t for t in tickets if t["channels"] == ["telegram"])
    resp = await world.client.patch(f"/api/v1/tickets/{tg_ticket['id']}", json={"team": "billing"}, headers=AUTH)
    assert resp.status == 200, await resp.text()
    # assign the WeChat ticket to 李雷 (a lead of billing) the way a lead would
    resp = await world.client.patch(f"/api/v1/tickets/{wx_ticket['id']}", json={"assignee": "a-lilei"}, headers=AUTH)
    assert resp.status == 200, await resp.text()

    lead_token = await agent_token(world.app, "a-lilei", "lead")
    context = await browser.new_context(locale=x["locale"], viewport={"width": 1280, "height": 800},
                                        timezone_id=x["tz"], bypass_csp=True)
    page = await sign_in(context, world.base, lead_token)
    await page.get_by_role("link", name=x["mine"]).first.wait_for()
    await shot(page, f"{lang}-queue")
    await axe_check(page, "queue")
    # the team queue takes a new ticket without a reload
    await page.get_by_role("link", name=x["teams"]).click()
    await page.wait_for_url("**/console/queue?view=teams")
    await page.locator("#live.on").wait_for()
    rows_before = await page.locator("a.ticket-link").count()
    await page.evaluate("() => { window.__noReload = 1; }")
    await world.wechat_message("另一位客户：退款还没到账", 9100, openid="oAnotherCustomer")
    await page.locator("a.ticket-link").nth(rows_before).wait_for()
    assert await page.evaluate("() => window.__noReload") == 1
    await page.goto(f"{world.base}/console/queue")

    # keyboard only: from the queue to the ticket
    await tab_to(page, f'a.ticket-link[href="/console/tickets/{wx_ticket["number"]}"]')
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"**/console/tickets/{wx_ticket['number']}")

    # merge the email contact in through the console
    await page.fill("#merge-other", mail_contact)
    await page.click("form[action$='/merge'] button[type=submit]")
    await page.wait_for_url(f"**/console/tickets/{wx_ticket['number']}")
    timeline = page.locator("#timeline")
    await timeline.get_by_text("你好，我要退款").wait_for()
    await timeline.get_by_text("订单 20261201-001 重复扣款，请退款。").wait_for()  # the email, same timeline
    await timeline.locator(".chan", has_text="WeChat" if lang == "en" else "微信").first.wait_for()
    await timeline.locator(".reason", has_text=x["routed"]).first.wait_for()
    reasons = await timeline.locator(".reason").all_inner_texts()
    assert any("退款" in r for r in reasons if x["routed"] in r), reasons
    await timeline.locator(".reason", has_text=x["assigned"]).first.wait_for()
    assert x["via"] in await page.locator("#via").inner_text()
    # dates in the agent's time zone (the browser's, given at sign-in): 11:00 in Shanghai is 04:00 in Berlin
    first_time = await timeline.locator("li.kind-message_in time").first.inner_text()
    assert first_time.startswith(x["local"]), first_time

    # a canned reply, found from the composer, filled in for this customer and ticket
    resp = await world.client.post("/api/v1/canned-replies", headers=AUTH, json={
        "name": "退款受理", "text": "{contact_name}，工单 {ticket_number} 的退款已受理。"})
    assert resp.status == 201, await resp.text()
    await page.fill("#canned-q", "退款")
    await page.locator(".canned-insert").first.click()
    assert await page.input_value("#text") == f"Lei Li，工单 {wx_ticket['number']} 的退款已受理。"
    await page.fill("#text", "")

    # reply by keyboard: the composer, then Send
    await tab_to(page, "#text")
    await page.keyboard.type("李先生您好，退款已提交。")
    await tab_to(page, "#send")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"**/console/tickets/{wx_ticket['number']}*")
    reply = timeline.locator("li.kind-message_out", has_text="李先生您好，退款已提交。")
    await reply.locator(".delivery-status", has_text=x["sent"]).wait_for()
    sent = [s for s in world.wechat.sent if s.path == "/cgi-bin/message/custom/send"]
    assert [s.body for s in sent] == [{"touser": CUSTOMER_OPENID, "msgtype": "text",
                                       "text": {"content": "李先生您好，退款已提交。"}}]

    # an internal note mentioning a colleague
    await page.fill("#text", "@a-hanmeimei 请复核这笔退款")
    await page.check("#internal")
    await page.click("#send")
    note = timeline.locator("li.kind-note", has_text="请复核这笔退款")
    await note.locator(".mention", has_text="@a-hanmeimei").wait_for()
    mentions = await world.get("/api/v1/agents/a-hanmeimei/mentions")
    assert len(mentions["items"]) == 1
    assert len(world.wechat.sent) == len(sent) + 0 or all(s.body["text"]["content"] != "@a-hanmeimei 请复核这笔退款"
                                                          for s in world.wechat.sent if "text" in s.body)

    # status change
    await page.select_option("#status", "pending")
    await page.click("#ticket-edit button[type=submit]")
    await page.wait_for_url(f"**/console/tickets/{wx_ticket['number']}")
    assert (await world.get(f"/api/v1/tickets/{wx_ticket['id']}"))["status"] == "pending"
    await timeline.locator("li.kind-status, li.kind-update").last.wait_for()

    # a new Telegram message appears without a reload
    await page.locator("#live.on").wait_for()
    marker = await page.evaluate("() => { window.__noReload = 1; return 1; }")
    await world.telegram_message("请问退款什么时候到账？", 2)
    await timeline.get_by_text("请问退款什么时候到账？").wait_for()
    assert await page.evaluate("() => window.__noReload") == marker  # the same document: no reload
    await shot(page, f"{lang}-ticket")
    await axe_check(page, "ticket")
    await page.set_viewport_size({"width": 390, "height": 844})
    await shot(page, f"{lang}-ticket-phone")
    assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")

    # an agent of another team cannot open it
    other = await browser.new_context(locale=x["locale"], viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page2 = await sign_in(other, world.base, await agent_token(world.app, "a-zhao"))
    resp = await page2.goto(f"{world.base}/console/tickets/{wx_ticket['number']}")
    assert resp.status == 403
    assert x["forbidden"] in await page2.locator("main").inner_text()
    assert "请问退款什么时候到账" not in await page2.content()
    await shot(page2, f"{lang}-403")
    await axe_check(page2, "403")
    await other.close()
    await context.close()
