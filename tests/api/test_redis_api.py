"""The REST API on the Redis backend: two apps (two instances) on one real
redis-server, each request answered from the shared state — lists with
filters and cursors, patches with ``If-Match`` across instances, a token
revoked on one instance refused at once by the other, a reply."""

from __future__ import annotations

import asyncio

import pytest

from gateway import keys
from gateway.app import create_app
from gateway.config import load
from gateway.store.base import REPLY_TOPIC
from tests.gateway.conftest import AUTH, TOKEN, business_hours
from tests.replies.test_api import Accepting

pytestmark = pytest.mark.integration


@pytest.fixture
async def two(aiohttp_client, tmp_path, redis_server, redis_prefix):
    """Clients of two apps on one Redis (their own data folders, one key prefix)."""
    clients = []
    for name in ("a", "b"):
        env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / name),
               "OMNIGATE_RULES_DIR": str(tmp_path / "no-rules"), "OMNIGATE_REDIS_URL": redis_server.url,
               "OMNIGATE_STORE__REDIS_PREFIX": redis_prefix}
        config = load(None, environ=env, flags={"listen": f"127.0.0.1:{len(clients) + 1}"})
        app = create_app(config, clock=business_hours())
        clients.append(await aiohttp_client(app))
        app[keys.CONNECTORS]["api"] = Accepting()  # after start-up (it has no run loop)
    return clients


async def settled(client, n: int) -> list[dict]:
    """The journal once ``n`` entries are processed (by either instance)."""
    for _ in range(400):
        items = (await (await client.get("/api/v1/journal", headers=AUTH)).json())["items"]
        if len(items) == n and all(e["status"] == "processed" for e in items):
            return items
        await asyncio.sleep(0.02)
    raise AssertionError(f"not processed: {items}")


async def tickets(a, b, n: int) -> list[str]:
    for i in range(n):
        body = {"external_id": f"m{i}", "sender": {"kind": "email", "value": f"u{i}@example.cn"},
                "text": f"question {i}"}
        assert (await (a if i % 2 else b).post("/channels/api/messages", json=body, headers=AUTH)).status == 202
    return [e["ticket_id"] for e in await settled(a, n)]


async def walk(client, query: str, limit: int) -> list[int]:
    out, cursor = [], None
    while True:
        url = f"/api/v1/tickets?{query}&limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        r = await client.get(url, headers=AUTH)
        assert r.status == 200, await r.text()
        page = await r.json()
        out += [t["number"] for t in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            return out


async def test_lists_with_filters_and_cursors_from_either_instance(two):
    a, b = two
    ids = await tickets(a, b, 6)
    numbers = {}
    for tid in ids:
        numbers[tid] = (await (await a.get(f"/api/v1/tickets/{tid}", headers=AUTH)).json())["number"]
    by_number = sorted(ids, key=numbers.get)
    # (through one instance: each app has a clock of its own, and the updated sort follows it)
    for i, (tid, prio) in enumerate(zip(by_number, ["low", "urgent", "normal", "high", "urgent", "normal"])):
        r = await a.patch(f"/api/v1/tickets/{tid}", json={"priority": prio, "tags": [f"g{i % 2}"]}, headers=AUTH)
        assert r.status == 200, await r.text()
    rec = {t: await (await b.get(f"/api/v1/tickets/{t}", headers=AUTH)).json() for t in ids}
    rank = {"urgent": 0, "high": 1, "normal": 2, "low": 3}

    def expect(pick) -> list[int]:  # the contract: priority, then age, then id
        chosen = [r for r in rec.values() if pick(r)]
        return [r["number"] for r in sorted(chosen, key=lambda r: (rank[r["priority"]], r["created_at"], r["id"]))]

    assert await walk(a, "sort=priority", 2) == expect(lambda r: True)
    assert await walk(b, "priority=urgent&priority=high", 1) == expect(lambda r: r["priority"] in ("urgent", "high"))
    assert len(expect(lambda r: r["priority"] in ("urgent", "high"))) == 3
    assert await walk(b, "tag=g1&sort=priority", 1) == expect(lambda r: "g1" in r["tags"])
    n = [numbers[t] for t in by_number]
    assert await walk(a, "status=new&sort=updated", 4) == [n[5], n[4], n[3], n[2], n[1], n[0]]
    r = await a.get("/api/v1/tickets?cursor=bm9wZQ", headers=AUTH)
    assert r.status == 400


async def test_a_patch_with_a_stale_etag_from_the_other_instance_is_refused(two):
    a, b = two
    (tid,) = await tickets(a, b, 1)
    r = await b.get(f"/api/v1/tickets/{tid}", headers=AUTH)
    etag = r.headers["ETag"]
    r = await a.patch(f"/api/v1/tickets/{tid}", json={"priority": "high"}, headers={**AUTH, "If-Match": etag})
    assert r.status == 200 and r.headers["ETag"] != etag
    r = await b.patch(f"/api/v1/tickets/{tid}", json={"priority": "low"}, headers={**AUTH, "If-Match": etag})
    assert r.status == 412 and (await r.json())["status"] == 412
    assert (await (await b.get(f"/api/v1/tickets/{tid}", headers=AUTH)).json())["priority"] == "high"
    r = await b.patch(f"/api/v1/tickets/{tid}", json={"status": "solved"}, headers=AUTH)
    assert r.status == 200
    assert (await a.patch(f"/api/v1/tickets/{tid}", json={"status": "closed"}, headers=AUTH)).status == 200
    r = await a.patch(f"/api/v1/tickets/{tid}", json={"status": "open"}, headers=AUTH)
    assert r.status == 409  # closed is final


async def test_a_token_revoked_on_one_instance_is_refused_by_the_other_at_once(two):
    a, b = two
    r = await a.post("/api/v1/tokens", json={"agent_id": "ops", "role": "admin"}, headers=AUTH)
    assert r.status == 201, await r.text()
    made = await r.json()
    mine = {"Authorization": f"Bearer {made['token']}"}
    assert (await b.get("/api/v1/tickets", headers=mine)).status == 200  # b caches the token now
    listed = (await (await b.get("/api/v1/tokens", headers=AUTH)).json())["items"]
    assert [t["id"] for t in listed] == [made["id"]]
    assert (await a.delete(f"/api/v1/tokens/{made['id']}", headers=AUTH)).status == 200
    r = await b.get("/api/v1/tickets", headers=mine)
    assert r.status == 401 and "revoked" in (await r.json())["detail"]


async def test_a_reply_through_one_instance_is_on_the_ticket_for_both(two):
    a, b = two
    (tid,) = await tickets(a, b, 1)
    r = await b.post(f"/api/v1/tickets/{tid}/replies", json={"text": "We are on it", "author": "agent-1"},
                     headers=AUTH)
    assert r.status in (201, 202), await r.text()
    entry = await r.json()
    timeline = (await (await a.get(f"/api/v1/tickets/{tid}/timeline", headers=AUTH)).json())["items"]
    assert [i["kind"] for i in timeline][-1] == "message_out"
    ticket = await (await a.get(f"/api/v1/tickets/{tid}", headers=AUTH)).json()
    assert ticket["status"] == "open"
    sent = []
    for _ in range(200):  # either instance's dispatcher sends it, once
        sent = [o for c in (a, b) for o in c.app[keys.CONNECTORS]["api"].sent]
        if sent:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    sent = [o for c in (a, b) for o in c.app[keys.CONNECTORS]["api"].sent]
    assert [o.text for o in sent] == ["We are on it"]
    assert entry.get("id") or entry
    assert await a.app[keys.STORE].outbox_next_due(REPLY_TOPIC) is None
