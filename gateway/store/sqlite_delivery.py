"""SQLite operations for platform delivery reports (WhatsApp statuses, Messenger deliveries and reads).

- A delivery report (a WhatsApp status, a Messenger delivery or read) is a
  Commit with ``delivery`` set: :func:`apply_delivery` finds the reply whose
  outbox row recorded that ``external_id`` when it was sent (indexed), moves
  its timeline entry's ``data.delivery`` forward (``sent`` → ``delivered``
  → ``read``; ``failed`` with the platform's error wins over all; a late
  report never moves it back) and queues a ``message.status`` event; a
  report that names no message (a Messenger read "watermark") moves every
  reply to that contact on that channel sent up to the watermark. A
  report on a message the store does not know is kept a day in
  ``delivery_early``: the platform may report on a reply before the send
  API's answer was settled, and the settle applies it then; a report for a
  message omnigate did not send (the business app, another tool) changes
  nothing and is dropped after the day.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from gateway.store.base import REPLY_TOPIC
from gateway.store.sqlite_webhooks import insert_events
from routing.state import Commit

#: Schema migration (delivery reports find their reply by the platform's id;
#: reply windows read the contact's last message on a channel).
MIGRATION = """
    CREATE INDEX outbox_external ON outbox (external_id) WHERE external_id IS NOT NULL;
    CREATE INDEX timeline_contact_kind ON timeline (contact_id, channel, kind, at);
    CREATE TABLE delivery_early (
        external_id TEXT NOT NULL,
        status      TEXT NOT NULL,
        report      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (external_id, status)
    ) WITHOUT ROWID;
    CREATE INDEX delivery_early_created ON delivery_early (created_at);
"""

#: How long a report for a message we do not know (yet) is kept: the reply it
#: belongs to may be settled a moment after the platform reported on it; a
#: report for a message sent by another tool is dropped after this.
EARLY_KEEP_MS = 24 * 3600 * 1000

#: How far along a delivery is; a report never moves it back.
RANK = {"queued": 0, "retrying": 0, "sent": 1, "delivered": 2, "read": 3, "played": 3, "failed": 4}

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def apply_delivery(conn: sqlite3.Connection, c: Commit, now_ms: int) -> tuple[str | None, str | None]:
    """Apply ``c.delivery``; (ticket id, contact id) of the reply, or Nones when unknown."""
    d = c.delivery
    assert d is not None
    if d.watermark is not None:
        return _apply_watermark(conn, d, now_ms)
    row = conn.execute(
        "SELECT o.timeline_id, o.ticket_id, t.data, t.contact_id FROM outbox o JOIN timeline t ON t.id = o.timeline_id "
        "WHERE o.external_id = ? AND o.topic = ? ORDER BY o.seq DESC LIMIT 1", (d.external_id, REPLY_TOPIC),
    ).fetchone() if d.external_id else None
    if row is None:
        if d.external_id:  # perhaps our reply, sent but not settled yet: applied when it is
            conn.execute("DELETE FROM delivery_early WHERE created_at < ?", (now_ms - EARLY_KEEP_MS,))
            conn.execute("INSERT OR REPLACE INTO delivery_early (external_id, status, report, created_at) "
                         "VALUES (?,?,?,?)", (d.external_id, d.status, _enc.encode(d).decode(), now_ms))
        return None, None
    timeline_id, ticket_id, data_json, contact_id = row
    _advance(conn, d, timeline_id, ticket_id, contact_id, data_json, now_ms)
    return ticket_id, contact_id


def apply_early_reports(conn: sqlite3.Connection, external_id: str, timeline_id: str, ticket_id: str | None,
                        now_ms: int) -> None:
    """A reply was just settled as sent with ``external_id``: apply the
    platform's reports on it that arrived first (a race between the send
    API's answer and the status webhook)."""
    rows = conn.execute("SELECT report FROM delivery_early WHERE external_id = ?", (external_id,)).fetchall()
    if not rows:
        return
    from routing.state import DeliveryStatus

    for (report,) in rows:
        d = msgspec.json.decode(report, type=DeliveryStatus)
        r = conn.execute("SELECT data, contact_id FROM timeline WHERE id = ?", (timeline_id,)).fetchone()
        if r is not None:
            _advance(conn, d, timeline_id, ticket_id, r[1], r[0], now_ms)
    conn.execute("DELETE FROM delivery_early WHERE external_id = ?", (external_id,))


def _apply_watermark(conn: sqlite3.Connection, d: Any, now_ms: int) -> tuple[str | None, str | None]:
    """Every reply to the contact on the channel sent up to the watermark
    (a Messenger read or delivery names no message) that has not got that far."""
    if d.contact_id is None:
        return None, None
    from gateway.store import sqlite

    contact_id = sqlite._resolve_merged(conn, d.contact_id)
    rows = conn.execute(
        "SELECT id, ticket_id, data FROM timeline WHERE contact_id = ? AND channel = ? AND kind = 'message_out' "
        "AND at <= ? ORDER BY at DESC LIMIT 50", (contact_id, d.channel, sqlite.ms(d.watermark)),
    ).fetchall()
    last_ticket = None
    for timeline_id, ticket_id, data_json in rows:
        data = _dec.decode(data_json) if data_json else {}
        current = (data.get("delivery") or {}).get("status", "queued")
        if current in ("queued", "retrying", "failed") or RANK.get(current, 0) >= RANK.get(d.status, 0):
            continue  # not sent yet, failed, or already that far
        _advance(conn, d, timeline_id, ticket_id, contact_id, data_json, now_ms)
        last_ticket = last_ticket or ticket_id
    return last_ticket, contact_id


def advanced(delivery: dict[str, Any] | None, d: Any) -> dict[str, Any]:
    """A reply's ``data.delivery`` after the platform's report ``d`` (both
    backends): the report's time kept per status, the status moved forward
    only (never past ``failed``), a failure's reason and code."""
    delivery = dict(delivery or {})
    current = delivery.get("status", "queued")
    if d.external_id:
        delivery.setdefault("external_id", d.external_id)
    delivery[f"{d.status}_at"] = d.at.isoformat()
    if RANK.get(d.status, 0) >= RANK.get(current, 0) and current != "failed":
        delivery["status"] = d.status
    if d.status == "failed":
        delivery["reason"] = d.error or "the platform reported the message as failed"
        if d.error_code:
            delivery["code"] = d.error_code
    return delivery


def _advance(conn: sqlite3.Connection, d: Any, timeline_id: str, ticket_id: str | None, contact_id: str | None,
             data_json: str | None, now_ms: int) -> None:
    data: dict[str, Any] = _dec.decode(data_json) if data_json else {}
    delivery = data["delivery"] = advanced(data.get("delivery"), d)
    conn.execute("UPDATE timeline SET data = ? WHERE id = ?", (_enc.encode(data).decode(), timeline_id))
    payload = {"timeline_id": timeline_id, "ticket_id": ticket_id, "contact_id": contact_id, "source": "report",
               "channel": d.channel,
               "external_id": delivery.get("external_id"), "status": d.status, "delivery": delivery}
    insert_events(conn, [("message.status", ticket_id, payload)], now_ms)
