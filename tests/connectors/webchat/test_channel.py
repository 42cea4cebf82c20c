"""The webchat channel through a running gateway: the visitor's socket, the
journal before the ack, idempotent resends, the agent's live socket,
replies pushed to the visitor, typing and read marks both ways, resume,
polling, identities, the limits."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from pathlib import Path

import pytest

from connectors.webchat.parse import sign
from gateway import keys
from tests.connectors.webchat.conftest import ORIGIN, SECRET, Visitor
from tests.gateway.conftest import AUTH, drain

WIDGET = Path(__file__).resolve().parents[3] / "connectors" / "webchat" / "widget.js"


async def agent_socket(client):
    ws = await client.ws_connect("/api/v1/live/webchat", headers=AUTH)
    snap = json.loads((await ws.receive(timeout=5)).data)
    assert snap["type"] == "snapshot"
    return ws, snap


async def next_event(ws, kind, timeout=10, **match):
    while True:
        e = json.loads((await ws.receive(timeout=timeout)).data)
        if e["type"] == kind and all(e.get(k) == v for k, v in match.items()):
            return e


def test_widget_is_small_and_renders_text_as_text_only():
    body = WIDGET.read_bytes()
    assert len(gzip.compress(body, 9)) <= 30 * 1024
    src = body.decode()
    assert "attachShadow" in src  # isolated from the page's CSS
    # the only innerHTML is the static template; message text goes through textContent
    assert src.count("innerHTML") == 1 and "textContent = text" in src


async def test_widget_js_is_served_with_the_sites_settings(chat):
    client, app = chat
    r = await client.get("/channels/webchat/widget.js?site=shop")
    assert r.status == 200 and r.content_type == "application/javascript"
    js = await r.text()
    assert '"color": "#ff6600"' in js and '"zh-CN": "\\u4f60\\u597d\\uff01"' in js
    assert (await client.get("/channels/webchat/widget.js?site=nope")).status == 404


async def test_message_is_journaled_before_ack_and_a_resend_is_not_a_duplicate(chat):
    client, app = chat
    v = await Visitor.connect(client)
    assert v.welcome["visitor"] and v.welcome["history"] == []
    ack = await v.say("c1", "Where is my parcel?")
    entry = await app[keys.STORE].journal_get(ack["journal_id"], with_raw=True)
    assert entry is not None and json.loads(entry.raw)["text"] == "Where is my parcel?"
    again = await v.say("c1", "Where is my parcel?")  # the ack was lost: the widget resends
    assert (again["journal_id"], again["seq"]) == (ack["journal_id"], ack["seq"])
    await drain(app)
    counts = await app[keys.STORE].journal_counts()
    assert sum(counts.values()) == 1
    got = await (await client.get(f"/api/v1/journal/{ack['journal_id']}", headers=AUTH)).json()
    tl = await (await client.get(f"/api/v1/tickets/{got['ticket_id']}/timeline", headers=AUTH)).json()
    assert [e["text"] for e in tl["items"] if e["kind"] == "message_in"] == ["Where is my parcel?"]


async def test_agent_sees_the_chat_live_replies_and_the_visitor_gets_it(chat):
    client, app = chat
    agent, snap = await agent_socket(client)
    v = await Visitor.connect(client)
    conv = v.welcome["conversation"]
    chat_ev = await next_event(agent, "chat", conversation=conv)
    assert chat_ev["page"]["url"] == f"{ORIGIN}/cart" and chat_ev["online"] is True
    await v.send({"type": "typing", "on": True, "text": "I need hel"})
    assert (await next_event(agent, "typing", conversation=conv))["text"] == "I need hel"
    await v.send({"type": "page", "url": f"{ORIGIN}/checkout", "title": "Checkout"})
    assert (await next_event(agent, "chat", conversation=conv))["page"]["url"] == f"{ORIGIN}/checkout"
    ack = await v.say("c1", "I need help")
    msg = await next_event(agent, "message", conversation=conv)
    assert (msg["from"], msg["text"], msg["journal_id"]) == ("visitor", "I need help", ack["journal_id"])
    ticket = await next_event(agent, "ticket", conversation=conv)
    # agent typing and read marks reach the visitor
    await agent.send_str(json.dumps({"type": "typing", "conversation": conv, "on": True}))
    assert (await v.expect("typing"))["on"] is True
    await agent.send_str(json.dumps({"type": "read", "conversation": conv, "seq": ack["seq"]}))
    assert (await v.expect("read"))["seq"] == ack["seq"]
    # the reply goes through the replies API and the outbox
    r = await client.post(f"/api/v1/tickets/{ticket['ticket_id']}/replies", json={"text": "Happy to help", "author": "ann"},
                          headers=AUTH)
    assert r.status == 202, await r.text()
    got = await v.expect("message")
    assert (got["from"], got["text"], got["author"]) == ("agent", "Happy to help", "ann")
    assert (await next_event(agent, "message", conversation=conv, **{"from": "agent"}))["seq"] == got["seq"]
    await v.send({"type": "read", "seq": got["seq"]})
    assert (await next_event(agent, "read", conversation=conv, **{"from": "visitor"}))["seq"] == got["seq"]
    # the timeline says the reply was delivered
    async def delivered():
        tl = await (await client.get(f"/api/v1/tickets/{ticket['ticket_id']}/timeline", headers=AUTH)).json()
        return [e for e in tl["items"] if e["kind"] == "message_out" and
                e["data"].get("delivery", {}).get("status") == "sent"]
    for _ in range(100):
        if await delivered():
            break
        await asyncio.sleep(0.05)
    assert await delivered()
    await agent.close()
    await v.close()


async def test_reconnect_and_second_tab_resume_the_conversation(chat):
    client, app = chat
    v = await Visitor.connect(client)
    who = {"visitor": v.welcome["visitor"], "token": v.welcome["token"]}
    await v.say("c1", "first")
    tab2 = await Visitor.connect(client, **who)
    assert tab2.welcome["conversation"] == v.welcome["conversation"]
    assert [m["text"] for m in tab2.welcome["history"]] == ["first"]
    await v.say("c2", "second")
    assert (await tab2.expect("message"))["text"] == "second"  # the other tab sees it live
    await v.close(), await tab2.close()
    await drain(app)
    # an agent reply while the visitor is away is delivered when they come back
    conv = v.welcome["conversation"]
    ticket_id = (await app[keys.CONNECTORS]["webchat"].transcript.conversation(conv))["ticket_id"]
    r = await client.post(f"/api/v1/tickets/{ticket_id}/replies", json={"text": "while you were away"}, headers=AUTH)
    assert r.status == 202
    for _ in range(100):
        if len((await app[keys.CONNECTORS]["webchat"].transcript.history(conv))) == 3:
            break
        await asyncio.sleep(0.05)
    back = await Visitor.connect(client, **who, after=2)
    assert [(m["from"], m["text"]) for m in back.welcome["history"]] == [("agent", "while you were away")]
    # a forged token is a new visitor, not someone else's conversation
    other = await Visitor.connect(client, visitor=who["visitor"], token="0" * 32)
    assert other.welcome["visitor"] != who["visitor"] and other.welcome["history"] == []


async def test_polling_fallback_speaks_the_same_frames(chat):
    client, app = chat
    hdr = {"Origin": ORIGIN}
    r = await client.post("/channels/webchat/poll?site=shop", headers=hdr,
                          json={"frames": [{"type": "hello"}, {"type": "message", "cid": "p1", "text": "via polling"}]})
    frames = (await r.json())["frames"]
    welcome, ack = frames[0], frames[1]
    assert welcome["type"] == "welcome" and ack["type"] == "ack"
    who = {"type": "hello", "visitor": welcome["visitor"], "token": welcome["token"], "after": ack["seq"]}
    await drain(app)
    ticket_id = (await app[keys.CONNECTORS]["webchat"].transcript.conversation(welcome["conversation"]))["ticket_id"]
    waiting = asyncio.create_task(client.post("/channels/webchat/poll?site=shop", headers=hdr,
                                              json={"frames": [who], "wait": 20}))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # a long poll
    assert (await client.post(f"/api/v1/tickets/{ticket_id}/replies", json={"text": "hi poller"},
                              headers=AUTH)).status == 202
    frames = (await (await waiting).json())["frames"]
    assert [f["text"] for f in frames if f["type"] == "message"] == ["hi poller"]
    bad = await client.post("/channels/webchat/poll?site=shop", headers={"Origin": "https://evil.example"},
                            json={"frames": [{"type": "hello"}]})
    assert bad.status == 403
    limit = app[keys.CONNECTORS]["webchat"].poll_limit
    frozen = limit.clock()
    limit.clock = lambda: frozen  # no refill while a slow machine sends the 60 polls
    statuses = [(await client.post("/channels/webchat/poll?site=shop", headers=hdr, json={"frames": [who]})).status
                for _ in range(60)]
    assert statuses[0] == 200 and statuses[-1] == 429  # a loop of polls is cut off


async def test_origin_site_and_connection_limits(chat):
    client, app = chat
    import aiohttp

    for headers, status in (({"Origin": "https://evil.example"}, 403), ({}, 403)):
        try:
            await client.ws_connect("/channels/webchat/ws?site=shop", headers=headers)
            raise AssertionError("upgraded")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == status
    try:
        await client.ws_connect("/channels/webchat/ws?site=other", headers={"Origin": ORIGIN})
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 404
    conn = app[keys.CONNECTORS]["webchat"]
    conn.settings.connections_per_ip = 2
    a, b = await Visitor.connect(client), await Visitor.connect(client)
    try:
        await Visitor.connect(client)
        raise AssertionError("a third connection from one IP was accepted")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 429
    await a.close()
    await asyncio.sleep(0.1)
    c = await Visitor.connect(client)  # a slot is free again
    await b.close(), await c.close()


async def test_rate_size_and_file_limits(chat):
    client, app = chat
    conn = app[keys.CONNECTORS]["webchat"]
    conn.settings.max_text_chars = 10
    v = await Visitor.connect(client)
    await v.send({"type": "message", "cid": "long", "text": "x" * 11})
    too_long = await v.expect("error")
    assert too_long["code"] == "too_long"
    exe = base64.b64encode(b"MZ\x90\x00" * 10).decode()
    await v.send({"type": "message", "cid": "f1", "text": "", "files": [{"name": "a.png", "data_base64": exe}]})
    assert (await v.expect("error"))["code"] == "file_type"
    conn.settings.max_file_bytes = 100
    big = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 200).decode()
    await v.send({"type": "message", "cid": "f0", "text": "", "files": [{"name": "big.png", "data_base64": big}]})
    assert (await v.expect("error"))["code"] == "file_too_large"
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 40).decode()
    ack = await v.say("f2", "", files=[{"name": "shot.png", "content_type": "image/png", "data_base64": png}])
    await drain(app)
    j = await (await client.get(f"/api/v1/journal/{ack['journal_id']}", headers=AUTH)).json()
    tl = await (await client.get(f"/api/v1/tickets/{j['ticket_id']}/timeline", headers=AUTH)).json()
    [att] = [a for e in tl["items"] for a in e.get("attachments", [])]
    assert att["content_type"] == "image/png" and att["storage_ref"]  # in the content-addressed store
    # beyond the burst: an error frame naming the reason, then close 1008
    for n in range(20):
        await v.send({"type": "message", "cid": f"r{n}", "text": "spam"})
    err = await v.expect("error")
    assert err["code"] == "closed" and "too many messages" in err["reason"]
    msg = await v.ws.receive(timeout=5)
    while msg.type.name == "TEXT":
        msg = await v.ws.receive(timeout=5)
    assert v.ws.close_code == 1008


async def test_signed_user_lands_on_their_existing_contact_and_unsigned_claims_do_not_link(chat):
    client, app = chat
    # the company's CRM already created this user's contact through the API channel
    body = {"external_id": "crm-1", "sender": {"kind": "external", "value": "shop:u42", "name": "Li Lei"},
            "text": "imported"}
    r = await client.post("/channels/api/messages", json=body, headers=AUTH)
    await drain(app)
    existing = (await (await client.get(f"/api/v1/journal/{(await r.json())['journal_id']}", headers=AUTH)).json())
    exp = 1893456000  # 2030: after the pinned clock
    user = {"id": "u42", "name": "Li Lei", "email": "li@example.com", "expires": exp,
            "signature": sign(SECRET, "u42", str(exp), "li@example.com", "")}
    v = await Visitor.connect(client, user=user)
    assert v.welcome["conversation"] == "external:shop:u42"
    ack = await v.say("s1", "hi, logged in")
    await drain(app)
    j = await (await client.get(f"/api/v1/journal/{ack['journal_id']}", headers=AUTH)).json()
    assert j["contact_id"] == existing["contact_id"]
    contact = await (await client.get(f"/api/v1/contacts/{j['contact_id']}", headers=AUTH)).json()
    kinds = {(i["kind"], i["value"]) for i in contact["identities"]}
    assert ("email", "li@example.com") in kinds
    # the agent's answer goes back to the signed user's conversation (every tab and device of theirs)
    r = await client.post(f"/api/v1/tickets/{j['ticket_id']}/replies", json={"text": "hello Li"}, headers=AUTH)
    assert r.status == 202
    assert (await v.expect("message"))["text"] == "hello Li"
    # an unsigned claim: an anonymous visitor typing someone's email links nothing
    anon = await Visitor.connect(client, profile={"email": "li@example.com", "name": "Impostor"})
    ack2 = await anon.say("a1", "I am Li, honestly")
    await drain(app)
    j2 = await (await client.get(f"/api/v1/journal/{ack2['journal_id']}", headers=AUTH)).json()
    assert j2["contact_id"] != existing["contact_id"]
    # a forged signature is refused at hello, with a notice
    forged = await Visitor.connect(client, user={**user, "signature": "ab" * 32})
    assert forged.welcome["conversation"].startswith("webchat:shop:")
    assert forged.welcome["notices"][0]["code"] == "user_not_verified"


async def test_agents_online_decides_the_offline_form(chat):
    client, app = chat
    v = await Visitor.connect(client)
    assert v.welcome["agents_online"] is False  # no agent of team support is online
    from routing.model import Agent

    store = app[keys.STORE]
    now = app[keys.CLOCK]()
    await store.put_agent(Agent(id="ann", name="Ann", teams=["support"]), now)
    await store.set_presence("ann", "online", now)
    v2 = await Visitor.connect(client)
    assert v2.welcome["agents_online"] is True
    ack = await v.say("o1", "please call me back", form="offline")
    await drain(app)
    entry = await app[keys.STORE].journal_get(ack["journal_id"], with_raw=True)
    assert json.loads(entry.raw)["form"] == "offline"


async def _agent_token(client, agent_id: str, teams: list[str]) -> str:
    from routing.model import Agent

    app = client.app
    await app[keys.STORE].put_agent(Agent(id=agent_id, name=agent_id, teams=teams), app[keys.CLOCK]())
    r = await client.post("/api/v1/tokens", headers=AUTH, json={"agent_id": agent_id, "role": "agent"})
    assert r.status == 201, await r.text()
    return (await r.json())["token"]


async def test_agents_see_and_signal_only_chats_of_their_teams_sites(chat):
    """The REST API's tokens and roles: an agent of the site's team (support) sees
    the chat and types into it; an agent of another team sees nothing of it."""
    client, app = chat
    mine = await _agent_token(client, "ann", ["support"])
    other = await _agent_token(client, "bob", ["billing"])
    ann = await client.ws_connect("/api/v1/live/webchat")
    await ann.send_str(json.dumps({"type": "auth", "token": mine}))
    assert json.loads((await ann.receive(timeout=5)).data)["type"] == "snapshot"
    bob = await client.ws_connect("/api/v1/live/webchat", headers={"Authorization": f"Bearer {other}"})
    assert json.loads((await bob.receive(timeout=5)).data)["chats"] == []
    v = await Visitor.connect(client)
    conv = v.welcome["conversation"]
    await v.say("c1", "hello support")
    assert (await next_event(ann, "message", conversation=conv))["text"] == "hello support"
    await ann.send_str(json.dumps({"type": "typing", "conversation": conv, "on": True}))
    assert (await v.expect("typing"))["on"] is True
    typing = await next_event(ann, "typing", **{"from": "agent"})
    assert typing["agent"] == "ann"  # signed with the token's agent, not a field the client sets
    await bob.send_str(json.dumps({"type": "typing", "conversation": conv, "on": True}))
    assert json.loads((await bob.receive(timeout=5)).data) == {"type": "error", "code": "forbidden",
                                                                "conversation": conv}
    r = await client.post("/api/v1/live/webchat/read", json={"conversation": conv, "seq": 1},
                          headers={"Authorization": f"Bearer {other}"})
    assert r.status == 403
    r = await client.post("/api/v1/live/webchat/read", json={"conversation": conv, "seq": 1},
                          headers={"Authorization": f"Bearer {mine}"})
    assert r.status == 200 and (await v.expect("read"))["seq"] == 1
    chats = await (await client.get("/api/v1/live/webchat/chats", headers={"Authorization": f"Bearer {other}"})).json()
    assert chats["chats"] == []
    chats = await (await client.get("/api/v1/live/webchat/chats", headers={"Authorization": f"Bearer {mine}"})).json()
    assert [c["conversation"] for c in chats["chats"]] == [conv]
    # bob's socket never carried this chat's events
    await bob.close()


async def test_agent_socket_needs_the_token(chat):
    client, app = chat
    import aiohttp

    try:
        await client.ws_connect("/api/v1/live/webchat", headers={"Authorization": "Bearer wrong"})
        raise AssertionError("upgraded")
    except aiohttp.WSServerHandshakeError as exc:
        assert exc.status == 401
    ws = await client.ws_connect("/api/v1/live/webchat")
    await ws.send_str(json.dumps({"type": "auth", "token": "wrong"}))
    assert json.loads((await ws.receive(timeout=5)).data)["code"] == "unauthorized"
    from tests.gateway.conftest import TOKEN

    ws = await client.ws_connect("/api/v1/live/webchat")
    await ws.send_str(json.dumps({"type": "auth", "token": TOKEN}))
    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "snapshot"
    assert (await client.get("/api/v1/live/webchat/chats")).status == 401
    # a frame nested thousands deep, before and after the auth: an error frame, not a traceback and a dead socket
    deep = "[" * 5000 + "]" * 5000
    await ws.send_str(deep)
    assert json.loads((await ws.receive(timeout=5)).data) == {"type": "error", "code": "bad_frame", "reason": "not JSON"}
    anon = await client.ws_connect("/api/v1/live/webchat")
    await anon.send_str(deep)
    assert json.loads((await anon.receive(timeout=5)).data)["code"] == "unauthorized"


async def test_an_agent_read_mark_past_64_bits_is_refused_not_a_500(chat):
    client, app = chat
    v = await Visitor.connect(client)
    await v.say("s1", "hello")
    conv = v.welcome["conversation"]
    for seq in (10**40, 2**63):
        resp = await client.post("/api/v1/live/webchat/read", json={"conversation": conv, "seq": seq}, headers=AUTH)
        assert resp.status == 400 and (await resp.json())["field"] == "$.seq", await resp.text()
    ws = await client.ws_connect("/api/v1/live/webchat", headers=AUTH)
    assert json.loads((await ws.receive(timeout=5)).data)["type"] == "snapshot"
    await ws.send_str(json.dumps({"type": "read", "conversation": conv, "seq": 10**40}))
    frame = json.loads((await ws.receive(timeout=5)).data)
    while frame["type"] not in ("ok", "error"):
        frame = json.loads((await ws.receive(timeout=5)).data)
    assert frame["code"] == "bad_frame"
    await ws.send_str(json.dumps({"type": "read", "conversation": conv, "seq": True}))
    frame = json.loads((await ws.receive(timeout=5)).data)
    while frame["type"] not in ("ok", "error"):
        frame = json.loads((await ws.receive(timeout=5)).data)
    assert frame["code"] == "bad_frame"
    resp = await client.post("/api/v1/live/webchat/read", json={"conversation": conv, "seq": 1}, headers=AUTH)
    assert resp.status == 200, await resp.text()


async def test_a_visitor_read_mark_of_true_or_past_64_bits_is_ignored_not_a_503(chat):
    """On Redis a read frame's ``"seq": true`` was a DataError taken for "Redis
    down": the poll answered 503 and a socket was closed with 1011."""
    client, app = chat
    v = await Visitor.connect(client)
    await v.say("r1", "hello")
    for seq in (True, 10**40, -1):
        await v.send({"type": "read", "seq": seq})
    await v.send({"type": "ping"})
    assert (await v.expect("pong"))["type"] == "pong"  # the socket is still open
    r = await client.post("/channels/webchat/poll?site=shop", headers={"Origin": ORIGIN},
                          json={"frames": [{"type": "hello"}, {"type": "read", "seq": True}]})
    assert r.status == 200, await r.text()


async def test_files_both_ways_are_served_to_their_conversation_only(chat):
    client, app = chat
    v = await Visitor.connect(client)
    who = {"site": "shop", "visitor": v.welcome["visitor"], "token": v.welcome["token"]}
    png = b"\x89PNG\r\n\x1a\n" + b"\1" * 60
    ack = await v.say("f1", "my screenshot", files=[{"name": "s.png", "content_type": "image/png",
                                                      "data_base64": base64.b64encode(png).decode()}])
    [shown] = ack["files"]
    r = await client.get(f"/channels/webchat/files/{shown['sha256']}", params=who)
    assert r.status == 200 and r.content_type == "image/png" and await r.read() == png
    other = await Visitor.connect(client)
    r = await client.get(f"/channels/webchat/files/{shown['sha256']}",
                         params={"site": "shop", "visitor": other.welcome["visitor"], "token": other.welcome["token"]})
    assert r.status == 404  # not in that visitor's conversation
    r = await client.get(f"/channels/webchat/files/{shown['sha256']}", params={**who, "token": "x" * 32})
    assert r.status == 403
    # an agent's PDF reaches the visitor as a download
    await drain(app)
    ticket_id = (await app[keys.CONNECTORS]["webchat"].transcript.conversation(v.welcome["conversation"]))["ticket_id"]
    pdf = b"%PDF-1.4\n% synthetic\n"
    r = await client.post(f"/api/v1/tickets/{ticket_id}/replies", headers=AUTH, json={
        "text": "the invoice", "attachments": [{"name": "invoice.pdf", "content_type": "application/pdf",
                                                "data_base64": base64.b64encode(pdf).decode()}]})
    assert r.status == 202, await r.text()
    got = await v.expect("message")
    [f] = got["files"]
    r = await client.get(f"/channels/webchat/files/{f['sha256']}", params=who)
    assert await r.read() == pdf and r.headers["Content-Disposition"] == "attachment"


async def test_a_flood_of_frames_is_closed_with_a_reason(chat):
    client, app = chat
    v = await Visitor.connect(client)
    for n in range(200):
        await v.send({"type": "page", "url": f"{ORIGIN}/p{n}", "title": "t"})
    err = await v.expect("error")
    assert err["code"] == "closed" and "too many frames" in err["reason"]


async def test_hostile_frames_get_error_frames_not_a_dead_socket(chat):
    client, app = chat
    v = await Visitor.connect(client)
    for frame in ('{"type": "page", "url": {"x": 1}}', "[1, 2]", "nope", '{"type": 7}',
                  '{"type": "message", "cid": "h1", "text": "x", "files": ["not-a-dict"]}',
                  '{"type": "profile", "email": ["a"]}', "[" * 100000 + "]" * 100000,
                  '{"type": "hello", "user": "string", "page": 5}'):
        await v.ws.send_str(frame)
    await v.send({"type": "ping"})
    assert (await v.expect("pong"))["type"] == "pong"  # still alive
    ack = await v.say("h2", "still works")
    assert ack["seq"] >= 1


async def test_a_poll_body_nested_thousands_deep_is_a_400_not_a_500(chat):
    client, app = chat
    for body in (b"[" * 10_000 + b"]" * 10_000, b'{"frames": [{"type": "hello"}, ' + b"[" * 5000 + b"]" * 5000 + b"]}"):
        r = await client.post("/channels/webchat/poll?site=shop", headers={"Origin": ORIGIN}, data=body)
        assert r.status == 400 and r.content_type == "application/problem+json", await r.text()
        assert (await r.json())["field"] == "body"


async def test_a_polling_visitor_who_stops_asking_is_shown_offline(chat):
    client, app = chat
    conn = app[keys.CONNECTORS]["webchat"]
    agent, _ = await agent_socket(client)
    r = await client.post("/channels/webchat/poll?site=shop", headers={"Origin": ORIGIN},
                          json={"frames": [{"type": "hello"}]})
    conv = (await r.json())["frames"][0]["conversation"]
    assert (await next_event(agent, "chat", conversation=conv))["online"] is True
    await conn.sweep()
    assert conn.hub.live[conv]["online"] is True  # asked just now
    conn.polled[conv] -= 61
    await conn.sweep()
    assert (await next_event(agent, "chat", conversation=conv, online=False))["online"] is False


async def test_a_message_the_journal_cannot_take_is_not_acknowledged(chat):
    client, app = chat
    conn = app[keys.CONNECTORS]["webchat"]
    v = await Visitor.connect(client)
    real = conn.ctx.ingest

    async def failing(*a, **kw):
        raise OSError(28, "No space left on device")

    conn.ctx.ingest = failing
    await v.send({"type": "message", "cid": "d1", "text": "lost?"})
    err = await v.expect("error")
    assert err["code"] == "closed" and "could not be stored" in err["reason"]
    msg = await v.ws.receive(timeout=5)
    while msg.type.name == "TEXT":
        msg = await v.ws.receive(timeout=5)
    assert v.ws.close_code == 1011
    assert (await conn.transcript.history(v.welcome["conversation"])) == []  # nothing shown as sent
    conn.ctx.ingest = real  # the widget comes back and resends the same cid
    again = await Visitor.connect(client, visitor=v.welcome["visitor"], token=v.welcome["token"])
    ack = await again.say("d1", "lost?")
    assert ack["seq"] == 1


@pytest.mark.parametrize("after", [True, 10**40, -1])
async def test_a_hello_after_that_is_no_seq_replays_from_the_start_not_a_503(chat, after):
    client, app = chat
    v = await Visitor.connect(client)
    await v.say("a1", "hello")
    back = await Visitor.connect(client, visitor=v.welcome["visitor"], token=v.welcome["token"], after=after)
    assert [m["text"] for m in back.welcome["history"]] == ["hello"]
