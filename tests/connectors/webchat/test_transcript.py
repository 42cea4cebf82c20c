"""The webchat's durable state (TranscriptStore), the same tests on both
implementations: ``webchat.db`` (LocalTranscript) and Redis (RedisTranscript,
a real redis-server; marker ``integration``)."""

from __future__ import annotations

import asyncio
import json

import pytest

from connectors.webchat.transcript import LocalTranscript
from gateway import keys
from tests.connectors.webchat.conftest import ORIGIN

CONV = "webchat:shop:v1"


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
async def transcript(request, tmp_path):
    if request.param == "sqlite":
        t = LocalTranscript(tmp_path)
        yield t
        await t.close()
        return
    from connectors.webchat.redis_transcript import RedisTranscript
    from gateway.store.redis_store import RedisStore

    server = request.getfixturevalue("redis_server")
    store = RedisStore(server.url, prefix=request.getfixturevalue("redis_prefix"))
    yield RedisTranscript(store.r, store.k)
    await store.close()


async def test_frames_are_numbered_once_per_ref_and_paged(transcript):
    await transcript.touch(CONV, "shop", "v1", 1000, name="Wang")
    f1, new1 = await transcript.add(CONV, "c1", "visitor", "hello", 1001, journal_id="j1",
                                    files=[{"name": "a.png", "content_type": "image/png", "size": 3, "sha256": "a" * 64}])
    again, new_again = await transcript.add(CONV, "c1", "visitor", "hello (resent)", 1002)
    f2, _ = await transcript.add(CONV, "r1", "agent", "hi, how can I help?", 1003, author="ann")
    assert (f1.seq, new1, again.seq, new_again, again.text, f2.seq) == (1, True, 1, False, "hello", 2)
    assert [f.public(CONV) for f in await transcript.history(CONV)] == [
        {"type": "message", "conversation": CONV, "seq": 1, "from": "visitor", "text": "hello", "at": 1001,
         "cid": "c1", "journal_id": "j1",
         "files": [{"name": "a.png", "content_type": "image/png", "size": 3, "sha256": "a" * 64}]},
        {"type": "message", "conversation": CONV, "seq": 2, "from": "agent", "text": "hi, how can I help?",
         "at": 1003, "author": "ann"}]
    assert [f.seq for f in await transcript.history(CONV, after=1)] == [2]
    assert [f.seq for f in await transcript.history(CONV, limit=1)] == [2]  # the newest
    assert await transcript.has_file(CONV, "a" * 64) and not await transcript.has_file(CONV, "b" * 64)
    assert not await transcript.has_file("webchat:shop:other", "a" * 64)
    info = await transcript.conversation(CONV)
    assert (info["site"], info["visitor"], info["name"], info["last_seq"], info["last_activity_ms"]) == (
        "shop", "v1", "Wang", 2, 1003)
    assert await transcript.conversation("webchat:shop:nobody") is None


async def test_two_writers_at_once_never_share_a_number(transcript):
    await transcript.touch(CONV, "shop", "v1", 1000)
    made = await asyncio.gather(*(transcript.add(CONV, f"c{i}", "visitor", str(i), 1000 + i) for i in range(30)))
    assert sorted(f.seq for f, _ in made) == list(range(1, 31))


async def test_read_marks_only_rise_and_stay_within_the_frames(transcript):
    await transcript.touch(CONV, "shop", "v1", 1000)
    for i in range(3):
        await transcript.add(CONV, f"c{i}", "visitor", "x", 1000 + i)
    assert await transcript.mark(CONV, "agent_read_seq", 2)
    assert not await transcript.mark(CONV, "agent_read_seq", 1)  # never lower
    assert not await transcript.mark(CONV, "agent_read_seq", 2)  # no move
    assert not await transcript.mark(CONV, "visitor_read_seq", 9)  # past the last frame
    assert not await transcript.mark("webchat:shop:nobody", "visitor_read_seq", 1)
    info = await transcript.conversation(CONV)
    assert (info["agent_read_seq"], info["visitor_read_seq"]) == (2, 0)


async def test_the_profile_and_ticket_are_kept_and_a_later_touch_keeps_what_it_does_not_say(transcript):
    await transcript.touch(CONV, "shop", "v1", 1000, name="Wang", email="wang@example.com")
    await transcript.touch(CONV, "shop", "v1", 2000)
    await transcript.set_ticket(CONV, "T1")
    await transcript.set_ticket("webchat:shop:nobody", "T2")  # no such conversation: nothing made
    info = await transcript.conversation(CONV)
    assert (info["name"], info["email"], info["ticket_id"], info["last_activity_ms"]) == (
        "Wang", "wang@example.com", "T1", 1000)
    assert await transcript.conversation("webchat:shop:nobody") is None


async def test_idle_conversations_end_once_and_unseen_replies_are_mailed_once(transcript):
    other = "webchat:shop:v2"
    await transcript.touch(CONV, "shop", "v1", 1000, email="wang@example.com")
    await transcript.touch(other, "shop", "v2", 1000)  # left no email
    await transcript.add(CONV, "c1", "visitor", "hi", 1000)
    await transcript.add(CONV, "r1", "agent", "one", 1100)
    await transcript.add(CONV, "r2", "agent", "two", 1200)
    await transcript.add(other, "r9", "agent", "nobody to mail", 1100)
    assert await transcript.idle(1000) == []
    assert sorted(await transcript.idle(5000)) == [(CONV, "shop", "v1", 3), (other, "shop", "v2", 1)]
    await transcript.ended(CONV, 3)
    assert await transcript.idle(5000) == [(other, "shop", "v2", 1)]
    await transcript.add(CONV, "c2", "visitor", "back again", 6000)  # a new frame: active again
    assert await transcript.idle(5000) == [(other, "shop", "v2", 1)]
    assert sorted(i[0] for i in await transcript.idle(7000)) == sorted([CONV, other])

    assert [(c, e, f.seq) for c, e, f in await transcript.unseen_agent_frames(1150)] == [
        (CONV, "wang@example.com", 2)]
    assert await transcript.mark(CONV, "visitor_read_seq", 2)  # the visitor saw "one"
    unseen = await transcript.unseen_agent_frames(5000)
    assert [(c, f.seq, f.text) for c, _, f in unseen] == [(CONV, 3, "two")]
    await transcript.emailed(CONV, [3])
    assert await transcript.unseen_agent_frames(5000) == []


async def test_the_visitor_key_is_made_once(transcript):
    key = await transcript.visitor_key()
    assert len(key) == 32 and await transcript.visitor_key() == key


@pytest.mark.integration
async def test_omnigate_migrate_moves_a_single_nodes_webchat_state_to_redis(tmp_path, redis_server, redis_prefix):
    """The ``webchat`` step of ``omnigate migrate``: histories, read marks, mailed flags,
    the visitor-token key and the files, so visitors' tokens and conversations survive."""
    from connectors.webchat.client import FileStore
    from connectors.webchat.redis_transcript import RedisTranscript, import_local
    from gateway.commands.migrate import STEPS
    from gateway.store.redis_attachments import SharedAttachments
    from gateway.store.redis_store import RedisStore

    assert "webchat" in [s.name for s in STEPS]
    local = LocalTranscript(tmp_path)
    other = "webchat:shop:v2"
    await local.touch(CONV, "shop", "v1", 1000, name="Wang", email="wang@example.com")
    await local.add(CONV, "c1", "visitor", "hi", 1000, files=[{"name": "s.png", "content_type": "image/png",
                                                                "size": 4, "sha256": "c" * 64}])
    for i in range(3):
        await local.add(CONV, f"r{i}", "agent", f"reply {i}", 1100 + i, author="ann")
    await local.mark(CONV, "visitor_read_seq", 2)
    await local.emailed(CONV, [3])
    await local.set_ticket(CONV, "T1")
    await local.touch(other, "shop", "v2", 900)
    await local.add(other, "c1", "visitor", "bye", 900)
    await local.ended(other, 1)
    sha = await FileStore(tmp_path / "webchat-files").aput(b"%PDF-1.4\n")
    key = await local.visitor_key()

    store = RedisStore(redis_server.url, prefix=redis_prefix)
    try:
        files = SharedAttachments(store, None)
        assert await import_local(tmp_path, store.r, store.k, files) == 2
        assert await import_local(tmp_path, store.r, store.k, files) == 2  # again: the same state
        moved = RedisTranscript(store.r, store.k)
        assert await moved.visitor_key() == key
        assert await files.aget(sha) == b"%PDF-1.4\n"
        for conv in (CONV, other):
            assert await moved.conversation(conv) == await local.conversation(conv)
            assert [f.public(conv) for f in await moved.history(conv)] == \
                [f.public(conv) for f in await local.history(conv)]
        assert await moved.has_file(CONV, "c" * 64)
        assert await moved.idle(5000) == await local.idle(5000) == [(CONV, "shop", "v1", 4)]
        assert [(c, f.seq) for c, _, f in await moved.unseen_agent_frames(5000)] == [(CONV, 4)]
        frame, created = await moved.add(CONV, "c5", "visitor", "after the move", 6000)
        assert (frame.seq, created) == (5, True)  # numbering continues
    finally:
        await store.close()
    await local.close()


@pytest.mark.integration
async def test_redis_down_is_unavailable_and_the_visitor_is_told_to_come_back(chat):
    """No Redis: the transcript says Unavailable (not a stray redis error); the connector
    then closes the widget's transport with 1011 and a reason (it reconnects and resends)."""
    from connectors.webchat.redis_transcript import RedisTranscript
    from connectors.webchat.transcript import Unavailable
    from gateway.store.redis_store import RedisStore
    from tests.integration.redis import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", prefix="og:down:")
    try:
        t = RedisTranscript(store.r, store.k)
        with pytest.raises(Unavailable):
            await t.conversation(CONV)
        with pytest.raises(Unavailable):
            await t.add(CONV, "c1", "visitor", "hi", 1)
    finally:
        await store.close()
    client, app = chat
    conn = app[keys.CONNECTORS]["webchat"]

    async def down(*a, **kw):
        raise Unavailable("redis unavailable: ConnectionError")

    conn.transcript.touch = down  # the state unreachable as the visitor says hello
    ws = await client.ws_connect("/channels/webchat/ws?site=shop", headers={"Origin": ORIGIN})
    await ws.send_str(json.dumps({"type": "hello", "lang": "en"}))
    error = json.loads((await ws.receive(timeout=10)).data)
    assert (error["type"], error["code"]) == ("error", "closed") and "unavailable" in error["reason"]
    closing = await ws.receive(timeout=10)
    assert closing.type.name in ("CLOSE", "CLOSED") and ws.close_code == 1011
