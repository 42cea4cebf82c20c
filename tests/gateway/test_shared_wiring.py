"""The daemon picks the shared implementations on Redis and the in-process
ones on SQLite (gateway/ownership.py, gateway/shared.py, gateway/order.py),
and /readyz shows this instance's leases."""

from __future__ import annotations

import pytest

from gateway import keys
from gateway.app import create_app
from gateway.auth import AUTH
from gateway.order import LocalOrder, RedisOrder
from gateway.ownership import OWNERSHIP, AlwaysOwner, LeaseOwnership
from gateway.shared import RULES_SYNC
from tests.gateway.conftest import make_config


async def test_one_process_keeps_everything_to_itself(aiohttp_client, tmp_path):
    app = create_app(make_config(tmp_path))
    assert isinstance(app[OWNERSHIP], AlwaysOwner) and not app[RULES_SYNC].shared
    assert app[AUTH].shared_limiter is None
    assert isinstance(app[keys.WORKER].pipeline.order, LocalOrder)
    client = await aiohttp_client(app)
    body = await (await client.get("/readyz")).json()
    assert body["detail"]["leases"] == {"ok": True, "holder": "local", "leases": {}}


@pytest.mark.integration
async def test_instances_on_redis_share_order_leases_limits_and_rules(aiohttp_client, tmp_path, redis_server,
                                                                      redis_prefix):
    from gateway.shared import RedisLimiter
    from gateway.store.redis_store import RedisStore

    store = RedisStore(redis_server.url, prefix=redis_prefix, consumer="host-a:8686")
    app = create_app(make_config(tmp_path), store=store)
    assert isinstance(app[OWNERSHIP], LeaseOwnership) and app[OWNERSHIP].holder == "host-a:8686"
    assert app[RULES_SYNC].shared
    assert isinstance(app[AUTH].shared_limiter, RedisLimiter)
    assert isinstance(app[keys.WORKER].pipeline.order, RedisOrder)
    client = await aiohttp_client(app)
    body = await (await client.get("/readyz")).json()
    assert body["detail"]["leases"] == {"ok": True, "holder": "host-a:8686", "leases": {}}
