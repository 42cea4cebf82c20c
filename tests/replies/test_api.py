"""``POST /api/v1/tickets/{id}/replies`` through a running app: what one
reply transaction writes (timeline entry, outbox row, ticket), notes, the
auto-reply store operation, and the refusals."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import msgspec

from gateway import keys
from gateway.store.base import REPLY_TOPIC
from routing.model import Identity, Outbound, utcnow
from routing.state import Commit, NewContact, NewTicket
from tests.e2e.conftest import wait_for
from tests.gateway.conftest import AUTH, drain


async def api_ticket(client, app, ext: str = "r1") -> dict:
    """A ticket opened through the API channel (which has no connector to send with)."""
    body = {"external_id": ext, "sender": {"kind": "email", "value": "li@example.com", "name": "Li"},
            "subject": "Invoice", "text": "Where is my invoice?"}
    assert (await client.post("/channels/api/messages", json=body, headers=AUTH)).status == 202
    await drain(app)
    (entry,) = (await (await client.get("/api/v1/journal", headers=AUTH)).json())["items"]
    return await (await client.get(f"/api/v1/tickets/{entry['ticket_id']}", headers=AUTH)).json()


def db(app) -> sqlite3.Connection:
    return sqlite3.connect(app[keys.STORE].path)


def outbox_rows(app) -> list[tuple]:
    with db(app) as conn:
        return conn.execute("SELECT topic, status, attempts, timeline_id, payload FROM outbox ORDER BY seq").fetchall()


def version(app, ticket_id: str) -> int:
    with db(app) as conn:
        return conn.execute("SELECT version FROM tickets WHERE id = ?", (ticket_id,)).fetchone()[0]


async def post_reply(client, ref, body: dict):
    return await client.post(f"/api/v1/tickets/{ref}/replies", json=body, headers=AUTH)


async def test_reply_is_one_transaction_of_entry_outbox_row_and_ticket(gw):
    client, app = gw
    ticket = await api_ticket(client, app)
    before = version(app, ticket["id"])
    data = base64.b64encode(b"%PDF-1.4 invoice").decode()
    resp = await post_reply(client, ticket["number"], {"text": "Attached.", "author": "agent-1", "attachments": [
        {"name": "invoice.pdf", "content_type": "application/pdf", "data_base64": data}]})
    assert resp.status == 202
    entry = await resp.json()
    assert entry["kind"] == "message_out" and entry["ticket_id"] == ticket["id"] and entry["channel"] == "api"
    assert entry["data"] == {"author": "agent-1", "auto": False, "public": True, "delivery": {"status": "queued"}}
    (att,) = entry["attachments"]
    assert att["size"] == 16 and att["storage_ref"] == att["sha256"]
    replies = [r for r in outbox_rows(app) if r[0] == REPLY_TOPIC]
    ((_, _, _, timeline_id, payload),) = replies
    outbound = msgspec.json.decode(payload, type=Outbound)
    assert timeline_id == entry["id"]
    assert (outbound.channel, outbound.account, outbound.to) == ("api", "api", Identity("email", "li@example.com"))
    assert (outbound.text, outbound.subject, outbound.author) == ("Attached.", "Invoice", "agent-1")
    assert outbound.thread.ticket_ref == str(ticket["number"])
    assert outbound.attachments[0].storage_ref == att["sha256"] and outbound.attachments[0].data is None
    after = await (await client.get(f"/api/v1/tickets/{ticket['id']}", headers=AUTH)).json()
    assert after["status"] == "open" and after["first_response_at"]
    assert version(app, ticket["id"]) == before + 1
    # a second reply is not the first response
    assert (await post_reply(client, ticket["id"], {"text": "And another thing."})).status == 202
    again = await (await client.get(f"/api/v1/tickets/{ticket['id']}", headers=AUTH)).json()
    assert again["first_response_at"] == after["first_response_at"]


async def test_reply_on_a_channel_without_a_connector_fails_with_the_reason(gw):
    client, app = gw
    ticket = await api_ticket(client, app)
    entry = await (await post_reply(client, ticket["id"], {"text": "Hello"})).json()

    async def delivery() -> dict:
        items = (await (await client.get(f"/api/v1/tickets/{ticket['id']}/timeline", headers=AUTH)).json())["items"]
        return next(e for e in items if e["id"] == entry["id"])["data"]["delivery"]

    failed = await wait_for(delivery, lambda d: d["status"] != "queued")
    assert failed["status"] == "failed" and "no running connector" in failed["reason"] and failed["attempts"] == 1


async def test_internal_note_is_never_sent_and_changes_no_sla_fact(gw):
    client, app = gw
    ticket = await api_ticket(client, app)
    resp = await post_reply(client, ticket["id"], {"text": "VIP, be nice", "internal": True, "author": "agent-2"})
    assert resp.status == 201
    note = await resp.json()
    assert note["kind"] == "note" and note["data"] == {"author": "agent-2", "auto": False, "public": False}
    assert [r for r in outbox_rows(app) if r[0] == REPLY_TOPIC] == []
    after = await (await client.get(f"/api/v1/tickets/{ticket['id']}", headers=AUTH)).json()
    assert after["status"] == "new" and "first_response_at" not in after


async def test_auto_reply_is_the_systems_and_is_no_first_response(gw):
    client, app = gw
    ticket = await api_ticket(client, app)
    entry = await app[keys.STORE].auto_reply(ticket["id"], "We got your message.", in_reply_to_auto=None)
    assert entry.kind == "message_out"
    assert entry.data == {"author": "system", "auto": True, "public": True, "delivery": {"status": "queued"}}
    payload = [r[4] for r in outbox_rows(app) if r[0] == REPLY_TOPIC][0]
    assert msgspec.json.decode(payload, type=Outbound).auto is True
    after = await (await client.get(f"/api/v1/tickets/{ticket['id']}", headers=AUTH)).json()
    assert after["status"] == "new" and "first_response_at" not in after


async def test_ticket_without_reply_target_is_409_but_takes_notes(gw):
    client, app = gw
    now = utcnow()
    store = app[keys.STORE]
    result = await store.commit(Commit(
        journal_id="none", outcome="processed", message_key=("phone", "pbx", "call-1"), contact_id="C1", new_contact=NewContact("C1", "Zhang", now),
        new_ticket=NewTicket(id="T1", subject="merged in by hand", channel="phone", created_at=now), ticket_id="T1"))
    resp = await post_reply(client, result.ticket_number, {"text": "Hello"})
    assert resp.status == 409 and resp.content_type == "application/problem+json"
    assert "no reply target" in (await resp.json())["detail"]
    assert (await post_reply(client, "T1", {"text": "called back", "internal": True})).status == 201


async def test_bad_requests_are_refused_with_the_field(gw):
    client, app = gw
    ticket = await api_ticket(client, app)
    cases = [
        ({"text": "  "}, 400, "$.text"),
        ({}, 400, "$.text"),
        ({"text": "x", "colour": "red"}, 400, "$.colour"),
        ({"text": "x", "internal": "yes"}, 400, "$.internal"),
        ({"text": "x", "attachments": [{"name": "a", "content_type": "text/plain", "data_base64": "%%%"}]},
         400, "$.attachments[0].data_base64"),
    ]
    for body, status, field in cases:
        resp = await post_reply(client, ticket["id"], body)
        problem = await resp.json()
        assert (resp.status, resp.content_type) == (status, "application/problem+json"), body
        assert problem.get("field") == field, problem
    assert (await post_reply(client, "999999", {"text": "x"})).status == 404
    resp = await client.post(f"/api/v1/tickets/{ticket['id']}/replies", json={"text": "x"})
    assert resp.status == 401
    assert [r for r in outbox_rows(app) if r[0] == REPLY_TOPIC] == []
    assert not list(Path(app[keys.CONFIG].data_dir, "attachments").glob("*/*"))
