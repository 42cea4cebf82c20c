"""The help-desk sync on one real Redis, against the Zammad stand-in on
loopback: a gateway on Redis makes one desk ticket for a WeChat message and a
comment for the follow-up (the desk's deliveries are webhook deliveries:
leased, once per event); and the way back with two instances following the
desk at once — an agent's comment reaches the customer once (one instance at
a time holds the desk's lease), and a later round relays nothing again.

Replies on the Redis backend are another part of issue 19 (``reply_create``
in NOT_YET here): for the way back the store records what the sync hands it."""

from __future__ import annotations

import asyncio
from datetime import timezone

import pytest

from gateway.config import load
from gateway.desks.service import DeskSync
from gateway.store.redis_store import RedisStore
from tests.clock import BUSINESS_HOURS, INSTANTS, FakeClock
from tests.desks.conftest import DESK_TOKEN, wait_for
from tests.desks.test_sync import customer_comments
from tests.standins.desk_common import iso
from tests.standins.zammad_api import ZammadApiStandin

pytestmark = pytest.mark.integration


class Instance(RedisStore):
    """One instance's store; ``reply_create`` records the reply the sync sends."""

    sent: list[tuple[str, str]]

    async def reply_create(self, ticket_id, draft, *args, **kw):
        await asyncio.sleep(0.05)  # a real reply is a write: the other instance runs meanwhile
        self.sent.append((ticket_id, draft.text))


async def test_two_instances_relay_a_desk_comment_once(aiohttp_server, redis_server, redis_prefix):
    clock = FakeClock(INSTANTS[BUSINESS_HOURS].astimezone(timezone.utc))
    desk = ZammadApiStandin(DESK_TOKEN, clock)
    server = await aiohttp_server(desk.app(), host="127.0.0.1")
    desk.base = str(server.make_url("")).rstrip("/")
    customer = desk.user({"email": "c@example.cn", "role": "Customer"})
    did = desk.new_id()
    desk.tickets[did] = {"id": did, "number": str(31000 + did), "title": "refund", "group": None,
                         "customer_id": customer, "state": "open", "tags": [], "note": None, "article_ids": [],
                         "created_at": iso(clock()), "updated_at": iso(clock())}
    desk.agent_reply(did, "Your refund is on its way")
    desks = load(None, environ={}, flags={"desks": {"hd": {
        "kind": "zammad", "url": desk.base, "token": DESK_TOKEN, "allow_private": True, "mode": "poll",
        "timeout": "2s"}}}).desks
    sent: list[tuple[str, str]] = []
    stores = [Instance(redis_server.url, prefix=redis_prefix, clock=clock) for _ in range(2)]
    syncs = []
    try:
        for s in stores:
            s.sent = sent
            syncs.append(DeskSync(s, None, desks, clock=clock))
        await stores[0].desk_link_set("hd", "T1", str(did))
        await stores[0].state_set("desk:hd:cursor", iso(clock()))  # the way back follows from here
        relayed = await asyncio.gather(*(y.sync("hd") for y in syncs))
        assert sorted(relayed) == [0, 1] and sent == [("T1", "Your refund is on its way")]
        assert await stores[1].lease_holder("desk:hd:sync") is None  # released after the round
        assert await asyncio.gather(*(y.sync("hd") for y in syncs)) == [0, 0]  # seen: not again
        assert len(sent) == 1
    finally:
        for y in syncs:
            await y.close()
        for s in stores:
            await s.close()


async def test_on_redis_a_wechat_message_makes_one_desk_ticket_and_the_follow_up_a_comment(
        make_rig, redis_server, redis_prefix):
    rig = await make_rig("zammad", env_extra={"OMNIGATE_REDIS_URL": redis_server.url,
                                              "OMNIGATE_STORE__REDIS_PREFIX": redis_prefix})
    assert rig.store.backend == "redis"
    await rig.wechat_message("我的订单还没到", 9001)
    desk_t = await rig.desk_ticket()
    links = await wait_for(lambda: rig.store.desk_links("hd"))
    assert [d for _, d in links] == [str(desk_t["id"])]
    await rig.wechat_message("能帮我查一下吗", 9002)
    await wait_for(lambda: customer_comments(rig, desk_t["id"]), lambda c: c == ["我的订单还没到", "能帮我查一下吗"])
    assert rig.desk.created_count() == 1
