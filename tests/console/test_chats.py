"""The console's live chats (gateway/console/chats.py) without a browser:
the session socket shows only the chats of the agent's teams' sites with the
conversation so far, the page and typing previews; the agent's typing reaches
the visitor; the reply goes through the ticket and is pushed to the
visitor's socket; an agent of another team can neither see, signal nor reply."""

from __future__ import annotations

import asyncio

import re

import aiohttp

from gateway import keys
from tests.gateway.conftest import AUTH

from tests.connectors.webchat.conftest import Visitor, backend, chat  # noqa: F401 - the fixtures
from tests.connectors.webchat.test_channel import _agent_token
from tests.console.conftest import sign_in


async def _socket(session, client):
    base = str(client.make_url("")).rstrip("/")
    ws = await session.ws_connect(f"{base}/console/chats/socket", headers={"Origin": base})
    snap = await ws.receive_json(timeout=10)
    assert snap["type"] == "snapshot"
    return ws, snap


async def _next(ws, kind, **match):
    while True:
        e = await ws.receive_json(timeout=10)
        if e["type"] == kind and all(e.get(k) == v for k, v in match.items()):
            return e


async def _ticket_of(app, conv) -> str:
    webchat = app[keys.CONNECTORS]["webchat"]
    for _ in range(400):
        ticket_id = ((await webchat.transcript.conversation(conv)) or {}).get("ticket_id")
        if ticket_id:
            return ticket_id
        await asyncio.sleep(0.025)
    raise AssertionError("the visitor's message never reached a ticket")


async def test_agents_see_only_their_teams_chats_and_replies_reach_the_visitor(chat):  # noqa: F811
    client, app = chat
    ann_token = await _agent_token(client, "ann", ["support"])  # the shop site's team
    bob_token = await _agent_token(client, "bob", ["billing"])
    v = await Visitor.connect(client)
    conv = v.welcome["conversation"]
    await v.say("c1", "hello support")
    ticket_id = await _ticket_of(app, conv)
    # as the shop's routing rules would: the chat's ticket goes to the site's team
    r = await client.patch(f"/api/v1/tickets/{ticket_id}", json={"team": "support"}, headers=AUTH)
    assert r.status == 200, await r.text()

    ann_csrf = await sign_in(client, ann_token)
    ann, snap = await _socket(client.session, client)
    [c] = snap["chats"]
    assert c["conversation"] == conv and c["online"] is True
    assert c["page"] == {"url": "https://shop.example.com/cart", "title": "Cart"}
    assert [(m["from"], m["text"]) for m in c["messages"]] == [("visitor", "hello support")]
    assert c["ticket_id"]
    # the page shows the live chats (and the nav links to it)
    page = await client.get("/console/chats")
    assert page.status == 200 and 'href="/console/chats"' in await page.text()

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as other:
        base = str(client.make_url("")).rstrip("/")
        login = await other.get(f"{base}/console/login")
        pre = re.search(r'name="csrf" value="([^"]+)"', await login.text()).group(1)
        await other.post(f"{base}/console/login", data={"csrf": pre, "token": bob_token})
        chats_page = await other.get(f"{base}/console/chats")
        bob_csrf = re.search(r'data-csrf="([^"]+)"', await chats_page.text()).group(1)
        bob, bob_snap = await _socket(other, client)
        assert bob_snap["chats"] == []
        await bob.send_json({"type": "typing", "conversation": conv, "on": True})
        assert await bob.receive_json(timeout=10) == {"type": "error", "code": "forbidden", "conversation": conv}
        r = await other.post(f"{base}/console/chats/reply", data={"csrf": bob_csrf, "conversation": conv,
                                                                   "text": "not mine"})
        assert r.status == 403

        # the visitor types: ann sees the preview
        await v.send({"type": "typing", "on": True, "text": "one more thi"})
        preview = await _next(ann, "typing", conversation=conv)
        assert preview["from"] == "visitor" and preview["text"] == "one more thi"
        # ann types: the visitor sees it
        await ann.send_json({"type": "typing", "conversation": conv, "on": True})
        assert (await v.expect("typing"))["on"] is True
        # ann replies from the console: through the ticket, pushed to the visitor, back on the socket
        r = await client.post("/console/chats/reply", data={"csrf": ann_csrf, "conversation": conv,
                                                            "text": "Hi, Ann here"})
        assert r.status == 200, await r.text()
        got = await v.expect("message")
        assert (got["from"], got["text"]) == ("agent", "Hi, Ann here")
        back = await _next(ann, "message", conversation=conv)
        assert (back["from"], back["text"]) == ("agent", "Hi, Ann here")
        # bob's socket carried nothing of this chat
        try:
            extra = await bob.receive_json(timeout=0.3)
        except asyncio.TimeoutError:
            extra = None
        assert extra is None
        await bob.close()
    # a reply without the CSRF token is refused; an empty one too
    r = await client.post("/console/chats/reply", data={"conversation": conv, "text": "x"})
    assert r.status == 403
    r = await client.post("/console/chats/reply", data={"csrf": ann_csrf, "conversation": conv, "text": " "})
    assert r.status == 400
    await ann.close()
    await v.close()
