"""Shedding end to end (``pipeline.admission_shed``, gateway/admission.py):
while the pipeline is starved, the API channel refuses an intake that would
wait for its turn — 503 problem+json with ``Retry-After``, before its body is
even read — while WeChat, Telegram and webchat intakes are only delayed
(``pipeline.admission_max_delay_s`` at most) and always taken: their
platforms and visitors give up within seconds, a refusal would lose the
message. Starvation is injected into the gate (backlog and loop-busy share),
not produced by timing."""

from __future__ import annotations

from gateway import keys
from gateway.app import create_app
from gateway.config import load
from tests.connectors.wechat.support import TOKEN as WX_TOKEN
from tests.e2e.test_backlog_limit import APPID, TG_SECRET, post_wechat_and_telegram
from tests.gateway.conftest import AUTH, RULES, TOKEN

ORIGIN = "https://shop.example.com"


def starved_app(tmp_path, gateway_clock, wechat_api, telegram_api, **pipeline: str):
    (tmp_path / "secret").write_text("site-secret-for-tests")
    env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data"), "OMNIGATE_RULES_DIR": RULES,
           # a short longest wait: the delayed intakes of this test go through quickly
           "OMNIGATE_PIPELINE__ADMISSION_MAX_DELAY_S": "0.05",
           **{f"OMNIGATE_PIPELINE__{k.upper()}": v for k, v in pipeline.items()}}
    sections = {
        "wechat": {"api_base": wechat_api.base, "accounts": {"main": {
            "appid": APPID, "app_secret": "s", "token": WX_TOKEN, "mode": "plain"}}},
        "telegram": {"api_base": telegram_api.base, "bots": {"main": {
            "token": "123456:shed-test", "secret_token": TG_SECRET, "mode": "webhook"}}},
        "webchat": {"sites": {"shop": {"origins": [ORIGIN], "secret_file": str(tmp_path / "secret")}}},
    }
    app = create_app(load(None, environ=env, flags=sections), clock=gateway_clock)
    gate = app[keys.LOAD].gate
    gate.backlog, gate.busy = (lambda: 10**6), (lambda: 1.0)  # starved for the whole test
    gate.burst = gate.credits = 0.0  # and no credit ever free
    return app


async def test_starved_api_is_shed_before_its_body_is_read_with_retry_after(
        aiohttp_client, tmp_path, gateway_clock, wechat_api, telegram_api):
    app = starved_app(tmp_path, gateway_clock, wechat_api, telegram_api, BACKLOG_RETRY_AFTER_S="12")
    client = await aiohttp_client(app)
    # not even valid JSON: refused for load before the body is read, so not a 400
    resp = await client.post("/channels/api/messages", data=b"{not json", headers=AUTH)
    assert resp.status == 503 and resp.headers["Retry-After"] == "12"
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["title"] == "Overloaded"
    msg = {"external_id": "a1", "sender": {"kind": "email", "value": "a@example.com"}, "text": "hello"}
    assert (await client.post("/channels/api/messages", json=msg, headers=AUTH)).status == 503
    # authentication still comes first
    assert (await client.post("/channels/api/messages", json=msg)).status == 401
    assert await app[keys.STORE].journal_list(limit=10) == []
    assert app[keys.LOAD].gate.shed_count == 2
    metrics = await (await client.get("/metrics")).text()
    assert 'omnigate_rejected_total{channel="api",reason="overloaded"} 2.0' in metrics


async def test_starved_wechat_telegram_and_webchat_are_delayed_never_refused(
        aiohttp_client, tmp_path, gateway_clock, wechat_api, telegram_api):
    app = starved_app(tmp_path, gateway_clock, wechat_api, telegram_api)
    client = await aiohttp_client(app)
    ts = str(int(gateway_clock().timestamp()))
    for n in range(2):
        await post_wechat_and_telegram(client, n, ts)
    resp = await client.post("/channels/webchat/poll?site=shop", headers={"Origin": ORIGIN},
                             json={"frames": [{"type": "hello"}, {"type": "message", "cid": "c1", "text": "hi"}]})
    assert [f["type"] for f in (await resp.json())["frames"]] == ["welcome", "ack"]
    gate = app[keys.LOAD].gate
    # each waited (for a credit the pipeline granted, or its longest), then went through
    assert gate.shed_count == 0 and gate.stats["waited"] + gate.stats["timed_out"] == 5
    channels = sorted(e.channel for e in await app[keys.STORE].journal_list(limit=100))
    assert channels == ["telegram"] * 2 + ["webchat"] + ["wechat"] * 2


async def test_with_shedding_off_the_api_channel_is_delayed_not_refused(
        aiohttp_client, tmp_path, gateway_clock, wechat_api, telegram_api):
    app = starved_app(tmp_path, gateway_clock, wechat_api, telegram_api, ADMISSION_SHED="false")
    client = await aiohttp_client(app)
    msg = {"external_id": "a1", "sender": {"kind": "email", "value": "a@example.com"}, "text": "hello"}
    assert (await client.post("/channels/api/messages", json=msg, headers=AUTH)).status == 202
    gate = app[keys.LOAD].gate
    assert gate.shed_count == 0 and gate.stats["waited"] + gate.stats["timed_out"] == 1
