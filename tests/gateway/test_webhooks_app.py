"""Webhooks through the running gateway: committed snapshots from the real
pipeline, /api/v1/webhooks, and the API channel's reply path."""

from __future__ import annotations

import asyncio

import pytest

from gateway import keys
from gateway.app import create_app
from gateway.config import load
from gateway.webhooks.catalogue import EVENTS, openapi_webhooks
from tests.gateway.conftest import AUTH, TOKEN
from tests.gateway.webhook_receiver import SECRET, Receiver


def config(tmp_path, url: str, backend: dict | None = None, **flags):
    env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data"),
           "OMNIGATE_RULES_DIR": str(tmp_path / "no-rules"),
           "OMNIGATE_WEBHOOKS__ENDPOINTS__CRM__URL": url, "OMNIGATE_WEBHOOKS__ENDPOINTS__CRM__SECRET": SECRET,
           "OMNIGATE_WEBHOOKS__ENDPOINTS__CRM__ALLOW_PRIVATE": "true", **(backend or {})}
    return load(None, environ=env, flags=flags)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def backend(request) -> dict:
    """The store's environment: SQLite in the data folder, or a real Redis (a prefix of its own)."""
    if request.param == "sqlite":
        return {}
    return {"OMNIGATE_REDIS_URL": request.getfixturevalue("redis_server").url,
            "OMNIGATE_STORE__REDIS_PREFIX": request.getfixturevalue("redis_prefix")}


async def until(cond, timeout: float = 15.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def msg(ext: str, text: str = "我要退款，订单 123") -> dict:
    return {"external_id": ext, "sender": {"kind": "phone", "value": "13800138000"}, "text": text}


async def test_events_carry_the_ticket_and_message_as_committed(aiohttp_client, tmp_path, backend):
    r = await Receiver().start()
    try:
        app = create_app(config(tmp_path, r.url, backend))
        client = await aiohttp_client(app)
        assert (await client.post("/channels/api/messages", json=msg("m1"), headers=AUTH)).status == 202
        await until(lambda: {"ticket.created", "message.created"} <= {e["type"] for e in r.accepted})
        created = next(e for e in r.accepted if e["type"] == "ticket.created")
        message = next(e for e in r.accepted if e["type"] == "message.created")
        assert [e["type"] for e in r.accepted][:2] == ["ticket.created", "message.created"]
        t = created["data"]["ticket"]
        assert {"id", "number", "status", "priority", "team", "contact_id"} <= set(t)
        assert t["status"] == "new" and t["number"] >= 1000 and created["timestamp"].endswith("Z")
        m = message["data"]["message"]
        assert m["channel"] == "api" and m["direction"] == "inbound" and m["text"] == "我要退款，订单 123"
        assert message["data"]["ticket"]["id"] == t["id"]
        # /readyz names no disabled endpoint
        metrics = await (await client.get("/metrics")).text()
        assert 'omnigate_webhook_attempts_total{endpoint="crm",outcome="delivered"}' in metrics
        body = await (await client.get("/readyz")).json()
        assert body["detail"]["webhooks"]["ok"] and body["detail"]["webhooks"]["disabled"] == {}
    finally:
        await r.stop()


async def test_webhooks_api_manages_endpoints_and_a_new_one_skips_the_backlog(aiohttp_client, tmp_path, backend):
    r = await Receiver().start()
    r2 = await Receiver().start()
    try:
        app = create_app(config(tmp_path, r.url, backend))
        client = await aiohttp_client(app)
        await client.post("/channels/api/messages", json=msg("m1"), headers=AUTH)
        await until(lambda: len(r.accepted) >= 2)
        assert (await client.get("/api/v1/webhooks")).status == 401
        bad = await client.post("/api/v1/webhooks", json={"name": "wh", "url": "http://10.0.0.5/x"}, headers=AUTH)
        assert bad.status == 422 and (await bad.json())["field"] == "url"
        bad = await client.post("/api/v1/webhooks", json={"name": "wh", "url": r2.url, "events": ["nope"]},
                                headers=AUTH)
        assert bad.status == 422 and (await bad.json())["field"] == "events"
        made = await client.post("/api/v1/webhooks", json={"name": "wh", "url": r2.url, "allow_private": True,
                                                             "events": ["message."]}, headers=AUTH)
        assert made.status == 201
        ep = await made.json()
        assert ep["secret"].startswith("whsec_")  # generated, shown once
        r2.webhook = __import__("standardwebhooks").Webhook(ep["secret"])
        listed = await (await client.get("/api/v1/webhooks", headers=AUTH)).json()
        assert {e["name"] for e in listed["items"]} == {"crm", "wh"} and "secret" not in listed["items"][0]
        await client.post("/channels/api/messages", json=msg("m2", "second"), headers=AUTH)
        await until(lambda: len(r2.accepted) >= 1)
        await asyncio.sleep(0.2)
        assert [e["type"] for e in r2.accepted] == ["message.created"]  # not the backlog, only message.*
        assert r2.accepted[0]["data"]["message"]["text"] == "second" and r2.bad_signatures == 0
        log = await (await client.get("/api/v1/webhooks/wh/deliveries", headers=AUTH)).json()
        assert log["items"][0]["outcome"] == "delivered" and log["items"][0]["status_code"] == 200
        assert "latency_ms" in log["items"][0] and log["items"][0]["attempt"] == 1
        dis = await client.post("/api/v1/webhooks/wh/disable", headers=AUTH)
        assert (await dis.json())["enabled"] is False
        assert (await client.patch("/api/v1/webhooks/crm", json={"url": "http://x.test/"}, headers=AUTH)).status == 409
        assert (await client.delete("/api/v1/webhooks/crm", headers=AUTH)).status == 409
        rp = await client.post("/api/v1/webhooks/wh/replay", json={}, headers=AUTH)
        assert rp.status == 202 and (await rp.json()) == {"requeued": 0}
        assert (await client.get("/api/v1/webhooks/wh/dead", headers=AUTH)).status == 200
        assert (await client.delete("/api/v1/webhooks/wh", headers=AUTH)).status == 204
        assert (await client.get("/api/v1/webhooks/wh", headers=AUTH)).status == 404
    finally:
        await r.stop()
        await r2.stop()


async def test_api_channel_replies_go_to_the_accounts_reply_webhook(aiohttp_client, tmp_path):
    r = await Receiver().start()
    try:
        app = create_app(config(tmp_path, r.url, api={"reply_webhook": "crm"}))
        client = await aiohttp_client(app)
        jid = (await (await client.post("/channels/api/messages", json=msg("m1"), headers=AUTH)).json())["journal_id"]
        await app[keys.WORKER].drain()
        j = await (await client.get(f"/api/v1/journal/{jid}", headers=AUTH)).json()
        rep = await client.post(f"/api/v1/tickets/{j['ticket_id']}/replies", json={"text": "您好，已退款"}, headers=AUTH)
        assert rep.status in (200, 201, 202), await rep.text()
        await until(lambda: any(e["type"] == "message.outbound" for e in r.accepted))
        out = next(e for e in r.accepted if e["type"] == "message.outbound")
        assert out["data"]["message"]["text"] == "您好，已退款" and out["data"]["message"]["to"]["value"] == "+8613800138000"

        async def status():
            tl = await (await client.get(f"/api/v1/tickets/{j['ticket_id']}/timeline", headers=AUTH)).json()
            return [e for e in tl["items"] if e["kind"] == "message_out"][0]["data"]["delivery"]["status"]

        for _ in range(500):
            if await status() == "sent":
                break
            await asyncio.sleep(0.02)
        assert await status() == "sent"  # the delivery status is on the timeline
        await until(lambda: any(e["type"] == "message.status" for e in r.accepted))
        st = next(e for e in r.accepted if e["type"] == "message.status")
        assert st["data"]["status"] == "sent" and st["data"]["message"]["direction"] == "outbound"
    finally:
        await r.stop()


def test_the_catalogue_matches_the_contract_and_feeds_openapi():
    contract = {"ticket.created", "ticket.updated", "ticket.status_changed", "ticket.reopened", "ticket.assigned",
                "message.created", "message.edited", "message.status", "note.mentioned", "sla.warning",
                "sla.breached", "sla.escalation", "contact.merged", "contact.unmerged", "webhook.notify"}
    assert contract <= set(EVENTS)
    assert set(openapi_webhooks()) == set(EVENTS)


async def test_rules_escalation_emits_ticket_updated_and_notifies_only_the_named_endpoint(aiohttp_client, tmp_path,
                                                                                          backend):
    from tests.gateway.conftest import RULES, business_hours

    crm = await Receiver().start()
    incident = await Receiver().start()
    try:
        cfg = config(tmp_path, crm.url, backend, rules_dir=RULES)
        from gateway.config import WebhookEndpointConfig

        cfg.webhooks.endpoints["incident"] = WebhookEndpointConfig(url=incident.url, secret=SECRET,
                                                                   allow_private=True)
        app = create_app(cfg, clock=business_hours())
        client = await aiohttp_client(app)
        sender = {"kind": "phone", "value": "13900139000"}
        await client.post("/channels/api/messages", json={"external_id": "a", "sender": sender, "text": "你好，问个问题"},
                          headers=AUTH)
        await app[keys.WORKER].drain()
        await client.post("/channels/api/messages", json={"external_id": "b", "sender": sender, "text": "系统崩溃了！"},
                          headers=AUTH)
        await until(lambda: any(e["type"] == "ticket.updated" for e in crm.accepted)
                    and any(e["type"] == "webhook.notify" for e in incident.accepted))
        await until(lambda: sum(e["type"] == "message.created" for e in crm.accepted) == 2)
        types = [e["type"] for e in crm.accepted]
        assert types.index("ticket.created") < types.index("ticket.updated")
        assert "webhook.notify" not in types  # the rule named the incident endpoint only
        updated = next(e for e in crm.accepted if e["type"] == "ticket.updated")
        assert updated["data"]["changes"]["priority"]["to"] == "urgent"
        assert "outage" in updated["data"]["changes"]["tags"]["added"]
        assert updated["data"]["ticket"]["priority"] == "urgent"  # the snapshot as committed with the change
        notify = next(e for e in incident.accepted if e["type"] == "webhook.notify")
        assert notify["data"]["webhook"] == "incident" and notify["data"]["rule"] == "outage"
        assert notify["data"]["ticket"]["id"] == updated["data"]["ticket"]["id"]
    finally:
        await crm.stop()
        await incident.stop()


async def test_contact_merge_events_carry_the_contact(aiohttp_client, tmp_path, backend):
    r = await Receiver().start()
    try:
        app = create_app(config(tmp_path, r.url, backend))
        client = await aiohttp_client(app)
        ids = []
        for ext, value in (("a", "13900139001"), ("b", "13900139002")):
            jid = (await (await client.post("/channels/api/messages", json={
                "external_id": ext, "sender": {"kind": "phone", "value": value}, "text": "hi"},
                headers=AUTH)).json())["journal_id"]
            await app[keys.WORKER].drain()
            ids.append((await (await client.get(f"/api/v1/journal/{jid}", headers=AUTH)).json())["contact_id"])
        m = await client.post(f"/api/v1/contacts/{ids[1]}/merge", json={"into": ids[0]}, headers=AUTH)
        assert m.status in (200, 201, 202), await m.text()
        await until(lambda: any(e["type"] == "contact.merged" for e in r.accepted))
        ev = next(e for e in r.accepted if e["type"] == "contact.merged")
        assert ev["data"]["winner"] == ids[0] and ev["data"]["contact"]["id"] == ids[0]
        assert len(ev["data"]["contact"]["identities"]) == 2  # as committed: the loser's identity moved over
    finally:
        await r.stop()


def test_webhook_secrets_never_come_from_the_yaml_and_an_endpoint_needs_one(tmp_path):
    import pytest

    from gateway.config import ConfigError, WebhookEndpointConfig, WebhooksConfig
    from gateway.webhooks.service import WebhookService

    f = tmp_path / "c.yaml"
    f.write_text("webhooks:\n  endpoints:\n    crm:\n      url: https://crm.example/h\n      secret: whsec_x\n")
    with pytest.raises(ConfigError, match="OMNIGATE_WEBHOOKS__ENDPOINTS__CRM__SECRET"):
        load(str(f), environ={})
    f.write_text("webhooks:\n  endpoints:\n    crm:\n      url: https://crm.example/h\n      evnets: [ticket.]\n")
    with pytest.raises(ConfigError, match="did you mean 'events'"):
        load(str(f), environ={})
    f.write_text("webhooks:\n  endpoints:\n    crm:\n      url: https://crm.example/h\n")
    with pytest.raises(ConfigError, match="lacks its secret"):
        load(str(f), environ={})
    with pytest.raises(ConfigError, match="not whsec_"):
        load(str(f), environ={"OMNIGATE_WEBHOOKS__ENDPOINTS__CRM__SECRET": "whsec_%%%"})
    assert load(str(f), environ={"OMNIGATE_WEBHOOKS__ENDPOINTS__CRM__SECRET": SECRET}).webhooks.endpoints["crm"]
    svc = WebhookService(None, WebhooksConfig(endpoints={"crm": WebhookEndpointConfig(url="https://crm.example/h")}))
    with pytest.raises(ValueError, match="no secret"):
        asyncio.run(svc.start())


def test_the_readme_lists_the_catalogue():
    from pathlib import Path

    from gateway.webhooks.catalogue import readme_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert readme_table() in readme, "regenerate the README's event table from gateway/webhooks/catalogue.py"
