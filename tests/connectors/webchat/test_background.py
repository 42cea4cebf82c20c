"""What the webchat connector does on its own, on a fake clock: mail the
replies a visitor who left an email has not seen, end a conversation after
inactivity (the timeline says so, the ticket is solved), and reopen it
when the visitor comes back within the reopen window."""

from __future__ import annotations

import asyncio

import pytest

from connectors.http import client_ip
from gateway import keys
from gateway.app import create_app
from tests.clock import BUSINESS_HOURS, INSTANTS, FakeClock
from tests.connectors.webchat.conftest import Visitor, webchat_config
from tests.connectors.email.test_send import sink
from tests.gateway.conftest import AUTH, drain


@pytest.mark.integration
async def test_unseen_replies_are_mailed_then_the_conversation_ends_and_reopens(aiohttp_client, tmp_path, backend):
    async with sink() as relay:  # a real SMTP relay on loopback, reached through the email connector
        await _mail_end_reopen(aiohttp_client, tmp_path, relay, backend)


async def _mail_end_reopen(aiohttp_client, tmp_path, relay, backend):
    clock = FakeClock(INSTANTS[BUSINESS_HOURS])
    email = {"email": {"relay": {"host": "127.0.0.1", "port": relay.port, "security": "none",
                                 "from": "Shop Support <support@shop.example.com>"}}}
    app = create_app(webchat_config(tmp_path, extra={**email, **backend}, email_account="support", email_after="10m",
                                    inactivity="30m"), clock=clock)
    client = await aiohttp_client(app)
    conn = app[keys.CONNECTORS]["webchat"]
    v = await Visitor.connect(client, profile={"name": "Wang", "email": "Wang@Example.com"})
    conv = v.welcome["conversation"]
    ack = await v.say("c1", "is the blue one in stock?")
    await v.close()
    await drain(app)
    ticket_id = (await conn.transcript.conversation(conv))["ticket_id"]
    assert (await client.post(f"/api/v1/tickets/{ticket_id}/replies", json={"text": "Yes, 3 left", "author": "ann"},
                              headers=AUTH)).status == 202
    for _ in range(200):
        if len((await conn.transcript.history(conv))) == 2:
            break
        await asyncio.sleep(0.02)
    assert (await conn.sweep())["mailed"] == 0  # not yet: email_after has not passed
    clock.advance(minutes=11)
    assert (await conn.sweep()) == {"ended": 0, "mailed": 1}
    [envelope] = relay.received
    assert envelope.rcpt_tos == ["wang@example.com"]
    mail = relay.message()
    assert "Yes, 3 left" in mail.get_body(("plain",)).get_content()
    assert (await conn.sweep())["mailed"] == 0  # once
    clock.advance(minutes=30)
    assert (await conn.sweep())["ended"] == 1
    await drain(app)
    ticket = await (await client.get(f"/api/v1/tickets/{ticket_id}", headers=AUTH)).json()
    assert ticket["status"] == "solved"
    tl = await (await client.get(f"/api/v1/tickets/{ticket_id}/timeline", headers=AUTH)).json()
    assert any(e["kind"] == "event" and e["data"].get("status_change", {}).get("to") == "solved" for e in tl["items"])
    assert (await conn.sweep())["ended"] == 0  # ended once
    # back within webchat's reopen window (24h): the same ticket, reopened
    clock.advance(hours=2)
    back = await Visitor.connect(client, visitor=v.welcome["visitor"], token=v.welcome["token"])
    ack2 = await back.say("c2", "one more question")
    await drain(app)
    j = await (await client.get(f"/api/v1/journal/{ack2['journal_id']}", headers=AUTH)).json()
    assert j["ticket_id"] == ticket_id
    ticket = await (await client.get(f"/api/v1/tickets/{ticket_id}", headers=AUTH)).json()
    assert ticket["status"] != "solved"
    assert ack["journal_id"] != ack2["journal_id"]


class _Req:
    def __init__(self, remote, headers):
        from multidict import CIMultiDict

        self.remote = remote
        self.headers = CIMultiDict(headers)


def test_client_ip_believes_forwarding_headers_only_from_trusted_proxies():
    xff = [("X-Forwarded-For", "203.0.113.7, 10.0.0.2")]
    assert client_ip(_Req("198.51.100.1", xff), ()) == "198.51.100.1"
    assert client_ip(_Req("198.51.100.1", xff), ("10.0.0.0/8",)) == "198.51.100.1"  # not a proxy of ours
    assert client_ip(_Req("10.0.0.1", xff), ("10.0.0.0/8",)) == "203.0.113.7"
    assert client_ip(_Req("10.0.0.1", [("Forwarded", 'for="[2001:db8::1]:4711"')]), ("10.0.0.1",)) == "2001:db8::1"
    assert client_ip(_Req("10.0.0.1", []), ("10.0.0.1",)) == "10.0.0.1"


def test_trusted_proxies_config_key(tmp_path):
    import pytest

    from gateway.config import ConfigError, load

    c = load(None, environ={"OMNIGATE_TRUSTED_PROXIES": "10.0.0.1, 192.168.0.0/16"})
    assert c.trusted_proxies == ["10.0.0.1", "192.168.0.0/16"]
    with pytest.raises(ConfigError, match="trusted_proxies"):
        load(None, environ={"OMNIGATE_TRUSTED_PROXIES": "not-an-ip"})


def test_site_configuration_is_checked(tmp_path):
    import pytest

    from gateway.app import StartupError
    from gateway.config import ConfigError, load

    bad = tmp_path / "typo.yaml"
    bad.write_text("webchat:\n  sites:\n    shop:\n      origins: [https://a.example]\n      colour: '#fff'\n")
    with pytest.raises(ConfigError, match="did you mean 'color'"):
        load(str(bad), environ={})
    secret = tmp_path / "secret.yaml"
    secret.write_text("webchat:\n  sites:\n    shop:\n      origins: [https://a.example]\n      secret: abc\n")
    with pytest.raises(ConfigError, match="SECRET_FILE"):
        load(str(secret), environ={})
    for section, why in (({"origins": ["a.example/path"]}, "is not an origin"), ({"color": "red"}, "#rgb")):
        with pytest.raises(StartupError, match=why):
            create_app(load(None, environ={"OMNIGATE_DATA_DIR": str(tmp_path / "d"),
                                           "OMNIGATE_RULES_DIR": str(tmp_path / "none")},
                            flags={"webchat": {"sites": {"shop": {"origins": ["https://a.example"], **section}}}}))


async def test_webchat_tickets_go_through_the_shipped_rules_and_assignment(aiohttp_client, tmp_path):
    """The same routing as every channel: the refund rule sends the chat to
    billing, and an online billing agent (chat capacity) takes it; the
    widget says agents are online because one of the site's team is."""
    from pathlib import Path

    from gateway.config import load

    root = Path(__file__).resolve().parents[3]
    cfg = webchat_config(tmp_path)
    cfg = load(str(tmp_path / "omnigate.yaml"), environ={
        "OMNIGATE_API_TOKEN": "t", "OMNIGATE_DATA_DIR": str(tmp_path / "data2"),
        "OMNIGATE_RULES_DIR": str(root / "rules"), "OMNIGATE_DIRECTORY": str(root / "deploy/directory.example.yaml")},
        flags={"webchat": {"sites": {"shop": {"team": "billing"}}}})
    assert cfg.channels["webchat"]["sites"]["shop"]["origins"]
    clock = FakeClock(INSTANTS[BUSINESS_HOURS])
    app = create_app(cfg, clock=clock)
    client = await aiohttp_client(app)
    await app[keys.STORE].set_presence("a-hanmeimei", "online", clock())
    v = await Visitor.connect(client)
    assert v.welcome["agents_online"] is True
    ack = await v.say("r1", "我要申请退款，订单 8812")
    await drain(app)
    auth = {"Authorization": "Bearer t"}
    j = await (await client.get(f"/api/v1/journal/{ack['journal_id']}", headers=auth)).json()
    ticket = await (await client.get(f"/api/v1/tickets/{j['ticket_id']}", headers=auth)).json()
    assert ticket["team"] == "billing" and "refund" in ticket["tags"]
    assert ticket["assignee"] == "a-hanmeimei"
