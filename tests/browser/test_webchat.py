"""The webchat widget in a real browser against a real daemon: a visitor
on a host page chats with an agent (an API client on the agent live socket,
/api/v1/live/webchat; the console's Live chats page: test_console_chats.py), reloads,
survives a daemon restart mid-chat, and a signed logged-in visitor lands on
their existing contact."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from connectors.webchat.parse import sign
from tests.browser.conftest import SECRET
from tests.gateway.test_crash import START
from tests.gateway.conftest import AUTH

pytestmark = pytest.mark.integration
DEADLINE_S = 120


class Agent:
    """An agent on the live socket, replying through the replies API."""

    def __init__(self, base: str):
        self.base = base
        self.events: list[dict] = []
        self._new = asyncio.Event()

    async def __aenter__(self):
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(f"{self.base}/api/v1/live/webchat", headers=AUTH)
        self.task = asyncio.create_task(self._read())
        await self.wait("snapshot")
        return self

    async def _read(self):
        async for msg in self.ws:
            self.events.append(json.loads(msg.data))
            self._new.set()

    async def wait(self, kind: str, timeout: float = 30, pred=None, **match) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e["type"] == kind and all(e.get(k) == v for k, v in match.items()) and (pred is None or pred(e)):
                    return e
            self._new.clear()
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} {match} event; got {[e['type'] for e in self.events]}"
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except TimeoutError:
                pass

    async def send(self, frame: dict):
        await self.ws.send_str(json.dumps(frame))

    async def reply(self, ticket_id: str, text: str):
        async with self.session.post(f"{self.base}/api/v1/tickets/{ticket_id}/replies", headers=AUTH,
                                     json={"text": text, "author": "ann"}) as r:
            assert r.status == 202, await r.text()

    async def __aexit__(self, *exc):
        await self.ws.close()
        self.task.cancel()
        await self.session.close()


async def open_chat(page):
    await page.get_by_role("button", name="Open chat").click()
    box = page.get_by_label("Type a message, Enter to send")
    await box.wait_for()
    return box


def bubbles(page, who: str):
    return page.locator(f".m[data-from={who}]")


async def test_visitor_and_agent_chat_live_and_the_conversation_survives_a_reload(browser, site):
    async with asyncio.timeout(DEADLINE_S):
        daemon, host_page = site
        async with Agent(daemon.base) as agent:
            ctx = await browser.new_context(locale="en-US")
            page = await ctx.new_page()
            await page.goto(host_page("cart"))
            launcher = page.get_by_role("button", name="Open chat")
            assert await launcher.is_visible()  # the page's `button{display:none!important}` does not reach it
            # keyboard: Enter on the launcher opens it and focuses the text box; Escape closes and returns focus
            await launcher.focus()
            await page.keyboard.press("Enter")
            box = page.get_by_label("Type a message, Enter to send")
            await box.wait_for()
            assert await box.evaluate("el => el.getRootNode().activeElement === el")
            assert await page.get_by_text("Hi! Ask us anything.").is_visible()
            await page.keyboard.press("Escape")
            assert await launcher.get_attribute("aria-expanded") == "false"
            await launcher.click()
            await box.fill("Hello from the browser")
            await box.press("Enter")
            msg = await agent.wait("message", **{"from": "visitor", "text": "Hello from the browser"})
            conv = msg["conversation"]
            chat = await agent.wait("chat", conversation=conv)
            assert chat["page"]["url"].endswith("/cart")
            ticket = await agent.wait("ticket", conversation=conv)
            # typing both ways
            await box.type("I also wond")
            await agent.wait("typing", conversation=conv, pred=lambda e: e["text"].startswith("I also"),
                             **{"from": "visitor"})
            await agent.send({"type": "typing", "conversation": conv, "on": True})
            await page.get_by_text("Agent is typing…").wait_for()
            await box.fill("")
            # the agent reads and replies; the visitor sees both
            await agent.send({"type": "read", "conversation": conv, "seq": msg["seq"]})
            await bubbles(page, "visitor").first.locator(".og-status", has_text="Read").wait_for()
            await agent.reply(ticket["ticket_id"], "Hello! How can I help?")
            await bubbles(page, "agent").filter(has_text="Hello! How can I help?").wait_for()
            await agent.wait("read", conversation=conv, **{"from": "visitor"})  # the panel is open: read
            # text is only ever text
            await box.fill('<img src=x onerror="window.pwned=1">')
            await box.press("Enter")
            await bubbles(page, "visitor").filter(has_text="<img src=x").wait_for()
            assert await page.evaluate("window.pwned") is None
            # reload: the same conversation, nothing twice
            await page.reload()
            await open_chat(page)
            await bubbles(page, "agent").filter(has_text="Hello! How can I help?").wait_for()
            texts = await page.locator(".m").all_inner_texts()
            assert sum("Hello from the browser" in t for t in texts) == 1
            assert sum("Hello! How can I help?" in t for t in texts) == 1
            # a second tab resumes it too
            tab = await ctx.new_page()
            await tab.goto(host_page("cart"))
            await open_chat(tab)
            await bubbles(tab, "agent").filter(has_text="Hello! How can I help?").wait_for()
            await ctx.close()


async def test_daemon_restart_mid_chat_loses_and_duplicates_nothing(browser, site):
    async with asyncio.timeout(DEADLINE_S):
        daemon, host_page = site
        ctx = await browser.new_context(locale="en-US")
        page = await ctx.new_page()
        await page.goto(host_page("help"))
        box = await open_chat(page)
        async with Agent(daemon.base) as agent:
            await box.fill("before the restart")
            await box.press("Enter")
            msg = await agent.wait("message", text="before the restart")
            ticket = await agent.wait("ticket", conversation=msg["conversation"])
        daemon.kill()  # SIGKILL: no goodbye to anyone
        await box.fill("while it was down")
        await box.press("Enter")
        await bubbles(page, "visitor").filter(has_text="while it was down").locator(".og-status",
                                                                                   has_text="Sending…").wait_for()
        await box.fill("and one more")
        await box.press("Enter")
        await daemon.start()
        async with Agent(daemon.base) as agent:
            # the widget reconnects by itself and delivers its queue, in order (its back-off reaches 15 s
            # while the daemon is down, and the daemon's start on a loaded machine takes seconds more)
            first = await agent.wait("message", text="while it was down", timeout=60)
            second = await agent.wait("message", text="and one more")
            assert first["seq"] < second["seq"]
            await agent.reply(ticket["ticket_id"], "All received")
            await bubbles(page, "agent").filter(has_text="All received").wait_for()
            await bubbles(page, "visitor").filter(has_text="and one more").locator(".og-status",
                                                                                  has_text="Delivered").wait_for()
        texts = [t for t in await page.locator(".m").all_inner_texts()]
        for expected in ("before the restart", "while it was down", "and one more", "All received"):
            assert sum(expected in t for t in texts) == 1, texts
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{daemon.base}/api/v1/tickets/{ticket['ticket_id']}/timeline", headers=AUTH) as r:
                items = (await r.json())["items"]
        # each exactly once (their order is the widget's seq, checked above: both daemons start at the
        # same pinned instant, so timeline times do not order across the restart)
        ins = sorted(e["text"] for e in items if e["kind"] == "message_in")
        assert ins == sorted(["before the restart", "while it was down", "and one more"])
        outs = [e["text"] for e in items if e["kind"] == "message_out"]
        assert outs == ["All received"]
        await ctx.close()


async def test_signed_visitor_lands_on_their_existing_contact_in_chinese(browser, site):
    async with asyncio.timeout(DEADLINE_S):
        daemon, host_page = site
        async with aiohttp.ClientSession() as s:
            body = {"external_id": "crm-77", "sender": {"kind": "external", "value": "shop:member-77", "name": "王芳"},
                    "text": "account created"}
            async with s.post(f"{daemon.base}/channels/api/messages", json=body, headers=AUTH) as r:
                jid = (await r.json())["journal_id"]
            for _ in range(200):
                async with s.get(f"{daemon.base}/api/v1/journal/{jid}", headers=AUTH) as r:
                    existing = await r.json()
                if existing.get("contact_id"):
                    break
                await asyncio.sleep(0.05)
        expires = int(START.timestamp()) + 30 * 86400  # a month after the daemon's pinned clock
        user = {"id": "member-77", "name": "王芳", "email": "wang.fang@example.com", "expires": expires,
                "signature": sign(SECRET, "member-77", str(expires), "wang.fang@example.com", "")}
        head = f"<script>window.omnigateUser = {json.dumps(user)};</script>"
        ctx = await browser.new_context(locale="zh-CN")
        page = await ctx.new_page()
        async with Agent(daemon.base) as agent:
            await page.goto(host_page("account", head, lang="zh-CN"))
            await page.get_by_role("button", name="打开在线客服").click()
            box = page.get_by_label("输入消息，按回车发送")
            await box.fill("我的订单在哪里？")
            await box.press("Enter")
            msg = await agent.wait("message", text="我的订单在哪里？")
            assert msg["conversation"] == "external:shop:member-77"
            ticket = await agent.wait("ticket", conversation=msg["conversation"])
        assert ticket["contact_id"] == existing["contact_id"]
        await ctx.close()


async def test_long_polling_fallback_in_the_browser(browser, site):
    async with asyncio.timeout(DEADLINE_S):
        daemon, host_page = site
        ctx = await browser.new_context(locale="en-US")
        page = await ctx.new_page()
        async with Agent(daemon.base) as agent:
            await page.goto(host_page("poll", "<script>window.omnigateConfig = {transport: 'poll'};</script>"))
            box = await open_chat(page)
            await box.fill("over plain HTTP")
            await box.press("Enter")
            msg = await agent.wait("message", text="over plain HTTP")
            ticket = await agent.wait("ticket", conversation=msg["conversation"])
            await agent.reply(ticket["ticket_id"], "polled reply")
            await bubbles(page, "agent").filter(has_text="polled reply").wait_for()
        await ctx.close()


async def test_prechat_form_and_offline_notice(browser, site):
    """A site with ``prechat``: name/email/phone first (labelled fields); no agent
    online: the offline notice; the typed email is recorded, unverified."""
    async with asyncio.timeout(DEADLINE_S):
        daemon, host_page = site
        ctx = await browser.new_context(locale="en-US")
        page = await ctx.new_page()
        async with Agent(daemon.base) as agent:
            await page.goto(host_page("desk", site="desk"))
            await page.get_by_role("button", name="Open chat").click()
            name = page.get_by_label("Name")
            await name.wait_for()
            assert await name.evaluate("el => el.getRootNode().activeElement === el")
            await name.fill("Zhang Wei")
            await page.get_by_label("Email", exact=True).first.fill("zhang@example.com")
            await page.get_by_role("button", name="Start chat").click()
            box = page.get_by_label("Type a message, Enter to send")
            assert await box.evaluate("el => el.getRootNode().activeElement === el")
            await page.get_by_text("No one is online right now").wait_for()  # nobody of the team is online
            await box.fill("please email me the quote")
            await box.press("Enter")
            msg = await agent.wait("message", text="please email me the quote")
            ticket = await agent.wait("ticket", conversation=msg["conversation"])
            chat = await agent.wait("chat", conversation=msg["conversation"], name="Zhang Wei")
            assert chat["site"] == "desk"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{daemon.base}/api/v1/tickets/{ticket['ticket_id']}/timeline", headers=AUTH) as r:
                [entry] = [e for e in (await r.json())["items"] if e["kind"] == "message_in"]
            async with s.get(f"{daemon.base}/api/v1/contacts/{ticket['contact_id']}", headers=AUTH) as r:
                contact = await r.json()
        assert entry["data"]["meta"]["claimed_email"] == "zhang@example.com"
        assert entry["data"]["meta"]["form"] == "offline"
        assert not any(i["kind"] == "email" for i in contact["identities"])  # typed, not signed: not linked
        await ctx.close()


async def test_visitor_sends_an_image_and_gets_the_agents_file(browser, site, tmp_path):
    """The attach button: a PNG goes through (type-checked by its bytes), both
    sides get it from the conversation's file store; the agent's PDF is a link."""
    import base64

    async with asyncio.timeout(DEADLINE_S):
        daemon, host_page = site
        png = tmp_path / "screenshot.png"
        png.write_bytes(base64.b64decode(  # a 1×1 PNG
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="))
        ctx = await browser.new_context(locale="en-US")
        page = await ctx.new_page()
        async with Agent(daemon.base) as agent:
            await page.goto(host_page("files"))
            await open_chat(page)
            await page.locator("input.fi").set_input_files(str(png))
            msg = await agent.wait("message", pred=lambda e: bool(e.get("files")))
            [f] = msg["files"]
            assert (f["name"], f["content_type"]) == ("screenshot.png", "image/png")
            img = bubbles(page, "visitor").locator("img")
            await img.wait_for()
            assert await img.evaluate("el => el.complete && el.naturalWidth === 1")  # served back to the visitor
            ticket = await agent.wait("ticket", conversation=msg["conversation"])
            async with agent.session.post(f"{daemon.base}/api/v1/tickets/{ticket['ticket_id']}/replies", headers=AUTH,
                                          json={"text": "here is the invoice", "attachments": [{
                                              "name": "invoice.pdf", "content_type": "application/pdf",
                                              "data_base64": base64.b64encode(b"%PDF-1.4\n%synthetic\n").decode()}]}) as r:
                assert r.status == 202, await r.text()
            link = bubbles(page, "agent").get_by_role("link", name="📎 invoice.pdf")
            await link.wait_for()
            href = await link.get_attribute("href")
            # closed panel: an agent message shows as an unread count on the launcher
            await page.keyboard.press("Escape")
            await agent.reply(ticket["ticket_id"], "anything else?")
            await page.get_by_role("button", name="Open chat (1 new)").wait_for()
            await page.get_by_role("button", name="Open chat (1 new)").click()
            await bubbles(page, "agent").filter(has_text="anything else?").wait_for()
            assert await page.get_by_role("button", name="Open chat", exact=True).get_attribute("aria-expanded") == "true"
        async with aiohttp.ClientSession() as s:
            async with s.get(href) as r:
                assert r.status == 200 and (await r.read()).startswith(b"%PDF-")
        await ctx.close()


async def test_a_refused_message_says_so_and_the_next_one_goes_through(browser, site):
    async with asyncio.timeout(DEADLINE_S):
        daemon, host_page = site
        ctx = await browser.new_context(locale="en-US")
        page = await ctx.new_page()
        async with Agent(daemon.base) as agent:
            await page.goto(host_page("long"))
            box = await open_chat(page)
            await box.fill("x" * 4001)  # webchat.max_text_chars: 4000
            await box.press("Enter")
            await page.locator(".og-status", has_text="Not sent: a message has at most 4000 characters").wait_for()
            await box.fill("short one")
            await box.press("Enter")
            await agent.wait("message", text="short one")
            await bubbles(page, "visitor").filter(has_text="short one").locator(".og-status",
                                                                               has_text="Delivered").wait_for()
            assert not [e for e in agent.events if e["type"] == "message" and e["text"].startswith("xxx")]
        await ctx.close()
