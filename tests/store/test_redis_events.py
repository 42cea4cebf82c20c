"""Events on the Redis backend are written by the script that makes the
change, with the ticket and message as that script left them (what SQLite's
``insert_events`` does inside the commit transaction)."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from gateway.store.base import REPLY_TOPIC, Delivery
from gateway.store.redis_webhooks import event_data
from routing.pipeline import Settings, decide, lookup
from routing.state import OutboxEvent
from tests.store.test_redis import NOW, decide_and_commit, msg, stores  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


async def events(store) -> list[dict]:
    out = []
    for _sid, raw in await store.r.xrange(store.k.events):
        f = {k.decode(): v.decode() for k, v in raw.items()}
        out.append({"type": f["topic"], "id": f["id"], "data": event_data(f)})
    return out


async def test_each_event_carries_the_ticket_as_its_own_commit_left_it(stores):
    s = stores()
    for ext, text in (("m1", "where is my refund?"), ("m2", "and my invoice?")):
        await decide_and_commit(s, (await s.journal_append("api", "api", ext, b"{}")).journal_id,
                                msg(ext, text=text))
    evs = await events(s)
    created = [e for e in evs if e["type"] == "message.created"]
    assert [e["data"]["message"]["text"] for e in created] == ["where is my refund?", "and my invoice?"]
    assert [e["data"]["ticket"]["version"] for e in created] == [1, 2]  # as committed, not as it is now
    first = next(e for e in evs if e["type"] == "ticket.created")
    assert first["data"]["ticket"]["number"] >= 1000 and first["data"]["ticket"]["status"] == "new"
    assert await s.webhook_outbox_end() == (await s.r.xrevrange(s.k.events, count=1))[0][0].decode()


async def test_a_settled_send_writes_message_status_in_the_same_script(stores):
    s = stores()
    j = (await s.journal_append("api", "api", "m1", b"{}")).journal_id
    m = msg("m1")
    settings = Settings()
    look = lookup(m, settings)
    c = decide(m, j, await s.snapshot(look, NOW), settings, look)
    c.outbox.append(OutboxEvent(REPLY_TOPIC, {"text": "hello"}, c.ticket_id))
    await s.commit(c)
    (item,) = await s.outbox_claim(REPLY_TOPIC, 10, 30)
    # the reply's timeline entry (written by reply_create on the real path): the inbound one stands in
    await s.r.hset(s.k.outbox_item(item.id), "timeline_id", c.message_entry_id)
    item = msgspec.structs.replace(item, timeline_id=c.message_entry_id)
    before = len(await events(s))
    at = NOW + timedelta(seconds=2)
    assert await s.outbox_settle(item, Delivery(status="sent", at=at, attempts=1, external_id="x-1"))
    (ev,) = (await events(s))[before:]
    assert ev["type"] == "message.status" and ev["data"]["status"] == "sent" and ev["data"]["source"] == "send"
    assert ev["data"]["message"]["delivery"]["status"] == "sent"  # the entry as the same script updated it
    assert ev["data"]["ticket"]["id"] == c.ticket_id
