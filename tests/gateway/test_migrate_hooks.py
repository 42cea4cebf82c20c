"""``omnigate migrate`` moves outbound webhooks (endpoints, queued rows, dead
letters, the delivery log, the events), help-desk links and seen comments,
canned replies and live console sessions to Redis; a Redis store then reads
them as the SQLite one did, replays a dead letter and delivers what was
queued."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gateway.store.redis_store import RedisStore
from gateway.store.sqlite import SQLiteStore
from tests.gateway.test_migrate import migrate, single_node  # noqa: F401 - the fixture
from tests.gateway.webhook_receiver import SECRET

pytestmark = pytest.mark.integration


async def test_webhooks_desks_and_console_move_to_redis(single_node, redis_server, redis_prefix):  # noqa: F811
    data_dir, _ = single_node
    now = datetime.now(timezone.utc).replace(microsecond=0)
    s = SQLiteStore.in_dir(data_dir)
    await s.webhook_upsert("crm", {"url": "http://127.0.0.1:9/hook", "secret": SECRET, "allow_private": True,
                                   "events": ["ticket."]}, source="api", now=now)
    await s.webhook_event_insert("ticket.created", "T1", {"ticket_id": "T1", "n": 0}, now)
    await s.webhook_event_insert("ticket.updated", "T1", {"ticket_id": "T1", "n": 1}, now)
    await s.webhook_event_insert("ticket.created", "T2", {"ticket_id": "T2", "n": 2}, now)
    await s.webhook_fanout(now)
    claimed = await s.webhook_claim(10, 30, now, 100)  # both tickets' heads
    assert sorted(i.order_key for i in claimed) == ["T1", "T2"]
    dead = next(i for i in claimed if i.order_key == "T2")
    await s.webhook_settle(dead, "dead", now=now, code=500, error="HTTP 500")
    heads = [i for i in claimed if i.order_key == "T1"]  # left "sending": a stopped daemon's lease
    await s.desk_link_set("hd", "T1", "501", owned=True)
    await s.desk_seen_add("hd", "c9", "T1", "desk")
    canned = await s.canned_put("refund", "Your refund is on its way", "en", "admin", now)
    cookie, csrf = await s.session_create("a1", "agent", None, "boot", now, now + timedelta(hours=8))
    expected = {"endpoints": [{k: v for k, v in e.items() if k != "cursor"} for e in await s.webhook_endpoints()],
                "dead": await s.webhook_dead("crm"), "log": await s.webhook_deliveries("crm"),
                "stats": await s.webhook_queue_stats()}
    await s.close()

    r = migrate(data_dir, redis_server.url, "--prefix", redis_prefix)
    assert r.returncode == 0, r.stderr
    assert "webhooks:" in r.stdout and "desks: 2" in r.stdout and "console: 2" in r.stdout

    rs = RedisStore(redis_server.url, prefix=redis_prefix)
    try:
        assert [{k: v for k, v in e.items() if k != "cursor"} for e in await rs.webhook_endpoints()] == \
            expected["endpoints"]
        assert await rs.webhook_dead("crm") == expected["dead"]
        assert await rs.webhook_deliveries("crm") == expected["log"]
        assert await rs.webhook_queue_stats() == expected["stats"]
        # the stopped daemon's lease is gone: T1's head is due now, then its next row, in order
        later = now + timedelta(minutes=2)  # after the migration ran (it made the row due at its own now)
        got = await rs.webhook_claim(10, 30, later, 100)
        assert [(i.order_key, i.payload["n"]) for i in got] == [("T1", 0)]
        nxt = await rs.webhook_settle(got[0], "delivered", now=later, chain_lease_s=30)
        assert nxt.payload["n"] == 1 and nxt.payload["ticket_id"] == "T1"
        # the dead letter replays (its event kept its payload), and an event is found by id in the stream
        assert await rs.webhook_replay("crm", event_id=dead.event_id, now=now) == 1
        assert await rs.webhook_replay("crm", event_id=heads[0].event_id, now=now) == 1  # delivered: sent again
        # a new endpoint starts after the migrated events; a new event goes after them in the stream
        await rs.webhook_event_insert("ticket.created", "T3", {"ticket_id": "T3", "n": 3}, now)
        ids = [i.decode() for i, _ in await rs.r.xrange(rs.k.events)]
        assert ids[0].startswith("0-") and not ids[-1].startswith("0-")
        assert await rs.desk_link("hd", "T1") == "501" and await rs.desk_ticket_of("hd", "501") == "T1"
        assert await rs.desk_owned_ticket("T1") and await rs.desk_seen("hd", ["c9", "c8"]) == {"c9"}
        assert [(c.id, c.name, c.text) for c in await rs.canned_list()] == [(canned.id, "refund", canned.text)]
        session = await rs.session_get(cookie, now + timedelta(hours=1))
        assert session is not None and (session.agent_id, session.csrf) == ("a1", csrf)
    finally:
        await rs.close()
