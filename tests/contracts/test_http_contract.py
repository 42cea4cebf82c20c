"""CONTRACTS.md "HTTP": the health endpoints."""

from __future__ import annotations


async def test_readyz_names_store_rules_and_connectors_even_without_a_rules_folder(gw) -> None:
    client, app = gw
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ready"
    assert {"store", "rules", "connectors"} <= set(body["detail"])
    assert body["detail"]["rules"]["ok"] is True and body["detail"]["rules"]["loaded"] is False
    assert "not routed" in body["detail"]["rules"]["hint"]


async def test_healthz_and_metrics_names(gw) -> None:
    client, app = gw
    assert (await client.get("/healthz")).status == 200
    text = await (await client.get("/metrics")).text()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert names and all(n.startswith("omnigate_") for n in names), sorted(n for n in names if not n.startswith("omnigate_"))
