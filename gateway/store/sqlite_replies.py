"""SQLite operations for replies and the outbox's ``reply.send`` rows.

A reply is one write transaction: its timeline entry, its outbox row (the
Outbound as payload) and the ticket's first response / status / version.
The dispatcher then *claims* due rows of one topic with a lease (an
``UPDATE … RETURNING`` in the single writer, so two dispatchers never get
the same row) and *settles* each attempt in one transaction: the row, the
timeline entry's ``data.delivery`` and, for a sent mail, the thread ref that
lets the customer's answer thread back. Rows of other topics (the webhook
events) are never claimed here.

Outbox row states: ``pending`` (due at ``next_at``), ``sending`` (leased
until ``next_at``; a holder that died is replaced once the lease runs out),
``sent``, ``failed``.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.store.base import (
    REPLY_TOPIC,
    Delivery,
    NoReplyTarget,
    NotFound,
    OutboxItem,
    ReplyDraft,
)
from gateway.store.sqlite_webhooks import insert_events
from routing.model import Identity, TimelineEntry, new_id
from routing.sla import response_verdict

if TYPE_CHECKING:
    from gateway.store.sqlite import SQLiteStore

#: Schema migration 2 (replies, outbox delivery). Applied once, in order.
MIGRATION = """
    ALTER TABLE outbox ADD COLUMN timeline_id TEXT;
    ALTER TABLE outbox ADD COLUMN lease TEXT;
    ALTER TABLE outbox ADD COLUMN external_id TEXT;
    ALTER TABLE outbox ADD COLUMN sent_at INTEGER;
    CREATE INDEX outbox_topic_due ON outbox (topic, status, next_at);
"""

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def _core() -> Any:
    """The core SQLite module, for its row helpers. Imported late: it imports
    this module (the mixin) before its own helpers exist."""
    from gateway.store import sqlite

    return sqlite


class RepliesOps:
    """Mixed into SQLiteStore: reply and outbox operations."""

    async def reply_create(self: "SQLiteStore", ticket_id: str, draft: ReplyDraft) -> TimelineEntry:
        return await self._write(_reply_create, ticket_id, draft, new_id(), self.clock())

    async def auto_reply(self: "SQLiteStore", ticket_id: str, text: str, *, subject: str | None = None,
                         in_reply_to_auto: str | None = None, to: Identity | None = None,
                         limits: AutoReplyLimits | None = None, now: datetime | None = None) -> TimelineEntry | None:
        """What the rules engine sends on its own: ``auto``, author "system".

        ``to`` overrides the ticket's reply address (an email auto-reply goes
        to the envelope sender, RFC 3834). With ``limits``, the ledger
        (``auto_reply_log``) is checked and written in the same transaction as
        the reply: None when ``to`` already had one within the window or the
        global hourly budget is spent — so a restart forgets nothing."""
        draft = ReplyDraft(text=text, subject=subject, auto=True, in_reply_to_auto=in_reply_to_auto)
        return await self._write(_auto_reply_create, ticket_id, draft, new_id(), now or self.clock(), to, limits)

    async def reply_facts(self: "SQLiteStore", ticket_id: str, channel: str) -> dict[str, Any]:
        """The conversation facts a connector's ``can_send`` judges a reply by."""
        return await self._read(_reply_facts, ticket_id, channel)

    async def outbox_claim(self: "SQLiteStore", topic: str, limit: int, lease_s: float) -> list[OutboxItem]:
        now = self.clock()
        return await self._write(_outbox_claim, topic, limit, new_id(), now, now + timedelta(seconds=lease_s))

    async def outbox_settle(self: "SQLiteStore", item: OutboxItem, delivery: Delivery) -> bool:
        return await self._write(_outbox_settle, item, delivery)

    async def outbox_next_due(self: "SQLiteStore", topic: str) -> datetime | None:
        return await self._read(_outbox_next_due, topic)


# ---------------------------------------------------------------- reply


class AutoReplyLimits(msgspec.Struct, frozen=True):
    """RFC 3834 pacing: one auto-reply per address per ``window_s``, and at
    most ``global_per_hour`` to all addresses together."""

    window_s: float = 86400.0
    global_per_hour: int = 200


def _auto_reply_create(conn: sqlite3.Connection, ticket_id: str, draft: ReplyDraft, entry_id: str, now: datetime,
                       to: Identity | None, limits: AutoReplyLimits | None) -> TimelineEntry | None:
    if limits is not None and to is not None:
        at = _core().ms(now)
        address = to.key()
        if conn.execute("SELECT 1 FROM auto_reply_log WHERE address = ? AND at > ? LIMIT 1",
                        (address, at - int(limits.window_s * 1000))).fetchone():
            return None
        if conn.execute("SELECT count(*) FROM auto_reply_log WHERE at > ?",
                        (at - 3_600_000,)).fetchone()[0] >= limits.global_per_hour:
            return None
        conn.execute("INSERT INTO auto_reply_log (address, at) VALUES (?, ?)", (address, at))
    return _reply_create(conn, ticket_id, draft, entry_id, now, to=to)


#: its effects are SQL alone: the writer may run it again with the other replayable writes
#: of its group (``gateway.store.sqlite.replayable``, not importable here: that module imports this one)
_auto_reply_create.replayable = True  # type: ignore[attr-defined]


def reply_target_and_data(number: int, reply_to: Any, draft: ReplyDraft,
                          to: Identity | None) -> tuple[Any, dict[str, Any]]:
    """Where ticket ``#number``'s reply goes (its ``reply_to``, to ``to``
    instead of the ticket's customer if given) and the timeline entry's
    ``data`` (both backends); a public reply with nowhere to go is refused."""
    target = reply_to
    if target is not None and to is not None:
        target = msgspec.structs.replace(target, to=to)
    if draft.public and target is None:
        raise NoReplyTarget(f"ticket #{number} has no reply target (it did not come in through a "
                            "channel that can be answered); add an internal note instead")
    data: dict[str, Any] = {"author": draft.author or "system", "auto": draft.auto, "public": draft.public}
    if draft.html:
        data["html"] = draft.html
    if draft.template is not None:
        data["template"] = msgspec.to_builtins(draft.template)
    if draft.public:
        data["delivery"] = {"status": "queued"}
    return target, data


def _reply_create(conn: sqlite3.Connection, ticket_id: str, draft: ReplyDraft, entry_id: str,
                  now: datetime, to: Identity | None = None) -> TimelineEntry:
    core = _core()
    ticket = core._ticket_select(conn, "id = ?", ticket_id)
    if ticket is None:
        raise NotFound(f"ticket {ticket_id} not found")
    target, data = reply_target_and_data(ticket.number, ticket.reply_to, draft, to)
    entry = TimelineEntry(
        id=entry_id, contact_id=ticket.contact_id, kind="message_out" if draft.public else "note", at=now,
        ticket_id=ticket.id, channel=target.channel if target else None, subject=draft.subject, text=draft.text,
        attachments=list(draft.attachments), data=data,
    )
    core._insert_timeline(conn, entry)
    at = core.ms(now)
    if draft.public:
        assert target is not None
        outbound = draft.outbound(new_id(), ticket, target)
        conn.execute(
            "INSERT INTO outbox (id, topic, ticket_id, timeline_id, payload, created_at, next_at) VALUES (?,?,?,?,?,?,?)",
            (outbound.id, REPLY_TOPIC, ticket.id, entry.id, _enc.encode(outbound).decode(), at, at),
        )
    sets, args = ["version = version + 1", "updated_at = ?"], [at]
    if draft.public and not draft.auto:  # an agent answered: work has begun (the first response
        # is only counted once the channel took the reply: _outbox_settle)
        sets += ["status = CASE status WHEN 'new' THEN 'open' ELSE status END"]
    conn.execute(f"UPDATE tickets SET {', '.join(sets)} WHERE id = ?", (*args, ticket.id))
    insert_events(conn, [("message.created", ticket.id, {"timeline_id": entry.id, "ticket_id": ticket.id,
                                                          "contact_id": ticket.contact_id, "channel": entry.channel})], at)
    return entry


# ---------------------------------------------------------------- outbox


def _outbox_claim(conn: sqlite3.Connection, topic: str, limit: int, lease: str, now: datetime,
                  until: datetime) -> list[OutboxItem]:
    core = _core()
    rows = conn.execute(
        "UPDATE outbox SET status = 'sending', lease = ?, next_at = ?, attempts = attempts + 1 "
        "WHERE id IN (SELECT id FROM outbox WHERE topic = ? AND status IN ('pending', 'sending') AND next_at <= ? "
        "ORDER BY next_at, seq LIMIT ?) "
        "RETURNING id, topic, ticket_id, timeline_id, payload, attempts",
        (lease, core.ms(until), topic, core.ms(now), limit),
    ).fetchall()
    return [OutboxItem(id=r[0], topic=r[1], ticket_id=r[2], timeline_id=r[3], payload=_dec.decode(r[4]),
                       attempts=r[5], lease=lease, lease_until=until) for r in rows]


def _outbox_settle(conn: sqlite3.Connection, item: OutboxItem, d: Delivery) -> bool:
    core = _core()
    status = {"sent": "sent", "retrying": "pending", "failed": "failed"}[d.status]
    next_at = core.ms(d.next_at or d.at)
    n = conn.execute(
        "UPDATE outbox SET status = ?, next_at = ?, error = ?, external_id = ?, sent_at = ?, lease = NULL "
        "WHERE id = ? AND lease = ? AND status = 'sending'",
        (status, next_at, d.reason, d.external_id, core.ms(d.at) if d.status == "sent" else None, item.id, item.lease),
    ).rowcount
    if n == 0:  # our lease ran out and another dispatcher took the row over
        return False
    data = _set_delivery(conn, item.timeline_id, d) if item.timeline_id else None
    if d.status == "sent" and item.ticket_id and data is not None and \
            response_verdict(TimelineEntry("", "", "message_out", d.at, data=data)).counts:
        # delivered (or accepted by the channel): now it is the ticket's first response
        at = core.ms(d.at)
        conn.execute("UPDATE tickets SET first_response_at = coalesce(first_response_at, ?), updated_at = ?, "
                     "version = version + 1 WHERE id = ?", (at, at, item.ticket_id))
    if item.timeline_id and d.status != "retrying":
        # the send's outcome (sent or failed) for the webhooks, before any platform report it unlocks
        insert_events(conn, [("message.status", item.ticket_id, {
            "timeline_id": item.timeline_id, "ticket_id": item.ticket_id, "status": d.status, "source": "send",
            "reason": d.reason, "external_id": d.external_id})], core.ms(d.at))
    if d.status == "sent" and d.external_id and item.timeline_id:
        # a platform's report on this message that came before this settle (sqlite_delivery.py)
        from gateway.store.sqlite_delivery import apply_early_reports

        apply_early_reports(conn, d.external_id, item.timeline_id, item.ticket_id, core.ms(d.at))
    if d.thread_ref and item.ticket_id:
        # stored as inbound messages name it (no angle brackets), so the answer threads here
        conn.execute("INSERT OR IGNORE INTO thread_refs (ref, ticket_id) VALUES (?, ?)",
                     (d.thread_ref.strip().strip("<>"), item.ticket_id))
    return True


def _set_delivery(conn: sqlite3.Connection, timeline_id: str, d: Delivery) -> dict | None:
    r = conn.execute("SELECT data FROM timeline WHERE id = ?", (timeline_id,)).fetchone()
    if r is None:
        return None
    data = _dec.decode(r[0]) if r[0] else {}
    data["delivery"] = msgspec.to_builtins(msgspec.structs.replace(d, thread_ref=None))
    conn.execute("UPDATE timeline SET data = ? WHERE id = ?", (_enc.encode(data).decode(), timeline_id))
    return data


def _reply_facts(conn: sqlite3.Connection, ticket_id: str, channel: str) -> dict[str, Any]:
    """What a connector's ``can_send`` may judge a reply by (connectors/base.py
    SendChecker): the contact's last message on this channel, and how many
    replies were delivered since."""
    core = _core()
    r = conn.execute("SELECT contact_id FROM tickets WHERE id = ?", (ticket_id,)).fetchone()
    if r is None:
        return {"last_inbound_at": None, "sent_since_inbound": 0}
    last = conn.execute("SELECT max(at) FROM timeline WHERE contact_id = ? AND channel = ? AND kind = 'message_in'",
                        (r[0], channel)).fetchone()[0]
    sent = conn.execute(
        "SELECT count(*) FROM timeline WHERE contact_id = ? AND channel = ? AND kind = 'message_out' AND at >= ? "
        "AND json_extract(data, '$.delivery.status') = 'sent'", (r[0], channel, last or 0)).fetchone()[0]
    return {"last_inbound_at": core.dt(last), "sent_since_inbound": sent}


def _outbox_next_due(conn: sqlite3.Connection, topic: str) -> datetime | None:
    r = conn.execute("SELECT min(next_at) FROM outbox WHERE topic = ? AND status IN ('pending', 'sending')",
                     (topic,)).fetchone()
    return _core().dt(r[0]) if r and r[0] is not None else None
