"""Platform delivery reports (a WhatsApp status, a Messenger delivery or read)
on every backend (sqlite_delivery.py, redis_delivery.py): a report moves its
reply's ``data.delivery`` forward and never back, ``failed`` wins, a report
that came before the send was settled is applied by the settle, a watermark
moves every reply sent up to it."""

from __future__ import annotations

from datetime import timedelta

from gateway.store.base import REPLY_TOPIC, Delivery, ReplyDraft
from routing.state import Commit, DeliveryStatus
from tests.store.test_api_ops import T0, make


async def _reply(store, n: int, text: str, *, at, external_id: str | None) -> str:
    """A reply on ticket T001, sent (settled) at ``at`` with the platform's ``external_id``."""
    entry = await store.reply_create("T001", ReplyDraft(text=text, author="agent-1"))
    (item,) = await store.outbox_claim(REPLY_TOPIC, 10, 60)
    if external_id is not None:
        assert await store.outbox_settle(item, Delivery(status="sent", at=at, attempts=1, external_id=external_id))
    return entry.id


async def _report(store, n: int, **kw) -> None:
    j = (await store.journal_append("whatsapp", "acct", f"status-{n}", b"{}")).journal_id
    kw.setdefault("channel", "email")
    await store.commit(Commit(journal_id=j, outcome="processed", message_key=("whatsapp", "acct", f"status-{n}"),
                              delivery=DeliveryStatus(**kw)))


async def _delivery(store, entry_id: str) -> dict:
    page = await store.timeline(ticket_id="T001", limit=50)
    (entry,) = [e for e in page.items if e.id == entry_id]
    return entry.data.get("delivery") or {}


async def test_a_report_moves_the_reply_forward_never_back_and_failed_wins(store):
    await make(store, 1)
    rid = await _reply(store, 1, "Hello", at=T0 + timedelta(minutes=5), external_id="wamid.1")
    await _report(store, 1, external_id="wamid.1", status="delivered", at=T0 + timedelta(minutes=6))
    assert (await _delivery(store, rid))["status"] == "delivered"
    await _report(store, 2, external_id="wamid.1", status="read", at=T0 + timedelta(minutes=7))
    await _report(store, 3, external_id="wamid.1", status="delivered", at=T0 + timedelta(minutes=6, seconds=30))
    d = await _delivery(store, rid)
    assert d["status"] == "read"  # a late "delivered" never moves it back
    assert d["external_id"] == "wamid.1" and "read_at" in d and "delivered_at" in d
    await _report(store, 4, external_id="wamid.1", status="failed", at=T0 + timedelta(minutes=8),
                  error_code="131047", error="Re-engagement message")
    d = await _delivery(store, rid)
    assert (d["status"], d["code"], d["reason"]) == ("failed", "131047", "Re-engagement message")
    await _report(store, 5, external_id="wamid.1", status="read", at=T0 + timedelta(minutes=9))
    assert (await _delivery(store, rid))["status"] == "failed"  # failed wins over all


async def test_a_report_before_the_send_was_settled_is_applied_by_the_settle(store):
    await make(store, 1)
    await _report(store, 1, external_id="wamid.early", status="delivered", at=T0 + timedelta(minutes=6))
    await _report(store, 2, external_id="wamid.other-tool", status="read", at=T0 + timedelta(minutes=6))
    rid = await _reply(store, 1, "Hello", at=T0 + timedelta(minutes=5), external_id="wamid.early")
    d = await _delivery(store, rid)
    assert d["status"] == "delivered" and d["external_id"] == "wamid.early"


async def test_a_watermark_moves_every_reply_sent_up_to_it(store):
    await make(store, 1)
    first = await _reply(store, 1, "one", at=T0 + timedelta(minutes=5), external_id="m.1")
    second = await _reply(store, 2, "two", at=T0 + timedelta(minutes=6), external_id="m.2")
    entries = {e.id: e for e in (await store.timeline(ticket_id="T001", limit=50)).items}
    cut = max(entries[first].at, entries[second].at)
    await _report(store, 1, external_id="", status="read", at=cut + timedelta(minutes=1), watermark=cut,
                  contact_id="C1")
    assert (await _delivery(store, first))["status"] == "read"
    assert (await _delivery(store, second))["status"] == "read"
    unsent = await store.reply_create("T001", ReplyDraft(text="three", author="agent-1"))
    await _report(store, 2, external_id="", status="read", at=cut + timedelta(minutes=2),
                  watermark=cut + timedelta(minutes=2), contact_id="C1")
    assert (await _delivery(store, unsent.id)).get("status") in (None, "queued")  # not sent: not read either


async def test_a_redelivered_report_is_a_replay(store):
    await make(store, 1)
    rid = await _reply(store, 1, "Hello", at=T0 + timedelta(minutes=5), external_id="wamid.1")
    await _report(store, 1, external_id="wamid.1", status="delivered", at=T0 + timedelta(minutes=6))
    j = (await store.journal_append("whatsapp", "acct", "status-again", b"{}")).journal_id
    result = await store.commit(Commit(
        journal_id=j, outcome="processed", message_key=("whatsapp", "acct", "status-1"),
        delivery=DeliveryStatus(channel="email", external_id="wamid.1", status="failed", at=T0 + timedelta(minutes=7))))
    assert result.outcome == "duplicate"
    assert (await _delivery(store, rid))["status"] == "delivered"

