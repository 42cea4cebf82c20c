"""The agent side of webchat in real browsers: a visitor on a host page
writes; an agent signed into the console (a second browser context) sees the
chat appear live on /console/chats with the visitor's page and typing
preview, replies there, and the visitor sees the reply. Also the page's
server side: the socket refuses another origin, the reply needs the CSRF
token, and an agent of another team does not see the chat."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest

from tests.browser.test_webchat import DEADLINE_S, bubbles, open_chat
from tests.gateway.conftest import TOKEN

pytestmark = pytest.mark.integration


async def sign_in(ctx, base: str):
    page = await ctx.new_page()
    await page.goto(f"{base}/console/login")
    await page.get_by_label("Your API token").fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r"/console/queue"))
    return page


async def test_agent_sees_the_visitor_live_in_the_console_and_the_reply_reaches_the_visitor(browser, site):
    async with asyncio.timeout(DEADLINE_S):
        daemon, host_page = site
        agent_ctx = await browser.new_context(locale="en-US")
        console = await sign_in(agent_ctx, daemon.base)
        await console.get_by_role("link", name="Live chats").click()
        await console.wait_for_url(re.compile(r"/console/chats$"))
        await console.get_by_text("No live chats right now.").wait_for()

        visitor_ctx = await browser.new_context(locale="en-US")
        page = await visitor_ctx.new_page()
        await page.goto(host_page("checkout"))
        box = await open_chat(page)
        await box.fill("Where is my parcel?")
        await box.press("Enter")

        # live, without a reload: the chat, its page and the message
        chat = console.locator("section.chat")
        await chat.locator(".m[data-from=visitor]", has_text="Where is my parcel?").wait_for()
        await chat.locator(".chat-url", has_text="/checkout").wait_for()
        assert "Shop checkout" in await chat.locator(".chat-url").inner_text()  # the page's title
        await chat.locator(".chat-state", has_text="online").wait_for()
        await chat.locator(".chat-ticket-link").wait_for()  # the pipeline committed it: a ticket to reply on
        # the typing preview, as the visitor types
        await box.type("It was due Monday")
        await chat.locator(".chat-preview", has_text="It was due").wait_for()
        # the agent's typing reaches the visitor
        reply = chat.get_by_label("Reply")
        await reply.type("Let me check")
        await page.get_by_text("Agent is typing…").wait_for()
        await reply.fill("It left our warehouse today.")
        await chat.get_by_role("button", name="Send").click()
        # the visitor sees the reply, and so does the console (back from the hub once delivered)
        await bubbles(page, "agent").filter(has_text="It left our warehouse today.").wait_for()
        await chat.locator(".m[data-from=agent]", has_text="It left our warehouse today.").wait_for()
        assert await reply.input_value() == ""
        # the agent read the visitor's message (the console sent the read mark)
        await bubbles(page, "visitor").first.locator(".og-status", has_text="Read").wait_for()
        # a reload of the console: the conversation so far, each message once
        await console.reload()
        await chat.locator(".m[data-from=agent]", has_text="It left our warehouse today.").wait_for()
        texts = await chat.locator(".m").all_inner_texts()
        assert sum("Where is my parcel?" in t for t in texts) == 1
        assert sum("It left our warehouse today." in t for t in texts) == 1
        await visitor_ctx.close()
        await agent_ctx.close()


async def test_the_chats_socket_and_reply_refuse_cross_site_use(browser, site):
    async with asyncio.timeout(DEADLINE_S):
        daemon, _ = site
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.get(f"{daemon.base}/console/login") as r:
                pre = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
            async with s.post(f"{daemon.base}/console/login", data={"csrf": pre, "token": TOKEN}) as r:
                assert r.status == 200
            async with s.get(f"{daemon.base}/console/chats") as r:
                assert r.status == 200
                csrf = re.search(r'data-csrf="([^"]+)"', await r.text()).group(1)
            # another site's page cannot open the socket with the agent's cookie
            with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
                await s.ws_connect(f"{daemon.base}/console/chats/socket", headers={"Origin": "http://evil.example"})
            assert exc.value.status == 403
            ws = await s.ws_connect(f"{daemon.base}/console/chats/socket", headers={"Origin": daemon.base})
            snap = await ws.receive_json(timeout=10)
            assert snap == {"type": "snapshot", "chats": []}
            await ws.send_json({"type": "typing", "conversation": "webchat:shop:nobody", "on": True})
            assert (await ws.receive_json(timeout=10))["code"] == "unknown_conversation"
            await ws.close()
            # a reply without the session's CSRF token is refused
            async with s.post(f"{daemon.base}/console/chats/reply",
                              data={"conversation": "webchat:shop:x", "text": "hi"}) as r:
                assert r.status == 403
            async with s.post(f"{daemon.base}/console/chats/reply",
                              data={"csrf": csrf, "conversation": "webchat:shop:x", "text": "hi"}) as r:
                assert r.status == 409 and (await r.json())["ok"] is False  # no ticket for a chat that never was
        # signed out: the page sends to the sign-in page, the socket does not open
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{daemon.base}/console/chats", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/console/login"
