"""The API channel and the read endpoints, through a running app."""

from __future__ import annotations

import asyncio
import base64

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import AUTH, drain


def msg(ext: str, value: str = "13800138000", kind: str = "phone", text: str = "我要退款，订单 123", **kw) -> dict:
    return {"external_id": ext, "sender": {"kind": kind, "value": value, "name": "王小明"}, "text": text, **kw}


async def post(client, body, headers=AUTH):
    return await client.post("/channels/api/messages", json=body, headers=headers)


async def test_message_becomes_a_ticket_on_its_contact(gw):
    client, app = gw
    r = await post(client, msg("e1", attachments=[{"name": "a.txt", "content_type": "text/plain",
                                                  "data_base64": base64.b64encode(b"hello").decode()}]))
    assert r.status == 202
    jid = (await r.json())["journal_id"]
    await drain(app)
    j = await (await client.get(f"/api/v1/journal/{jid}", headers=AUTH)).json()
    assert j["status"] == "processed" and j["ticket_id"] and j["contact_id"]
    ticket = await (await client.get(f"/api/v1/tickets/{j['ticket_id']}", headers=AUTH)).json()
    assert ticket["status"] == "new" and ticket["number"] >= 1000 and ticket["subject"] == "我要退款，订单 123"
    by_number = await (await client.get(f"/api/v1/tickets/{ticket['number']}", headers=AUTH)).json()
    assert by_number["id"] == ticket["id"]
    contact = await (await client.get(f"/api/v1/contacts/{j['contact_id']}", headers=AUTH)).json()
    assert contact["identities"] == [{"kind": "phone", "value": "+8613800138000"}]  # E.164, region CN
    assert contact["name"] == "王小明" and contact["tickets"][0]["id"] == ticket["id"]
    tl = await (await client.get(f"/api/v1/contacts/{j['contact_id']}/timeline", headers=AUTH)).json()
    [entry] = tl["items"]
    assert entry["kind"] == "message_in" and entry["text"] == "我要退款，订单 123"
    [att] = entry["attachments"]
    assert att["size"] == 5 and att["storage_ref"] == att["sha256"]


async def test_same_external_id_changes_nothing(gw):
    client, app = gw
    first = await (await post(client, msg("dup"))).json()
    await drain(app)
    again = await post(client, msg("dup", text="changed text"))
    assert again.status == 202 and (await again.json()) == first
    await drain(app)
    j = await (await client.get(f"/api/v1/journal/{first['journal_id']}", headers=AUTH)).json()
    tl = await (await client.get(f"/api/v1/contacts/{j['contact_id']}/timeline", headers=AUTH)).json()
    assert len(tl["items"]) == 1


async def test_bad_requests_are_refused_and_not_stored(gw):
    client, app = gw
    r = await post(client, msg("x"), headers={"Authorization": "Bearer wrong"})
    assert r.status == 401 and r.content_type == "application/problem+json"
    r = await post(client, msg("x"), headers={})
    assert r.status == 401
    r = await client.post("/channels/api/messages", data=b"{not json", headers=AUTH)
    body = await r.json()
    assert r.status == 400 and "malformed JSON" in body["detail"]
    r = await post(client, {"external_id": "x", "sender": {"kind": "pigeon", "value": "1"}, "text": "t"})
    assert r.status == 400 and (await r.json())["field"] == "$.sender.kind"
    r = await post(client, {"external_id": "x", "sender": {"kind": "email", "value": "a@b.cn"}})
    assert r.status == 400 and "text" in (await r.json())["detail"]
    for kind, value in (("phone", "abc"), ("email", "not-an-address"), ("phone", " ")):
        r = await post(client, {"external_id": "x", "sender": {"kind": kind, "value": value}, "text": "t"})
        assert r.status == 422 and (await r.json())["field"] == "$.sender.value"  # refused before the journal
    r = await client.post("/channels/api/messages", data=b"x" * (65 * 1024), headers=AUTH)
    assert r.status == 413 and r.content_type == "application/problem+json"
    r = await client.get("/api/v1/journal", headers=AUTH)
    assert (await r.json())["items"] == []
    metrics = await (await client.get("/metrics")).text()
    assert 'omnigate_rejected_total{channel="api",reason="too_large"} 1.0' in metrics


async def test_no_token_configured_answers_401_with_hint(aiohttp_client, tmp_path):
    from gateway.app import create_app
    from gateway.config import load

    app = create_app(load(None, environ={"OMNIGATE_DATA_DIR": str(tmp_path)}))
    client = await aiohttp_client(app)
    r = await post(client, msg("x"))
    assert r.status == 401 and "OMNIGATE_API_TOKEN" in (await r.json())["detail"]


async def test_unparseable_payload_is_kept_failed_and_replayable(aiohttp_client, tmp_path):
    """A WeChat callback signed with the right token but encrypted for another
    AES key (the account was configured with the wrong one) is journaled as
    failed with the reason; replaying it unchanged fails again; once the key is
    fixed (and the gateway restarted), the replay makes it a ticket."""
    from gateway.app import create_app
    from tests.connectors.wechat.support import AES_KEY, NONCE, TOKEN, envelope, sign
    from tests.gateway.conftest import business_hours, make_config

    appid = "wxreplay000001"
    xml = (f"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[o-replay-1]]></FromUserName>"
           f"<CreateTime>1764554400</CreateTime><MsgType><![CDATA[text]]></MsgType>"
           f"<Content><![CDATA[退款还没到账]]></Content><MsgId>880001</MsgId></xml>")
    signed_at = str(int(business_hours()().timestamp()))  # inside the replay window of the gateway's clock
    body, msg_signature = envelope("oa", xml, appid, timestamp=signed_at)
    query = {"signature": sign(TOKEN, signed_at, NONCE), "timestamp": signed_at, "nonce": NONCE,
             "encrypt_type": "aes", "msg_signature": msg_signature}

    def gateway(aes_key: str):
        account = {"appid": appid, "token": TOKEN, "encoding_aes_key": aes_key, "app_secret": "unused"}
        return create_app(make_config(tmp_path, wechat={"accounts": {"main": account}}), clock=business_hours())

    client = await aiohttp_client(gateway("B" * 43))  # the wrong key
    r = await client.post(f"/channels/wechat/{appid}", params=query, data=body)
    assert (r.status, await r.text()) == (200, "success")  # signed by WeChat: kept, not refused
    await drain(client.server.app)
    failed = (await (await client.get("/api/v1/journal?status=failed", headers=AUTH)).json())["items"]
    [entry] = failed
    assert "decrypt" in entry["error"].lower() or "aes" in entry["error"].lower(), entry["error"]
    r = await client.post(f"/api/v1/journal/{entry['id']}/replay", headers=AUTH)
    assert r.status == 202
    await drain(client.server.app)
    again = await (await client.get(f"/api/v1/journal/{entry['id']}", headers=AUTH)).json()
    assert again["status"] == "failed"  # nothing changed: the cause is still there
    await client.close()

    client = await aiohttp_client(gateway(AES_KEY))  # the operator fixed the key
    r = await client.post(f"/api/v1/journal/{entry['id']}/replay", headers=AUTH)
    assert r.status == 202
    await drain(client.server.app)
    done = await (await client.get(f"/api/v1/journal/{entry['id']}", headers=AUTH)).json()
    assert done["status"] == "processed" and done["ticket_id"] and not done.get("error")
    timeline = await (await client.get(f"/api/v1/tickets/{done['ticket_id']}/timeline", headers=AUTH)).json()
    assert [e["text"] for e in timeline["items"] if e["kind"] == "message_in"] == ["退款还没到账"]


async def test_cross_channel_identity_and_near_duplicate(gw):
    client, app = gw
    a = await (await post(client, msg("n1", text="The app crashes when I pay"))).json()
    await drain(app)
    b = await (await post(client, msg("n2", text="the  APP crashes when I pay!"))).json()
    await drain(app)
    ja = await (await client.get(f"/api/v1/journal/{a['journal_id']}", headers=AUTH)).json()
    jb = await (await client.get(f"/api/v1/journal/{b['journal_id']}", headers=AUTH)).json()
    assert ja["ticket_id"] == jb["ticket_id"] and ja["contact_id"] == jb["contact_id"]
    tl = await (await client.get(f"/api/v1/contacts/{ja['contact_id']}/timeline", headers=AUTH)).json()
    kinds = [e["kind"] for e in tl["items"]]
    assert kinds == ["message_in", "duplicate"]
    assert tl["items"][1]["linked_to"] == tl["items"][0]["id"]


async def test_merge_and_unmerge_through_the_api(gw):
    client, app = gw
    a = await (await post(client, msg("m1", value="a@x.cn", kind="email", text="first"))).json()
    b = await (await post(client, msg("m2", value="b@x.cn", kind="email", text="second"))).json()
    await drain(app)
    ca = (await (await client.get(f"/api/v1/journal/{a['journal_id']}", headers=AUTH)).json())["contact_id"]
    cb = (await (await client.get(f"/api/v1/journal/{b['journal_id']}", headers=AUTH)).json())["contact_id"]
    r = await client.post(f"/api/v1/contacts/{cb}/merge", json={"into": ca, "reason": "same customer"},
                          headers={**AUTH, "X-Omnigate-Actor": "agent:7"})
    assert r.status == 200
    assert {i["value"] for i in (await r.json())["identities"]} == {"a@x.cn", "b@x.cn"}
    tl = await (await client.get(f"/api/v1/contacts/{ca}/timeline", headers=AUTH)).json()
    assert sorted(e["text"] for e in tl["items"] if e["kind"] == "message_in") == ["first", "second"]
    assert any(e["kind"] == "identity" and "agent:7" in e["text"] for e in tl["items"])
    r = await client.post(f"/api/v1/contacts/{cb}/merge", json={"into": ca}, headers=AUTH)
    assert r.status == 409
    r = await client.post(f"/api/v1/contacts/{cb}/merge", json={"into_": ca}, headers=AUTH)
    assert r.status == 400
    r = await client.post(f"/api/v1/contacts/{cb}/unmerge", headers=AUTH)
    assert r.status == 200 and (await r.json())["identities"] == [{"kind": "email", "value": "b@x.cn"}]
    tl = await (await client.get(f"/api/v1/contacts/{ca}/timeline", headers=AUTH)).json()
    assert [e["text"] for e in tl["items"] if e["kind"] == "message_in"] == ["first"]


async def test_ticket_ref_threads_and_follow_up(gw):
    client, app = gw
    a = await (await post(client, msg("t1", text="printer broken"))).json()
    await drain(app)
    ja = await (await client.get(f"/api/v1/journal/{a['journal_id']}", headers=AUTH)).json()
    number = (await (await client.get(f"/api/v1/tickets/{ja['ticket_id']}", headers=AUTH)).json())["number"]
    b = await (await post(client, msg("t2", subject=f"Re: 工单号 {number}", text="still broken, any news?"))).json()
    await drain(app)
    jb = await (await client.get(f"/api/v1/journal/{b['journal_id']}", headers=AUTH)).json()
    assert jb["ticket_id"] == ja["ticket_id"]
    tl = await (await client.get(f"/api/v1/tickets/{ja['ticket_id']}/timeline", headers=AUTH)).json()
    assert tl["items"][-1]["data"]["reasons"]["threading"] == {
        "stage": "threading", "by": "ticket_ref", "ref": f"#{number}", "ticket": ja["ticket_id"]}


async def test_health_ready_metrics(gw):
    client, app = gw
    assert (await client.get("/healthz")).status == 200
    r = await client.get("/readyz")
    body = await r.json()
    assert r.status == 200 and body["detail"]["store"]["ok"]
    await post(client, msg("h1"))
    await post(client, msg("h2"))  # the same text from the same sender: a near duplicate
    from gateway import keys

    await app[keys.INGEST].ingest("api", "api", "h3", b'{"external_id": 5}', None)  # stored, unparseable
    again = msgspec.json.encode(msg("h1"))  # h1 once more, under another journal key: an exact duplicate
    await app[keys.INGEST].ingest("api", "api", "h1-again", again, None)
    await drain(app)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(await (await client.get("/metrics")).text())
               for s in family.samples}  # sample lines only: # HELP/# TYPE lines do not count
    api = (("channel", "api"),)
    assert samples[("omnigate_received_total", api)] == 4
    assert samples[("omnigate_processed_total", api)] == 1
    assert samples[("omnigate_near_duplicates_total", api)] == 1
    assert samples[("omnigate_deduped_total", api)] == 1
    assert samples[("omnigate_failed_total", api)] == 1
    assert samples[("omnigate_pipeline_latency_seconds_count", api)] == 3
    assert ("omnigate_journal_backlog", ()) in samples


async def test_concurrent_posts_each_become_one_entry(gw):
    client, app = gw
    bodies = [msg(f"c{i}", value=f"1380013{i:04d}", text=f"question {i}") for i in range(60)]
    rs = await asyncio.gather(*(post(client, b) for b in bodies))
    assert all(r.status == 202 for r in rs)
    await drain(app)
    items = (await (await client.get("/api/v1/journal?limit=1000", headers=AUTH)).json())["items"]
    assert len(items) == 60 and all(e["status"] == "processed" for e in items)
    assert len({e["ticket_id"] for e in items}) == 60



async def test_a_store_that_cannot_take_the_message_answers_503(gw):
    client, app = gw
    from gateway import keys

    await app[keys.STORE].close()  # the journal is gone (disk full, closed…)
    r = await post(client, msg("late"))
    assert r.status == 503 and r.headers["Retry-After"] == "5"
    assert r.content_type == "application/problem+json"


async def test_a_cc_the_agent_adds_may_reply_onto_the_ticket_but_nobody_else(gw):
    """Issue 10, item 2: header threading joins another contact's ticket only for its participants."""
    from gateway import keys

    client, app = gw

    def mail(sender: str, mid: str, reply_to: str | None = None) -> bytes:
        irt = f"In-Reply-To: <{reply_to}>\r\n" if reply_to else ""
        return (f"From: {sender}\r\nTo: support@corp.example\r\nSubject: Contract\r\nMessage-ID: <{mid}>\r\n{irt}"
                f"\r\nText of {mid}\r\n").encode()

    first = await app[keys.INGEST].ingest("email", "support", "c1", mail("li@example.cn", "c1@example.cn"),
                                          {"mail_from": "li@example.cn", "rcpt_tos": ["support@corp.example"]})
    await drain(app)
    ticket_id = (await (await client.get(f"/api/v1/journal/{first.journal_id}", headers=AUTH)).json())["ticket_id"]
    r = await client.post(f"/api/v1/tickets/{ticket_id}/participants", json={"value": "not-an-address"}, headers=AUTH)
    assert r.status == 422 and (await r.json())["field"] == "$.value"
    r = await client.post(f"/api/v1/tickets/{ticket_id}/participants", json={"value": "Lawyer@Firm.example"},
                          headers=AUTH)
    assert r.status == 201 and (await r.json())["value"] == "lawyer@firm.example"
    listed = await (await client.get(f"/api/v1/tickets/{ticket_id}/participants", headers=AUTH)).json()
    assert [(p["value"], p["source"]) for p in listed["items"]] == [("lawyer@firm.example", "agent")]

    ids = []
    for n, sender in enumerate(("lawyer@firm.example", "stranger@else.example")):
        res = await app[keys.INGEST].ingest("email", "support", f"r{n}", mail(sender, f"r{n}@x", "c1@example.cn"),
                                            {"mail_from": sender, "rcpt_tos": ["support@corp.example"]})
        await drain(app)
        ids.append((await (await client.get(f"/api/v1/journal/{res.journal_id}", headers=AUTH)).json())["ticket_id"])
    assert ids[0] == ticket_id and ids[1] != ticket_id
    ticket = await (await client.get(f"/api/v1/tickets/{ticket_id}", headers=AUTH)).json()
    assert ticket["reply_to"]["to"]["value"] == "li@example.cn"
