"""The generic target (a JSON template per event, POSTed to an in-house desk),
the desks' nudge verification (Zendesk's stale timestamp refused), and the
configuration (credentials from files, refusals naming the key)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import timedelta, timezone

import pytest
from aiohttp import web

from gateway import keys
from gateway.app import create_app
from gateway.config import ConfigError, DeskConfig, load
from gateway.desks.generic import render
from gateway.desks.zammad import ZammadClient
from gateway.desks.zendesk import ZendeskClient
from tests.clock import BUSINESS_HOURS, INSTANTS
from tests.desks.conftest import wait_for
from tests.gateway.conftest import AUTH, TOKEN

NOW = INSTANTS[BUSINESS_HOURS].astimezone(timezone.utc)


def test_render_fills_placeholders_keeping_json_types() -> None:
    data = {"ticket": {"number": 1042, "subject": "退款", "tags": ["vip"]}, "type": "ticket.created"}
    out = render({"title": "#{ticket.number}: {ticket.subject}", "n": "{ticket.number}", "tags": "{ticket.tags}",
                  "missing": "{ticket.nope}", "braces": "{{literal}}", "list": ["{type}", 3]}, data)
    assert out == {"title": "#1042: 退款", "n": 1042, "tags": ["vip"], "missing": None, "braces": "{literal}",
                   "list": ["ticket.created", 3]}


async def test_generic_target_posts_each_templated_event(aiohttp_client, aiohttp_server, tmp_path) -> None:
    got: list[tuple[str, dict]] = []

    async def receive(request: web.Request) -> web.Response:
        got.append((request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/inhouse/events", receive)
    server = await aiohttp_server(app, host="127.0.0.1")
    templates = {
        "message.created": {"ref": "og-{ticket.number}", "from": "{message.channel}", "body": "{message.text}",
                            "status": "{ticket.status}", "kind": "{type}"},
        "ticket.status_changed": {"ref": "og-{ticket.number}", "status": "{to}", "by": "{actor}"}}
    env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data"),
           "OMNIGATE_RULES_DIR": str(tmp_path / "no-rules")}
    config = load(None, environ=env, flags={"desks": {"inhouse": {
        "kind": "generic", "url": str(server.make_url("/inhouse/events")), "token": "inhouse-token",
        "allow_private": True, "templates": templates}}})
    client = await aiohttp_client(create_app(config, clock=lambda: NOW))
    resp = await client.post("/channels/api/messages", headers=AUTH, json={
        "external_id": "g1", "sender": {"kind": "phone", "value": "13800138000"}, "text": "我要退款"})
    assert resp.status == 202
    await wait_for(lambda: got)
    auth, body = got[0]
    assert auth == "Bearer inhouse-token"
    assert body["from"] == "api" and body["body"] == "我要退款" and body["kind"] == "message.created"
    assert body["ref"].startswith("og-") and body["status"] == "new"
    journal = (await (await client.get("/api/v1/journal", headers=AUTH)).json())["items"]
    await client.app[keys.STORE].set_status(journal[0]["ticket_id"], "solved", NOW, actor="api")
    await wait_for(lambda: len(got) >= 2)
    assert got[1][1] == {"ref": body["ref"], "status": "solved", "by": "api"}
    assert len(got) == 2  # ticket.created has no template: not sent


def zendesk() -> ZendeskClient:
    return ZendeskClient("z", DeskConfig(kind="zendesk", url="http://x", token="t", email="a@b"))


def test_zendesk_signature_over_timestamp_and_body_and_stale_timestamps_refused() -> None:
    body = b'{"ticket_id": 7}'

    def headers(at):
        ts = at.strftime("%Y-%m-%dT%H:%M:%SZ")
        sig = base64.b64encode(hmac.new(b"s3", ts.encode() + body, hashlib.sha256).digest()).decode()
        return {"X-Zendesk-Webhook-Signature": sig, "X-Zendesk-Webhook-Signature-Timestamp": ts}

    assert zendesk().verify(headers(NOW), body, "s3", NOW) is None
    assert "too old" in zendesk().verify(headers(NOW - timedelta(minutes=6)), body, "s3", NOW)
    assert "does not match" in zendesk().verify(headers(NOW), body + b" ", "s3", NOW)
    assert "required" in zendesk().verify({}, body, "s3", NOW)


def test_zammad_hub_signature_is_hmac_sha1_of_the_body() -> None:
    c = ZammadClient("zm", DeskConfig(kind="zammad", url="http://x", token="t"))
    body = b'{"ticket":{"id":1}}'
    good = {"X-Hub-Signature": "sha1=" + hmac.new(b"k", body, hashlib.sha1).hexdigest()}
    assert c.verify(good, body, "k", NOW) is None
    assert c.verify(good, body, "other", NOW) == "X-Hub-Signature does not match"


def test_way_back_headers_of_bytes_not_utf8_do_not_match_rather_than_raise() -> None:
    """aiohttp hands header bytes that are not UTF-8 over as surrogate escapes
    (``\\udcff``): each desk's check says they do not match — a 401, not the
    UnicodeEncodeError/TypeError (a 500 with a traceback) it was."""
    from gateway.desks.freshdesk import TOKEN_HEADER, FreshdeskClient

    body = b'{"ticket":{"id":1}}'
    bad = "\udcff\udcfe"
    zm = ZammadClient("zm", DeskConfig(kind="zammad", url="http://x", token="t"))
    assert zm.verify({"X-Hub-Signature": "sha1=" + bad}, body, "k", NOW) == "X-Hub-Signature does not match"
    ts = NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "does not match" in zendesk().verify({"X-Zendesk-Webhook-Signature": bad,
                                                 "X-Zendesk-Webhook-Signature-Timestamp": ts}, body, "s3", NOW)
    fd = FreshdeskClient("fd", DeskConfig(kind="freshdesk", url="http://x", token="t"))
    assert fd.verify({TOKEN_HEADER: bad}, body, "k", NOW) == f"{TOKEN_HEADER} does not match"
    assert fd.verify({TOKEN_HEADER: "é"}, body, "k", NOW) == f"{TOKEN_HEADER} does not match"


def test_desk_credentials_come_from_files_and_bad_keys_are_named(tmp_path) -> None:
    (tmp_path / "token").write_text("zd-token\n")
    (tmp_path / "hook").write_text("zd-hook\n")
    cfg = tmp_path / "omnigate.yaml"
    cfg.write_text(f"desks:\n  zd:\n    kind: zendesk\n    url: https://acme.zendesk.com\n    email: bot@acme.com\n"
                   f"    token_file: {tmp_path / 'token'}\n    webhook_secret_file: {tmp_path / 'hook'}\n")
    desk = load(str(cfg), environ={}).desks["zd"]
    assert (desk.token, desk.webhook_secret, desk.mode, desk.ownership) == ("zd-token", "zd-hook", "push", "omnigate")
    with pytest.raises(ConfigError, match="desks.zd.mode"):
        load(None, environ={}, flags={"desks": {"zd": {"kind": "zendesk", "url": "https://x", "email": "a@b",
                                                       "token": "t", "webhook_secret": "s", "mode": "pull"}}})
    with pytest.raises(ConfigError, match="desks.zd lacks its API token"):
        load(None, environ={}, flags={"desks": {"zd": {"kind": "zammad", "url": "https://x"}}})
    with pytest.raises(ConfigError, match="webhook_secret_file"):
        load(None, environ={}, flags={"desks": {"zd": {"kind": "freshdesk", "url": "https://x", "token": "t"}}})
