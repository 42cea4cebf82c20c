"""``POST /api/v1/tickets/{id}/replies`` through a running app: what one
reply transaction writes (timeline entry, outbox row, ticket), notes, the
auto-reply store operation, and the refusals."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
from pathlib import Path

import msgspec

from connectors.base import SendError, SendResult
from gateway.outbox import DISPATCHER
from gateway import keys
from gateway.store.base import REPLY_TOPIC
from routing.model import Identity, Outbound, utcnow
from routing.state import Commit, NewContact, NewTicket
from tests.e2e.conftest import wait_for
from tests.gateway.conftest import AUTH, drain


class Accepting:
    """A connector for the API channel that accepts every reply (the real API
    channel cannot send yet: replies to its tickets are refused with 409)."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.sent: list[Outbound] = []
        self.gate = gate  # when given, a send waits until it is set

    async def send(self, outbound: Outbound) -> SendResult:
        if self.gate is not None:
            await self.gate.wait()
        self.sent.append(outbound)
        return SendResult()

    async def close(self) -> None:
        pass


async def api_ticket(client, app, ext: str = "r1", *, sendable: bool = True) -> dict:
    """A ticket opened through the API channel (given a connector that accepts replies when ``sendable``)."""
    if sendable:
        app[keys.CONNECTORS].setdefault("api", Accepting())
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
    gate = app[keys.CONNECTORS]["api"].gate = asyncio.Event()  # the channel takes its time
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
    assert after["status"] == "open" and "first_response_at" not in after  # not delivered yet
    assert version(app, ticket["id"]) == before + 1
    gate.set()
    sent = await wait_for(lambda: _delivery(client, ticket["id"], entry["id"]), lambda d: d["status"] == "sent")
    after = await (await client.get(f"/api/v1/tickets/{ticket['id']}", headers=AUTH)).json()
    assert after["first_response_at"][:23] == sent["at"][:23]  # delivered at (ms)
    # a second reply is not the first response
    assert (await post_reply(client, ticket["id"], {"text": "And another thing."})).status == 202
    again = await (await client.get(f"/api/v1/tickets/{ticket['id']}", headers=AUTH)).json()
    assert again["first_response_at"] == after["first_response_at"]


async def test_reply_on_a_channel_without_a_connector_is_refused_at_once(gw):
    client, app = gw
    ticket = await api_ticket(client, app, sendable=False)
    resp = await post_reply(client, ticket["id"], {"text": "Hello"})
    assert resp.status == 409
    problem = await resp.json()
    assert "api channel cannot send" in problem["detail"] and problem["field"] == "channel"
    assert [r for r in outbox_rows(app) if r[0] == REPLY_TOPIC] == []  # nothing queued to fail later
    # an internal note is still fine
    assert (await post_reply(client, ticket["id"], {"text": "n", "internal": True})).status == 201


async def test_a_failed_delivery_is_not_a_first_response(gw):
    client, app = gw
    ticket = await api_ticket(client, app)

    class Refusing(Accepting):
        async def send(self, outbound: Outbound) -> SendResult:
            raise SendError("the customer blocked us", code="403")

    app[keys.CONNECTORS]["api"] = Refusing()
    entry = await (await post_reply(client, ticket["id"], {"text": "Hello", "author": "agent-1"})).json()
    failed = await wait_for(lambda: _delivery(client, ticket["id"], entry["id"]), lambda d: d["status"] != "queued")
    assert failed["status"] == "failed"
    after = await (await client.get(f"/api/v1/tickets/{ticket['id']}", headers=AUTH)).json()
    assert "first_response_at" not in after
    stats = await (await client.get("/api/v1/stats", headers=AUTH)).json()
    assert stats["first_response"]["count"] == 0, stats
    # the same reply delivered: now it counts, at the time it was delivered
    app[keys.CONNECTORS]["api"] = Accepting()
    entry = await (await post_reply(client, ticket["id"], {"text": "Again", "author": "agent-1"})).json()
    sent = await wait_for(lambda: _delivery(client, ticket["id"], entry["id"]), lambda d: d["status"] != "queued")
    assert sent["status"] == "sent"
    after = await (await client.get(f"/api/v1/tickets/{ticket['id']}", headers=AUTH)).json()
    assert after["first_response_at"][:23] == sent["at"][:23]  # delivered at (ms)
    # what a connector's can_send is told: one reply delivered since the customer wrote (the failed one is not)
    facts = await app[keys.STORE].reply_facts(ticket["id"], "api")
    assert facts["sent_since_inbound"] == 1 and facts["last_inbound_at"] is not None


async def test_a_header_with_a_line_break_fails_once_without_retries(gw):
    client, app = gw
    ticket = await api_ticket(client, app)
    # a row queued before the API checked subjects (or by another writer): the dispatcher must not retry it
    from gateway.store.base import ReplyDraft

    entry = await app[keys.STORE].reply_create(ticket["id"], ReplyDraft(text="t", subject="a\r\nBcc: x@y", author="ag"))
    app[DISPATCHER].wake()
    failed = await wait_for(lambda: _delivery(client, ticket["id"], entry.id), lambda d: d["status"] != "queued")
    assert (failed["status"], failed["attempts"]) == ("failed", 1) and "line break" in failed["reason"]
    assert app[keys.CONNECTORS]["api"].sent == []


async def _delivery(client, ticket_id: str, entry_id: str) -> dict:
    items = (await (await client.get(f"/api/v1/tickets/{ticket_id}/timeline", headers=AUTH)).json())["items"]
    return next(e for e in items if e["id"] == entry_id)["data"]["delivery"]


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
