"""Live updates across instances: two gateways on one real Redis, an agent's
socket on one sees what the other's visitors do and what its pipeline
committed; the agent's typing and read marks reach the visitor on the other
instance (gateway/fanout.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway import keys
from gateway.app import create_app
from gateway.fanout import FANOUT
from gateway.tasks import cancel_and_wait
from tests.connectors.webchat.conftest import Visitor, webchat_config
from tests.gateway.conftest import AUTH, business_hours

pytestmark = pytest.mark.integration


async def _instance(aiohttp_client, tmp_path, name, redis_server, prefix, **extra):
    root = tmp_path / name
    root.mkdir()
    config = webchat_config(root, extra={"redis_url": redis_server.url, "store": {"redis_prefix": prefix}, **extra})
    app = create_app(config, clock=business_hours())
    client = await aiohttp_client(app)
    await asyncio.wait_for(app[FANOUT].subscribed.wait(), 10)
    return client, app


async def _event(ws, kind, timeout=10, **match):
    while True:
        e = json.loads((await ws.receive(timeout=timeout)).data)
        if e["type"] == kind and all(e.get(k) == v for k, v in match.items()):
            return e


@pytest.fixture
async def two(aiohttp_client, tmp_path, redis_server, redis_prefix):
    a = await _instance(aiohttp_client, tmp_path, "a", redis_server, redis_prefix)
    b = await _instance(aiohttp_client, tmp_path, "b", redis_server, redis_prefix)
    return a, b


async def test_an_agent_on_one_instance_sees_the_other_instances_visitor(two):
    (ca, app_a), (cb, app_b) = two
    ws = await ca.ws_connect("/api/v1/live/webchat", headers=AUTH)
    assert json.loads((await ws.receive(timeout=5)).data) == {"type": "snapshot", "chats": []}
    v = await Visitor.connect(cb)  # the visitor's socket is on B
    conv = v.welcome["conversation"]
    chat = await _event(ws, "chat", conversation=conv)
    assert chat["online"] is True and chat["site"] == "shop"
    await v.say("c1", "where is my parcel?")
    msg = await _event(ws, "message", conversation=conv)
    assert msg["text"] == "where is my parcel?" and msg["from"] == "visitor"
    # whichever instance's worker committed it, A's agent gets the ticket
    ticket = await _event(ws, "ticket", conversation=conv, timeout=20)
    assert ticket["ticket_id"]
    # A's snapshot (a new socket, the JSON list) shows B's visitor
    chats = await (await ca.get("/api/v1/live/webchat/chats", headers=AUTH)).json()
    assert [c["conversation"] for c in chats["chats"]] == [conv]
    # the agent on A types and reads: the visitor on B sees both, every agent sees the typing
    await ws.send_str(json.dumps({"type": "typing", "conversation": conv, "on": True}))
    assert (await _event(ws, "ok"))["of"] == "typing"
    assert (await v.expect("typing"))["on"] is True
    typing = await _event(ws, "typing", conversation=conv, **{"from": "agent"})
    assert typing["on"] is True
    await ws.send_str(json.dumps({"type": "read", "conversation": conv, "seq": msg["seq"]}))
    assert (await v.expect("read"))["seq"] == msg["seq"]
    # B's transcript knows the ticket even when A's worker committed it
    await app_a[keys.WORKER].drain()
    await app_b[keys.WORKER].drain()
    for _ in range(100):
        info = (await app_b[keys.CONNECTORS]["webchat"].transcript.conversation(conv))
        if info and info.get("ticket_id") == ticket["ticket_id"]:
            break
        await asyncio.sleep(0.05)
    assert info["ticket_id"] == ticket["ticket_id"]
    for _ in range(100):  # B's own view of its visitor's chat: online, with the ticket
        [mine] = (await (await cb.get("/api/v1/live/webchat/chats", headers=AUTH)).json())["chats"]
        if mine.get("ticket_id"):
            break
        await asyncio.sleep(0.05)
    assert (mine["conversation"], mine["online"], mine["ticket_id"]) == (conv, True, ticket["ticket_id"])
    await v.close()
    await ws.close()


async def test_a_chat_unknown_everywhere_is_refused_and_a_stopped_instance_takes_its_chats_along(
        aiohttp_client, tmp_path, redis_server, redis_prefix):
    ca, app_a = await _instance(aiohttp_client, tmp_path, "a", redis_server, redis_prefix)
    cb, app_b = await _instance(aiohttp_client, tmp_path, "b", redis_server, redis_prefix)
    ws = await ca.ws_connect("/api/v1/live/webchat", headers=AUTH)
    await ws.receive(timeout=5)
    await ws.send_str(json.dumps({"type": "typing", "conversation": "webchat:shop:nobody", "on": True}))
    assert (await _event(ws, "error"))["code"] == "unknown_conversation"
    v = await Visitor.connect(cb)
    conv = v.welcome["conversation"]
    await _event(ws, "chat", conversation=conv)
    await v.close()
    await cb.close()  # B stops: its "bye" drops its chats from A's view
    await _event(ws, "ended", conversation=conv)
    assert app_a[keys.CONNECTORS]["webchat"].hub.chats() == []
    await ws.close()


async def test_a_commit_on_one_instance_wakes_the_console_tail_of_the_other(
        aiohttp_client, tmp_path, redis_server, redis_prefix):
    from gateway.console import CONSOLE

    # A runs no worker: only B commits
    ca, app_a = await _instance(aiohttp_client, tmp_path, "a", redis_server, redis_prefix, pipeline={"workers": 0})
    cb, app_b = await _instance(aiohttp_client, tmp_path, "b", redis_server, redis_prefix)

    bus_a = app_a[CONSOLE].bus
    bus_a.poll_s = 3600.0  # from its next wait on, only a nudge wakes A's tail
    await asyncio.sleep(0.7)  # past the wait it is in now
    q = bus_a.subscribe()
    r = await cb.post("/channels/api/messages", headers=AUTH,
                      json={"external_id": "x1", "sender": {"kind": "email", "value": "a@live.test"}, "text": "hi"})
    assert r.status in (200, 202), await r.text()
    await app_b[keys.WORKER].drain()
    # A's tail read B's commit from Redis (timeline_tail) as soon as B's nudge arrived
    event = await asyncio.wait_for(q.get(), 10)
    assert event["type"] == "timeline" and event["channel"] == "api" and event["ticket_number"] is not None


async def test_an_attachment_ingested_on_one_instance_is_readable_on_the_other(
        aiohttp_client, tmp_path, redis_server, redis_prefix):
    """Small attachments in Redis, big ones on the shared folder; B reads what A's pipeline stored."""
    import base64

    from gateway.outbox import DISPATCHER

    shared = tmp_path / "shared"
    opts = {"store": {"redis_prefix": redis_prefix, "attachments_dir": str(shared), "redis_attachment_max_bytes": 64}}
    ca, app_a = await _instance(aiohttp_client, tmp_path, "a", redis_server, redis_prefix, **opts)
    cb, app_b = await _instance(aiohttp_client, tmp_path, "b", redis_server, redis_prefix, pipeline={"workers": 0},
                                **opts)
    small, big = b"tiny note", b"%PDF-1.4\n" + bytes(range(256)) * 4
    files = [{"name": n, "content_type": "application/octet-stream", "data_base64": base64.b64encode(d).decode()}
             for n, d in (("small.txt", small), ("big.pdf", big))]
    r = await cb.post("/channels/api/messages", headers=AUTH, json={
        "external_id": "att1", "sender": {"kind": "email", "value": "files@live.test"}, "text": "two files",
        "attachments": files})
    assert r.status == 202, await r.text()
    await app_a[keys.WORKER].drain()  # only A's worker runs: A's pipeline stores the attachments
    store = app_b[keys.STORE]
    for _ in range(200):
        journal = await store.journal_list(status="processed")
        if journal:
            break
        await asyncio.sleep(0.05)
    [entry] = journal
    [e] = (await store.timeline(contact_id=entry.contact_id)).items
    refs = {a.name: a.storage_ref for a in e.attachments}
    b_files = app_b[DISPATCHER].attachments
    assert await b_files.aget(refs["small.txt"]) == small
    assert await b_files.aget(refs["big.pdf"]) == big
    assert (shared / refs["big.pdf"][:2] / refs["big.pdf"][2:]).read_bytes() == big  # above the size: the folder
    assert not (shared / refs["small.txt"][:2]).exists()  # below it: Redis only
    assert not any((tmp_path / "a" / "data").rglob("attachments/*/*"))  # nothing on A's own disk


async def test_nudges_waiting_to_be_published_are_one(redis_server, redis_prefix):
    """A busy instance's commits wake the other instances' console tails once per publish, not once per commit."""
    import redis.asyncio as aioredis

    from gateway.fanout import RedisFanout

    r = aioredis.Redis.from_url(redis_server.url)
    a, b = RedisFanout(r, f"{redis_prefix}live"), RedisFanout(r, f"{redis_prefix}live")
    got: list[str] = []
    done = asyncio.Event()
    b.on("nudge", lambda d, s: got.append("nudge"))
    b.on("hub", lambda d, s: done.set())
    task_b = asyncio.create_task(b.run())
    await asyncio.wait_for(b.subscribed.wait(), 10)
    for _ in range(100):
        a.send("nudge", {})
    a.send("hub", {"type": "marker"})
    task_a = asyncio.create_task(a.run())
    try:
        await asyncio.wait_for(done.wait(), 10)  # published in order: every nudge came before it
        assert got == ["nudge"]
    finally:
        await cancel_and_wait(task_a, task_b)
        await r.aclose()


async def test_the_chats_of_an_instance_that_died_without_a_word_are_dropped(two):
    """SIGKILL sends no "bye": chats are kept while their instance names them every round, dropped after
    three rounds of silence."""
    (ca, app_a), (cb, app_b) = two
    fa, fb = app_a[FANOUT], app_b[FANOUT]
    hub_a = app_a[keys.CONNECTORS]["webchat"].hub
    ws = await ca.ws_connect("/api/v1/live/webchat", headers=AUTH)
    await ws.receive(timeout=5)
    v = await Visitor.connect(cb)
    conv = v.welcome["conversation"]
    await _event(ws, "chat", conversation=conv)
    heard = asyncio.Event()
    alive = fa.handlers["alive"]
    fa.on("alive", lambda d, s: (alive(d, s), heard.set()))
    for _ in range(5):  # B alive: named every round
        heard.clear()
        for job in fb.periodic:
            job()
        await asyncio.wait_for(heard.wait(), 10)
        for job in fa.periodic:
            job()
    assert [c["conversation"] for c in hub_a.chats()] == [conv]
    await cancel_and_wait(fb.task)  # B dies: no bye, no more rounds
    for _ in range(4):
        for job in fa.periodic:
            job()
    await _event(ws, "ended", conversation=conv)
    assert hub_a.chats() == []
    await v.close()
    await ws.close()


async def test_the_fanout_subscribes_again_after_redis_restarts(tmp_path):
    """Redis restarted: each instance subscribes again by itself and asks the others for their chats."""
    import redis.asyncio as aioredis

    from gateway.fanout import RedisFanout
    from tests.integration.redis import RedisServer

    server = RedisServer(tmp_path).start()
    r = aioredis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=1)
    a, b = RedisFanout(r, "og:live"), RedisFanout(r, "og:live")
    seen: list[dict] = []
    hellos: list[str] = []
    b.on("hub", lambda d, s: seen.append(d))
    a.on("hello", lambda d, s: hellos.append(s))
    tasks = [asyncio.create_task(f.run()) for f in (a, b)]
    try:
        await asyncio.wait_for(asyncio.gather(a.subscribed.wait(), b.subscribed.wait()), 10)
        server.kill()
        for _ in range(100):
            if not b.subscribed.is_set():
                break
            await asyncio.sleep(0.05)
        assert not b.subscribed.is_set()
        server.start()  # same port, same AOF
        await asyncio.wait_for(b.subscribed.wait(), 20)
        for _ in range(200):  # B's hello after subscribing again reaches A
            if b.instance in hellos:
                break
            await asyncio.sleep(0.05)
        assert b.instance in hellos
        a.send("hub", {"type": "chat", "conversation": "webchat:shop:v1"})
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.05)
        assert seen == [{"type": "chat", "conversation": "webchat:shop:v1"}]
    finally:
        await cancel_and_wait(*tasks)
        await r.aclose()
        server.stop()
