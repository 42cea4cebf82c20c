"""The routing tree inside the running pipeline (the shipped rules)."""

from __future__ import annotations

import pytest

from gateway import keys
from gateway.app import StartupError, create_app
from tests.clock import BUSINESS_HOURS, EVENING
from tests.gateway.conftest import AUTH, RULES, drain, make_config


@pytest.fixture
async def routed(aiohttp_client, tmp_path, gateway_clock):
    """The shipped rules, at each of tests/clock.py's instants (or the marked ones)."""
    app = create_app(make_config(tmp_path, rules_dir=RULES), clock=gateway_clock)
    return await aiohttp_client(app), app


def _without_after_hours(path: list[str]) -> list[str]:
    """The decision's path apart from the time-of-day rule (its own tests pin the clock)."""
    return [r for r in path if r != "after-hours"]


async def _ticket_of(client, journal_id):
    j = await (await client.get(f"/api/v1/journal/{journal_id}", headers=AUTH)).json()
    t = await (await client.get(f"/api/v1/tickets/{j['ticket_id']}", headers=AUTH)).json()
    tl = await (await client.get(f"/api/v1/tickets/{j['ticket_id']}/timeline", headers=AUTH)).json()
    return t, tl["items"]


async def _post(client, ext, text, sender="li.lei@example.cn", subject=None):
    body = {"external_id": ext, "sender": {"kind": "email", "value": sender}, "text": text}
    if subject:
        body["subject"] = subject
    r = await client.post("/channels/api/messages", json=body, headers=AUTH)
    return (await r.json())["journal_id"]


async def test_refund_goes_to_billing_and_the_timeline_says_why(routed):
    client, app = routed
    jid = await _post(client, "r1", "订单重复扣款了，我要申请退款")
    await drain(app)
    ticket, items = await _ticket_of(client, jid)
    assert ticket["team"] == "billing" and ticket["skills"] == {"billing": 1} and "refund" in ticket["tags"]
    rules = {e["data"]["rule"]: e for e in items if e["kind"] == "rule"}
    assert _without_after_hours(list(rules)) == ["root", "billing-refund"]
    assert any("退款" in m for m in rules["billing-refund"]["data"]["matched"])
    message = next(e for e in items if e["kind"] == "message_in")
    assert message["data"]["reasons"]["rules"]["rule"] == "billing-refund"


async def test_a_follow_up_about_an_outage_raises_priority_but_keeps_the_team(routed):
    client, app = routed
    first = await _post(client, "o1", "我要申请退款")
    await drain(app)
    await _post(client, "o2", "现在系统崩溃了，完全打不开")
    await drain(app)
    ticket, items = await _ticket_of(client, first)
    assert ticket["priority"] == "urgent" and ticket["team"] == "billing"
    assert {"refund", "outage"} <= set(ticket["tags"])


async def test_dry_run_endpoint(routed):
    client, _ = routed
    r = await client.post("/api/v1/rules/test", headers=AUTH,
                          json={"channel": "email", "from": "a@b.cn", "subject": "申请退款", "tree": True})
    body = await r.json()
    assert r.status == 200 and _without_after_hours(body["path"]) == ["root", "billing-refund"]
    assert body["team"] == "billing" and "billing-refund" in body["tree"]
    r = await client.post("/api/v1/rules/test", headers=AUTH, json={"channel": 5})
    assert r.status == 400 and (await r.json())["field"]


@pytest.mark.clock(BUSINESS_HOURS)
async def test_in_business_hours_a_new_ticket_gets_no_opening_hours_reply(routed):
    client, app = routed
    jid = await _post(client, "bh1", "订单重复扣款了，我要申请退款")
    await drain(app)
    ticket, items = await _ticket_of(client, jid)
    assert [e["data"]["rule"] for e in items if e["kind"] == "rule"] == ["root", "billing-refund"]
    assert "after-hours" not in ticket["tags"] and not [e for e in items if e["kind"] == "message_out"]
    r = await client.post("/api/v1/rules/test", headers=AUTH, json={"channel": "email", "subject": "申请退款"})
    assert (await r.json())["path"] == ["root", "billing-refund"]


@pytest.mark.clock(EVENING)
async def test_in_the_evening_a_new_ticket_gets_the_opening_hours_reply(routed):
    """The daemon's clock, not the machine's, decides (the dry-run endpoint too)."""
    client, app = routed
    jid = await _post(client, "ev1", "订单重复扣款了，我要申请退款")
    await drain(app)
    ticket, items = await _ticket_of(client, jid)
    assert [e["data"]["rule"] for e in items if e["kind"] == "rule"] == ["root", "after-hours", "billing-refund"]
    assert "after-hours" in ticket["tags"] and ticket["team"] == "billing"
    [auto] = [e for e in items if e["kind"] == "message_out"]
    assert auto["data"]["auto"] is True
    r = await client.post("/api/v1/rules/test", headers=AUTH, json={"channel": "email", "subject": "申请退款"})
    body = await r.json()
    assert body["path"] == ["root", "after-hours", "billing-refund"]


async def test_rules_test_without_rules_is_a_clear_409(aiohttp_client, tmp_path):
    client = await aiohttp_client(create_app(make_config(tmp_path)))
    r = await client.post("/api/v1/rules/test", headers=AUTH, json={"channel": "email"})
    assert r.status == 409 and "rules_dir" in (await r.json())["detail"]


async def test_the_shipped_rules_start_with_the_shipped_example_directory(aiohttp_client, tmp_path):
    """deploy/directory.example.yaml has every team and skill rules/*.yaml name:
    pointing directory: at it starts, and a refund lands on its billing team."""
    from pathlib import Path

    example = Path(RULES).parent / "deploy" / "directory.example.yaml"
    app = create_app(make_config(tmp_path, rules_dir=RULES, directory=str(example)))
    client = await aiohttp_client(app)
    jid = await _post(client, "ex-1", "订单重复扣款了", subject="申请退款")
    await drain(app)
    ticket, _ = await _ticket_of(client, jid)
    assert ticket["team"] == "billing"


def test_a_broken_rules_folder_refuses_the_start(tmp_path):
    bad = tmp_path / "rules"
    bad.mkdir()
    (bad / "00-root.yaml").write_text("route:\n  id: root\n  title: Root\n  owner: ops\n  teem: x\n")
    with pytest.raises(StartupError, match=r"00-root.yaml:5:\d+: .*teem"):
        create_app(make_config(tmp_path, rules_dir=str(bad)))



async def test_password_reset_gets_the_self_service_auto_reply_once(routed):
    client, app = routed
    jid = await _post(client, "pw1", "I forgot my password, please help me reset password")
    await drain(app)
    ticket, items = await _ticket_of(client, jid)
    [auto] = [e for e in items if e["kind"] == "message_out"]
    assert auto["data"]["auto"] is True and auto["data"]["author"] == "system"
    assert "password" in auto["text"].lower() or "密码" in auto["text"]
    assert ticket.get("first_response_at") is None  # an auto-reply is not a first response
    await _post(client, "pw1", "I forgot my password, please help me reset password")  # a redelivery
    await drain(app)
    _, items = await _ticket_of(client, jid)
    assert sum(e["kind"] == "message_out" for e in items) == 1


async def test_no_auto_reply_to_an_automatic_message(routed):
    client, app = routed
    raw = (b"From: noreply@example.cn\r\nTo: support@example.com\r\nSubject: Auto: password reset\r\n"
           b"Auto-Submitted: auto-replied\r\nMessage-ID: <auto-1@example.cn>\r\n\r\nI am away. password reset\r\n")
    res = await app[keys.INGEST].ingest("email", "support", "auto-1", raw, None)
    await drain(app)
    j = await (await client.get(f"/api/v1/journal/{res.journal_id}", headers=AUTH)).json()
    _, items = await _ticket_of(client, res.journal_id)
    assert j["status"] == "processed"
    assert [e["kind"] for e in items if e["kind"].startswith("message")] == ["message_in"]


async def test_rules_see_the_normalized_sender(routed):
    client, app = routed
    r = await client.post("/channels/api/messages", headers=AUTH, json={
        "external_id": "vip-1", "sender": {"kind": "phone", "value": "138 0013 8000"}, "text": "我要申请退款"})
    await drain(app)
    ticket, items = await _ticket_of(client, (await r.json())["journal_id"])
    assert ticket["team"] == "senior" and ticket["priority"] == "high"  # vip_senders lists +8613800138000


# ------------------------------------------------- RFC 3834 auto-replies (issue 10, item 4)


def _password_mail(sender: str, mid: str) -> bytes:
    return (f"From: {sender}\r\nTo: support@example.com\r\nSubject: password {mid}\r\n"
            f"Message-ID: <{mid}@example.cn>\r\n\r\nI forgot my password, please help me reset password\r\n").encode()


async def _auto_replies(client, journal_id) -> list[dict]:
    _, items = await _ticket_of(client, journal_id)
    return [e for e in items if e["kind"] == "message_out" and e["data"]["auto"]]


async def _outbound_to(app) -> list[str]:
    from gateway.store.base import REPLY_TOPIC
    items = await app[keys.STORE].outbox_claim(REPLY_TOPIC, 50, 60)
    return [i.payload["to"]["value"] for i in items]


async def test_a_forged_from_with_a_null_envelope_sender_gets_no_auto_reply(routed):
    client, app = routed
    res = await app[keys.INGEST].ingest("email", "support", "n1", _password_mail("victim@example.cn", "n1"),
                                        {"mail_from": "", "rcpt_tos": ["support@example.com"]})
    await drain(app)
    assert await _auto_replies(client, res.journal_id) == []
    unknown = await app[keys.INGEST].ingest("email", "support", "n2", _password_mail("victim@example.cn", "n2"), None)
    await drain(app)  # no envelope sender known at all (no Return-Path): nothing either
    assert await _auto_replies(client, unknown.journal_id) == []


async def test_the_auto_reply_goes_to_the_envelope_sender_once_per_window_even_across_restarts(
        routed, aiohttp_client, tmp_path, gateway_clock):
    client, app = routed
    env = {"mail_from": "Bounces@Lists.example.cn", "rcpt_tos": ["support@example.com"]}
    first = await app[keys.INGEST].ingest("email", "support", "e1", _password_mail("li@example.cn", "e1"), env)
    await drain(app)
    assert len(await _auto_replies(client, first.journal_id)) == 1
    assert await _outbound_to(app) == ["bounces@lists.example.cn"]  # not the From
    # another From (its own contact and ticket), the same envelope sender within 24 h: no second
    second = await app[keys.INGEST].ingest("email", "support", "e2", _password_mail("wang@example.cn", "e2"), env)
    await drain(app)
    assert await _auto_replies(client, second.journal_id) == []
    await client.close()

    again = create_app(make_config(tmp_path, rules_dir=RULES), clock=gateway_clock)  # a restart, same data folder
    client2 = await aiohttp_client(again)
    third = await again[keys.INGEST].ingest("email", "support", "e3", _password_mail("zhao@example.cn", "e3"), env)
    await drain(again)
    assert await _auto_replies(client2, third.journal_id) == []


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
async def test_auto_reply_pacing_per_address_and_global_budget_in_the_store(tmp_path, backend, request):
    """The ledger is the store's: on Redis two instances (two stores) share
    the window and the budget (the calls alternate between them)."""
    from datetime import datetime, timedelta, timezone

    from gateway.store.sqlite import SQLiteStore
    from gateway.store.sqlite_replies import AutoReplyLimits
    from routing.model import Identity, Inbound, Sender, ThreadHints
    from routing.pipeline import Settings, decide, lookup
    from routing.state import Snapshot

    if backend == "sqlite":
        stores = [SQLiteStore.in_dir(tmp_path)]
    else:
        from gateway.store.redis_store import RedisStore

        url, prefix = request.getfixturevalue("redis_server").url, request.getfixturevalue("redis_prefix")
        stores = [RedisStore(url, prefix=prefix), RedisStore(url, prefix=prefix)]
    store = stores[0]
    try:
        t0 = datetime(2026, 3, 2, 10, tzinfo=timezone.utc)
        tickets = []
        for n in range(3):
            i = Inbound(channel="email", account="support", external_id=f"m{n}", kind="message",
                        sender=Sender("email", f"c{n}@example.cn"), text="hi", thread=ThreadHints())
            look = lookup(i, Settings())
            j = (await store.journal_append("email", "support", f"m{n}", b"{}")).journal_id
            tickets.append((await store.commit(decide(i, j, Snapshot(now=t0), Settings(), look))).ticket_id)
        limits = AutoReplyLimits(window_s=86400, global_per_hour=2)
        a, b, c = (Identity("email", f"c{n}@example.cn") for n in range(3))
        turn = iter(stores * 6)
        assert await next(turn).auto_reply(tickets[0], "x", to=a, limits=limits, now=t0) is not None
        assert await next(turn).auto_reply(tickets[0], "x", to=a, limits=limits, now=t0 + timedelta(hours=23)) is None
        assert await next(turn).auto_reply(tickets[1], "x", to=b, limits=limits,
                                           now=t0 + timedelta(minutes=1)) is not None
        # the hourly budget (2) is spent: c waits for the hour to pass
        assert await next(turn).auto_reply(tickets[2], "x", to=c, limits=limits,
                                           now=t0 + timedelta(minutes=2)) is None
        assert await next(turn).auto_reply(tickets[2], "x", to=c, limits=limits,
                                           now=t0 + timedelta(hours=2)) is not None
        assert await next(turn).auto_reply(tickets[0], "x", to=a, limits=limits,
                                           now=t0 + timedelta(hours=25)) is not None
    finally:
        for s in stores:
            await s.close()
