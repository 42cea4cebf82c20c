"""SQLite operations for outbound webhooks (gateway/webhooks/).

Events are the ``outbox`` rows of every topic but ``reply.send``, written in
the same transaction as the change they describe; :func:`insert_events`
(and :func:`event_payloads` for callers that insert themselves) puts a
snapshot of the ticket (and message, contact) *as committed* into the row's
payload, so a receiver never has to look anything up.

Delivery is per endpoint:

- ``webhook_endpoints``: one row per endpoint (from the configuration or the
  API) with its ``cursor``, the outbox ``seq`` it has been fanned out up to —
  a new endpoint starts at the current end of the outbox, never the backlog;
  ``enabled`` / ``disabled_reason`` (a 410 disables); ``failures`` and
  ``paused_until``, the circuit breaker.
- ``webhook_queue``: an event waiting for one endpoint (``pending``, or
  ``sending`` under a lease until ``next_at``). Only the oldest row of an
  ``(endpoint, order_key)`` — the order key is the ticket — may be claimed,
  so a ticket's events arrive in order; rows leave the queue when delivered
  (or go to ``webhook_dead`` after the retry horizon).
- ``webhook_dead``: dead letters, replayable.
- ``webhook_log``: one row per attempt (status, HTTP code, latency), bounded
  per endpoint and by age.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import msgspec

from gateway.store.base import REPLY_TOPIC, NotFound, StoreError
from routing.model import TimelineEntry, new_id

if TYPE_CHECKING:
    from gateway.store.sqlite import SQLiteStore

#: Schema migration 4 (webhook delivery). Applied once, in order.
MIGRATION = """
    CREATE TABLE webhook_endpoints (
        name            TEXT PRIMARY KEY,
        url             TEXT NOT NULL,
        secret          TEXT,
        events          TEXT NOT NULL DEFAULT '[]',
        allow_private   INTEGER NOT NULL DEFAULT 0,
        enabled         INTEGER NOT NULL DEFAULT 1,
        source          TEXT NOT NULL,
        description     TEXT,
        cursor          INTEGER NOT NULL,
        disabled_reason TEXT,
        failures        INTEGER NOT NULL DEFAULT 0,
        paused_until    INTEGER,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE webhook_queue (
        seq        INTEGER PRIMARY KEY,
        endpoint   TEXT NOT NULL,
        event_seq  INTEGER NOT NULL,
        event_id   TEXT NOT NULL,
        topic      TEXT NOT NULL,
        order_key  TEXT NOT NULL,
        status     TEXT NOT NULL DEFAULT 'pending',
        attempts   INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        next_at    INTEGER NOT NULL,
        lease      TEXT,
        error      TEXT
    );
    CREATE INDEX webhook_queue_order ON webhook_queue (endpoint, order_key, seq);
    CREATE INDEX webhook_queue_due ON webhook_queue (next_at);
    CREATE INDEX webhook_queue_event ON webhook_queue (event_seq);

    CREATE TABLE webhook_dead (
        seq        INTEGER PRIMARY KEY,
        endpoint   TEXT NOT NULL,
        event_seq  INTEGER NOT NULL,
        event_id   TEXT NOT NULL,
        topic      TEXT NOT NULL,
        order_key  TEXT NOT NULL,
        attempts   INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        dead_at    INTEGER NOT NULL,
        error      TEXT
    );
    CREATE INDEX webhook_dead_endpoint ON webhook_dead (endpoint, dead_at);
    CREATE INDEX webhook_dead_event ON webhook_dead (event_seq);

    CREATE TABLE webhook_log (
        seq        INTEGER PRIMARY KEY,
        endpoint   TEXT NOT NULL,
        event_id   TEXT NOT NULL,
        topic      TEXT NOT NULL,
        attempt    INTEGER NOT NULL,
        at         INTEGER NOT NULL,
        outcome    TEXT NOT NULL,
        code       INTEGER,
        latency_ms INTEGER,
        error      TEXT
    );
    CREATE INDEX webhook_log_endpoint ON webhook_log (endpoint, seq);

    ALTER TABLE journal ADD COLUMN raw_pruned_at INTEGER;
"""

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def _core() -> Any:
    from gateway.store import sqlite

    return sqlite


def _ms(d: datetime) -> int:
    # ``sqlite.ms`` (sqlite.py imports this module): :func:`written_message_snapshot`
    # relies on the two giving the same epoch ms for an entry's time
    return int(d.timestamp() * 1000)


#: epoch ms below which :func:`_iso`'s arithmetic is exact (2^32 s, year 2106): up to
#: there ``v / 1000`` as a float is within 0.25 µs of the true instant, so the
#: ``datetime`` it gives has exactly ``v % 1000`` milliseconds; beyond, float
#: rounding shows in the microseconds and the ``datetime`` path is kept as is
_ISO_FAST_END = 2**32 * 1000
#: milliseconds → the ISO tail ``isoformat`` writes (no fraction when it is zero)
_ISO_TAILS = ["+00:00"] + [f".{m:03d}000+00:00" for m in range(1, 1000)]
_EPOCH = datetime(1970, 1, 1)


@lru_cache(maxsize=4096)
def _iso_second(s: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a whole UTC second (a commit's times share a few)."""
    return (_EPOCH + timedelta(seconds=s)).isoformat()


def _iso(v: int | None) -> str | None:
    """Epoch ms → ``dt(v).isoformat()`` (``2026-12-01T03:00:01.129000+00:00``),
    11 times per message's events: the second's text is cached, the
    milliseconds' looked up (~5x cheaper than building an aware ``datetime``)."""
    if v is None:
        return None
    if 0 <= v < _ISO_FAST_END:
        s, m = divmod(v, 1000)
        return _iso_second(s) + _ISO_TAILS[m]
    return datetime.fromtimestamp(v / 1000, tz=timezone.utc).isoformat()


# ---------------------------------------------------------------- events as committed


class Claimed(msgspec.Struct, kw_only=True):
    """A queue row claimed for one delivery attempt, with its event."""

    seq: int
    endpoint: str
    event_id: str
    topic: str
    attempts: int
    created_at: int  # when the row was queued (the retry horizon counts from here)
    event_at: int  # when the event was committed
    payload: dict
    lease: str
    order_key: str | None = None


#: the ``tickets`` columns a ticket snapshot is made of (:func:`ticket_snapshot_of`), in its order
TICKET_SNAPSHOT_COLS = ("id, number, contact_id, subject, status, priority, team, assignee, tags, channels, "
                        "version, created_at, updated_at, last_message_at, first_response_at, solved_at, closed_at, "
                        "follow_up_of")


def ticket_snapshot(conn: sqlite3.Connection, ticket_id: str) -> dict | None:
    r = conn.execute(f"SELECT {TICKET_SNAPSHOT_COLS} FROM tickets WHERE id = ?", (ticket_id,)).fetchone()
    return None if r is None else ticket_snapshot_of(r)


def ticket_snapshot_of(r: Sequence[Any]) -> dict:
    """The snapshot of a ticket from its :data:`TICKET_SNAPSHOT_COLS` (a read, or
    the ``RETURNING`` of the write that left the row so: the same values)."""
    return {"id": r[0], "number": r[1], "contact_id": r[2], "subject": r[3], "status": r[4], "priority": r[5],
            "team": r[6], "assignee": r[7], "tags": _dec.decode(r[8]), "channels": _dec.decode(r[9]),
            "version": r[10], "created_at": _iso(r[11]), "updated_at": _iso(r[12]),
            "last_message_at": _iso(r[13]), "first_response_at": _iso(r[14]), "solved_at": _iso(r[15]),
            "closed_at": _iso(r[16]), "follow_up_of": r[17]}


_DIRECTION = {"message_in": "inbound", "message_out": "outbound", "note": "internal"}
#: what a message snapshot carries from the entry's ``data``, when there
_MESSAGE_DATA_KEYS = ("author", "auto", "public", "delivery", "sent_at")


def message_snapshot(conn: sqlite3.Connection, timeline_id: str) -> dict | None:
    r = conn.execute("SELECT id, ticket_id, contact_id, kind, at, channel, external_id, subject, text, "
                     "attachments, data, edited_at FROM timeline WHERE id = ?", (timeline_id,)).fetchone()
    if r is None:
        return None
    data = _dec.decode(r[10]) if r[10] else {}
    direction = _DIRECTION.get(r[3]) or (data.get("call") or {}).get("direction") or "inbound"
    attachments = [{k: a.get(k) for k in ("name", "content_type", "size", "sha256")}
                   for a in (_dec.decode(r[9]) if r[9] else [])]
    out = {"id": r[0], "ticket_id": r[1], "contact_id": r[2], "kind": r[3], "at": _iso(r[4]), "channel": r[5],
           "direction": direction, "external_id": r[6], "subject": r[7], "text": r[8], "attachments": attachments,
           "edited_at": _iso(r[11])}
    for key in _MESSAGE_DATA_KEYS:
        if key in data:
            out[key] = data[key]
    return out


def written_message_snapshot(e: TimelineEntry) -> dict | None:
    """:func:`message_snapshot` of an entry this transaction just inserted
    (``sqlite._timeline_row``), from the entry instead of reading the row back.

    The row holds the entry's fields as they are (``at`` as epoch ms,
    ``edited_at`` NULL: an insert never sets it); ``attachments`` and ``data``
    went in as their JSON, so the snapshot's values are the entry's own, which
    encode to the same JSON text as the ones decoded from the row would. An
    entry whose direction lives in its data (a call) returns None: read it."""
    data = e.data
    direction = _DIRECTION.get(e.kind)
    if direction is None:
        if data and "call" in data:
            return None
        direction = "inbound"
    out = {"id": e.id, "ticket_id": e.ticket_id, "contact_id": e.contact_id, "kind": e.kind,
           "at": _iso(_ms(e.at)), "channel": e.channel, "direction": direction, "external_id": e.external_id,
           "subject": e.subject, "text": e.text,
           "attachments": [{"name": a.name, "content_type": a.content_type, "size": a.size, "sha256": a.sha256}
                           for a in e.attachments],
           "edited_at": None}
    if data:
        for key in _MESSAGE_DATA_KEYS:
            if key in data:
                out[key] = data[key]
    return out


def contact_snapshot(conn: sqlite3.Connection, contact_id: str) -> dict | None:
    r = conn.execute("SELECT id, name, tier, tags, merged_into, created_at, updated_at FROM contacts WHERE id = ?",
                     (contact_id,)).fetchone()
    if r is None:
        return None
    idents = [{"kind": k, "value": v} for k, v in conn.execute(
        "SELECT kind, value FROM identities WHERE contact_id = ? ORDER BY kind, value", (contact_id,))]
    return {"id": r[0], "name": r[1], "tier": r[2], "tags": _dec.decode(r[3]), "merged_into": r[4],
            "identities": idents, "created_at": _iso(r[5]), "updated_at": _iso(r[6])}


def event_payloads(conn: sqlite3.Connection, events: Iterable[Any], now: int | None = None,
                   written: Sequence[TimelineEntry] = (), tickets: dict[str, dict] | None = None) -> list[dict]:
    """The ``data`` of each event as committed: its own fields plus
    ``ticket`` (a snapshot of the ticket), ``message`` for ``message.*``
    events (the timeline entry) and ``contact`` for ``contact.*`` events.
    ``events`` are ``OutboxEvent``-likes (``topic``, ``payload``,
    ``ticket_id``) or ``(topic, ticket_id, payload)`` tuples; call it inside
    the transaction, after the change. ``written``: timeline entries this
    transaction inserted and left alone since (their message snapshots are
    made from them, :func:`written_message_snapshot`, not read back).
    ``tickets``: snapshots of tickets as this transaction left them, made
    from the row its last write of each returned (:func:`ticket_snapshot_of`),
    not read back. Reply rows are returned untouched."""
    snapshots: dict[str, dict | None] = dict(tickets) if tickets else {}
    fresh = {e.id: e for e in written} if written else None
    out = []
    for ev in events:
        if isinstance(ev, tuple):
            topic, ticket_id, payload = ev
        else:
            topic, ticket_id, payload = ev.topic, ev.ticket_id, ev.payload
        if topic == REPLY_TOPIC:
            out.append(payload)
            continue
        data = dict(payload)
        tid = ticket_id or data.get("ticket_id")
        if tid:
            if tid not in snapshots:
                snapshots[tid] = ticket_snapshot(conn, tid)
            if snapshots[tid] is not None:
                data["ticket"] = snapshots[tid]
        if topic.startswith("message.") and data.get("timeline_id") and "message" not in data:
            entry = fresh.get(data["timeline_id"]) if fresh else None
            msg = written_message_snapshot(entry) if entry is not None else None
            if msg is None:
                msg = message_snapshot(conn, data["timeline_id"])
            if msg is not None:
                data["message"] = msg
        if topic == "note.mentioned" and data.get("timeline_id"):
            note = message_snapshot(conn, data["timeline_id"])
            if note is not None:
                data["note"] = note
        if topic.startswith("contact."):
            cid = data.get("winner") or data.get("contact")
            snap = contact_snapshot(conn, cid) if isinstance(cid, str) else None
            if snap is not None:
                data["contact"] = snap
        out.append(data)
    return out


#: an event row; its payload is bound as the JSON's UTF-8 bytes (``_enc.encode``) and stored as
#: TEXT of those very bytes (``CAST``: a BLOB is read as text in the database's encoding, UTF-8):
#: what binding the decoded ``str`` stores, without decoding the JSON to a ``str`` that the
#: driver encodes back to UTF-8 (an event carries the customer's text, often not ASCII)
OUTBOX_INSERT = ("INSERT INTO outbox (id, topic, ticket_id, payload, created_at, next_at) "
                 "VALUES (?,?,?,CAST(? AS TEXT),?,?)")


def insert_events(conn: sqlite3.Connection, events: Sequence[tuple[str, str | None, dict]], now: int) -> None:
    """Write events ``(topic, ticket_id, payload)`` with their committed snapshots."""
    payloads = event_payloads(conn, events, now)
    conn.executemany(OUTBOX_INSERT, [(new_id(), ev[0], ev[1], _enc.encode(p), now, now)
                                     for ev, p in zip(events, payloads)])


# ---------------------------------------------------------------- the store's operations


class WebhookOps:
    """Mixed into SQLiteStore: endpoints, fan-out, claims, settling, dead letters, retention."""

    async def webhook_endpoints(self: "SQLiteStore") -> list[dict]:
        return await self._read(_endpoints)

    async def webhook_endpoint(self: "SQLiteStore", name: str) -> dict | None:
        rows = await self._read(_endpoints, name)
        return rows[0] if rows else None

    async def webhook_upsert(self: "SQLiteStore", name: str, fields: dict, *, source: str, now: datetime,
                             create_only: bool = False) -> dict:
        """Create (cursor at the current end of the outbox) or update an endpoint."""
        return await self._write(_upsert, name, fields, source, _ms(now), create_only)

    async def webhook_delete(self: "SQLiteStore", name: str) -> bool:
        return await self._write(_delete, name)

    async def webhook_set_enabled(self: "SQLiteStore", name: str, enabled: bool, reason: str | None,
                                  now: datetime) -> dict:
        return await self._write(_set_enabled, name, enabled, reason, _ms(now))

    async def webhook_release_leases(self: "SQLiteStore", now: datetime) -> int:
        """At start (one process holds the data folder): rows a killed process
        was sending are due again now, not when its lease would have run out."""
        return await self._write(lambda conn: conn.execute(
            "UPDATE webhook_queue SET status = 'pending', lease = NULL, next_at = ? WHERE status = 'sending'",
            (_ms(now),)).rowcount)

    async def webhook_outbox_end(self: "SQLiteStore") -> int:
        return await self._read(_outbox_end)

    async def webhook_fanout(self: "SQLiteStore", now: datetime, limit: int = 2000) -> int:
        """Queue new events for each enabled endpoint (filter, targeted events); how many queued."""
        return await self._write(_fanout, _ms(now), limit)

    async def webhook_claim(self: "SQLiteStore", limit: int, lease_s: float, now: datetime,
                            breaker_threshold: int, busy: frozenset[str] = frozenset()) -> list[Claimed]:
        """Claim due heads; an endpoint whose breaker is half-open gets one probe,
        none while one of its deliveries is in flight (``busy``)."""
        return await self._write(_claim, limit, new_id(), _ms(now), int(lease_s * 1000), breaker_threshold, busy)

    async def webhook_settle(self: "SQLiteStore", item: Claimed, outcome: str, *, now: datetime,
                             code: int | None = None, latency_ms: int | None = None, error: str | None = None,
                             next_at: datetime | None = None, pause_until: datetime | None = None,
                             disable_reason: str | None = None, chain_lease_s: float | None = None
                             ) -> "bool | Claimed":
        """Record one attempt. ``outcome``: ``delivered`` | ``retrying`` | ``dead`` | ``gone``.
        False when the lease was lost. With ``chain_lease_s``, a delivered event's
        ticket's next event, when due, is claimed in the same transaction and
        returned (one commit less per event of a busy ticket)."""
        return await self._write(_settle, item, outcome, _ms(now), code, latency_ms, error,
                                 _ms(next_at) if next_at else None, _ms(pause_until) if pause_until else None,
                                 disable_reason, int(chain_lease_s * 1000) if chain_lease_s else None)

    async def webhook_next_due(self: "SQLiteStore", now: datetime) -> datetime | None:
        return await self._read(_next_due, _ms(now))

    async def webhook_deliveries(self: "SQLiteStore", name: str, limit: int = 100,
                                 before: int | None = None) -> list[dict]:
        return await self._read(_deliveries, name, limit, before)

    async def webhook_dead(self: "SQLiteStore", name: str, limit: int = 100) -> list[dict]:
        return await self._read(_dead, name, limit)

    async def webhook_queue_stats(self: "SQLiteStore") -> dict[str, dict]:
        return await self._read(_queue_stats)

    async def webhook_replay(self: "SQLiteStore", name: str, *, since: datetime | None = None,
                             event_id: str | None = None, now: datetime) -> int:
        """Dead letters (all, since a time, or one event) back into the queue;
        an ``event_id`` that was delivered is sent again while its outbox row is kept."""
        return await self._write(_replay, name, _ms(since) if since else None, event_id, _ms(now))

    async def webhook_prune(self: "SQLiteStore", now: datetime, *, outbox_s: float | None,
                            log_s: float | None, log_max: int, journal_raw_s: float | None) -> dict[str, int]:
        return await self._write(_prune, _ms(now), outbox_s, log_s, log_max, journal_raw_s)

    async def webhook_event_insert(self: "SQLiteStore", topic: str, ticket_id: str | None, payload: dict,
                                   now: datetime | None = None) -> None:
        """Record an event outside a pipeline commit (the API's note mentions, PATCH)."""
        await self._write(lambda conn: insert_events(conn, [(topic, ticket_id, payload)], _ms(now or self.clock())))


_EP_COLS = ("name, url, secret, events, allow_private, enabled, source, description, cursor, disabled_reason, "
            "failures, paused_until, created_at, updated_at")


def _endpoint_row(r: tuple) -> dict:
    return {"name": r[0], "url": r[1], "secret": r[2], "events": _dec.decode(r[3]), "allow_private": bool(r[4]),
            "enabled": bool(r[5]), "source": r[6], "description": r[7], "cursor": r[8], "disabled_reason": r[9],
            "failures": r[10], "paused_until": _iso(r[11]), "created_at": _iso(r[12]), "updated_at": _iso(r[13])}


def _endpoints(conn: sqlite3.Connection, name: str | None = None) -> list[dict]:
    if name is None:
        rows = conn.execute(f"SELECT {_EP_COLS} FROM webhook_endpoints ORDER BY name").fetchall()
    else:
        rows = conn.execute(f"SELECT {_EP_COLS} FROM webhook_endpoints WHERE name = ?", (name,)).fetchall()
    return [_endpoint_row(r) for r in rows]


def _outbox_end(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0]


_FIELDS = ("url", "secret", "events", "allow_private", "enabled", "description")


def _upsert(conn: sqlite3.Connection, name: str, fields: dict, source: str, now: int, create_only: bool) -> dict:
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise StoreError(f"unknown endpoint fields: {', '.join(sorted(unknown))}")
    values = {k: (_enc.encode(v).decode() if k == "events" else int(v) if isinstance(v, bool) else v)
              for k, v in fields.items()}
    exists = conn.execute("SELECT source FROM webhook_endpoints WHERE name = ?", (name,)).fetchone()
    if exists is None:
        if "url" not in values:
            raise StoreError("an endpoint needs a url")
        cols = ["name", "source", "cursor", "created_at", "updated_at", *values]
        conn.execute(f"INSERT INTO webhook_endpoints ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                     (name, source, _outbox_end(conn), now, now, *values.values()))
    elif create_only:
        raise StoreError(f"endpoint {name!r} exists")
    else:
        if values:
            sets = ", ".join(f"{k} = ?" for k in values)
            conn.execute(f"UPDATE webhook_endpoints SET {sets}, source = ?, updated_at = ? WHERE name = ?",
                         (*values.values(), source, now, name))
        if fields.get("enabled") is True:
            conn.execute("UPDATE webhook_endpoints SET disabled_reason = NULL, failures = 0, paused_until = NULL "
                         "WHERE name = ?", (name,))
    return _endpoints(conn, name)[0]


def _delete(conn: sqlite3.Connection, name: str) -> bool:
    n = conn.execute("DELETE FROM webhook_endpoints WHERE name = ?", (name,)).rowcount
    for table in ("webhook_queue", "webhook_dead", "webhook_log"):
        conn.execute(f"DELETE FROM {table} WHERE endpoint = ?", (name,))
    return n > 0


def _set_enabled(conn: sqlite3.Connection, name: str, enabled: bool, reason: str | None, now: int) -> dict:
    r = conn.execute("SELECT enabled FROM webhook_endpoints WHERE name = ?", (name,)).fetchone()
    if r is None:
        raise NotFound(f"webhook endpoint {name!r} not found")
    if enabled and not r[0]:
        # a re-enabled endpoint goes on from now: what happened while it was off is not sent
        # (events already queued before it was disabled are, in order)
        conn.execute("UPDATE webhook_endpoints SET enabled = 1, disabled_reason = NULL, failures = 0, "
                     "paused_until = NULL, cursor = ?, updated_at = ? WHERE name = ?", (_outbox_end(conn), now, name))
    elif not enabled:
        conn.execute("UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ? WHERE name = ?",
                     (reason, now, name))
    return _endpoints(conn, name)[0]


def _matches(topic: str, patterns: list[str]) -> bool:
    """An event filter: exact types or prefixes (``ticket.`` or ``ticket.*``); empty = all."""
    if not patterns:
        return True
    for p in patterns:
        p = p[:-1] if p.endswith("*") else p
        if topic == p or (p.endswith(".") and topic.startswith(p)):
            return True
    return False


def _fanout(conn: sqlite3.Connection, now: int, limit: int) -> int:
    queued = 0
    endpoints = conn.execute("SELECT name, events, cursor FROM webhook_endpoints WHERE enabled = 1").fetchall()
    for name, events, cursor in endpoints:
        patterns = _dec.decode(events)
        rows = conn.execute(
            "SELECT seq, id, topic, ticket_id, json_extract(payload, '$.webhook') FROM outbox "
            "WHERE seq > ? AND topic != ? ORDER BY seq LIMIT ?", (cursor, REPLY_TOPIC, limit)).fetchall()
        if not rows:
            continue
        batch = []
        for seq, eid, topic, ticket_id, target in rows:
            if target is not None:  # a rule's or an escalation's webhook: that endpoint only
                if target != name:
                    continue
            elif not _matches(topic, patterns):
                continue
            batch.append((name, seq, eid, topic, ticket_id or f"event:{eid}", now, now))
        conn.executemany("INSERT INTO webhook_queue (endpoint, event_seq, event_id, topic, order_key, created_at, "
                         "next_at) VALUES (?,?,?,?,?,?,?)", batch)
        conn.execute("UPDATE webhook_endpoints SET cursor = ? WHERE name = ?", (rows[-1][0], name))
        queued += len(batch)
    return queued


def _claim(conn: sqlite3.Connection, limit: int, lease: str, now: int, lease_ms: int,
           threshold: int, busy: frozenset[str] = frozenset()) -> list[Claimed]:
    if limit <= 0:
        return []
    # the head of each (endpoint, ticket) line, due, on an endpoint that is enabled and not paused
    rows = conn.execute(
        "SELECT q.seq, q.endpoint, e.failures FROM webhook_queue q JOIN webhook_endpoints e ON e.name = q.endpoint "
        "WHERE q.next_at <= ? AND e.enabled = 1 AND (e.paused_until IS NULL OR e.paused_until <= ?) "
        "AND q.seq = (SELECT min(seq) FROM webhook_queue h WHERE h.endpoint = q.endpoint "
        "AND h.order_key = q.order_key) ORDER BY q.next_at, q.seq LIMIT ?", (now, now, limit * 4)).fetchall()
    chosen: list[int] = []
    probing: set[str] = set()
    for seq, endpoint, failures in rows:
        if failures >= threshold:  # the breaker is half-open: one probe at a time
            if endpoint in probing or endpoint in busy:
                continue
            probing.add(endpoint)
        chosen.append(seq)
        if len(chosen) >= limit:
            break
    if not chosen:
        return []
    marks = ",".join("?" * len(chosen))
    got = conn.execute(
        f"UPDATE webhook_queue SET status = 'sending', lease = ?, next_at = ?, attempts = attempts + 1 "
        f"WHERE seq IN ({marks}) RETURNING seq, endpoint, event_id, topic, attempts, created_at, event_seq, "
        f"order_key", (lease, now + lease_ms, *chosen)).fetchall()
    out = [_claimed(conn, row, lease) for row in got]
    out.sort(key=lambda c: c.seq)
    return out


def _settle(conn: sqlite3.Connection, item: Claimed, outcome: str, now: int, code: int | None,
            latency_ms: int | None, error: str | None, next_at: int | None, pause_until: int | None,
            disable_reason: str | None, chain_lease_ms: int | None = None) -> "bool | Claimed":
    r = conn.execute("SELECT 1 FROM webhook_queue WHERE seq = ? AND lease = ? AND status = 'sending'",
                     (item.seq, item.lease)).fetchone()
    if r is None:  # the lease ran out and another round took the row over
        return False
    conn.execute("INSERT INTO webhook_log (endpoint, event_id, topic, attempt, at, outcome, code, latency_ms, error) "
                 "VALUES (?,?,?,?,?,?,?,?,?)",
                 (item.endpoint, item.event_id, item.topic, item.attempts, now, outcome, code, latency_ms, error))
    if outcome == "delivered":
        conn.execute("DELETE FROM webhook_queue WHERE seq = ?", (item.seq,))
        conn.execute("UPDATE webhook_endpoints SET failures = 0, paused_until = NULL WHERE name = ? AND failures > 0",
                     (item.endpoint,))
        if chain_lease_ms:
            nxt = _claim_next(conn, item, now, chain_lease_ms)
            if nxt is not None:
                return nxt
    elif outcome == "dead":
        conn.execute(
            "INSERT INTO webhook_dead (endpoint, event_seq, event_id, topic, order_key, attempts, created_at, dead_at, "
            "error) SELECT endpoint, event_seq, event_id, topic, order_key, attempts, created_at, ?, ? "
            "FROM webhook_queue WHERE seq = ?", (now, error, item.seq))
        conn.execute("DELETE FROM webhook_queue WHERE seq = ?", (item.seq,))
        conn.execute("UPDATE webhook_endpoints SET failures = failures + 1, paused_until = ? WHERE name = ?",
                     (pause_until, item.endpoint))
    elif outcome == "gone":  # the receiver said 410: the endpoint is disabled, the row waits
        conn.execute("UPDATE webhook_queue SET status = 'pending', lease = NULL, next_at = ?, error = ?, "
                     "attempts = attempts - 1 WHERE seq = ?", (now, error, item.seq))
        conn.execute("UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ? WHERE name = ?",
                     (disable_reason, now, item.endpoint))
    else:  # retrying
        conn.execute("UPDATE webhook_queue SET status = 'pending', lease = NULL, next_at = ?, error = ? WHERE seq = ?",
                     (next_at or now, error, item.seq))
        conn.execute("UPDATE webhook_endpoints SET failures = failures + 1, paused_until = ? WHERE name = ?",
                     (pause_until, item.endpoint))
    return True


def _claim_next(conn: sqlite3.Connection, item: Claimed, now: int, lease_ms: int) -> Claimed | None:
    """The next event of the delivered one's ticket on the same endpoint, claimed if due."""
    key = item.order_key
    if key is None:
        return None
    r = conn.execute(
        "SELECT q.seq FROM webhook_queue q JOIN webhook_endpoints e ON e.name = q.endpoint "
        "WHERE q.endpoint = ? AND q.order_key = ? AND e.enabled = 1 ORDER BY q.seq LIMIT 1",
        (item.endpoint, key)).fetchone()
    if r is None:
        return None
    got = conn.execute(
        "UPDATE webhook_queue SET status = 'sending', lease = ?, next_at = ?, attempts = attempts + 1 "
        "WHERE seq = ? AND status = 'pending' AND next_at <= ? "
        "RETURNING seq, endpoint, event_id, topic, attempts, created_at, event_seq, order_key",
        (item.lease, now + lease_ms, r[0], now)).fetchone()
    return _claimed(conn, got, item.lease) if got else None


def _claimed(conn: sqlite3.Connection, row: tuple, lease: str) -> Claimed:
    seq, endpoint, event_id, topic, attempts, created_at, event_seq, order_key = row
    ev = conn.execute("SELECT payload, created_at FROM outbox WHERE seq = ?", (event_seq,)).fetchone()
    payload, event_at = (_dec.decode(ev[0]), ev[1]) if ev else ({}, created_at)
    return Claimed(seq=seq, endpoint=endpoint, event_id=event_id, topic=topic, attempts=attempts,
                   created_at=created_at, event_at=event_at, payload=payload, lease=lease, order_key=order_key)


def _next_due(conn: sqlite3.Connection, now: int) -> datetime | None:
    r = conn.execute(
        "SELECT min(max(q.next_at, coalesce(e.paused_until, 0))) FROM webhook_queue q "
        "JOIN webhook_endpoints e ON e.name = q.endpoint WHERE e.enabled = 1 "
        "AND q.seq = (SELECT min(seq) FROM webhook_queue h WHERE h.endpoint = q.endpoint "
        "AND h.order_key = q.order_key)").fetchone()
    return _core().dt(r[0]) if r and r[0] is not None else None


def _deliveries(conn: sqlite3.Connection, name: str, limit: int, before: int | None) -> list[dict]:
    rows = conn.execute(
        "SELECT seq, event_id, topic, attempt, at, outcome, code, latency_ms, error FROM webhook_log "
        "WHERE endpoint = ? AND seq < ? ORDER BY seq DESC LIMIT ?", (name, before or 2**62, limit)).fetchall()
    return [{"seq": r[0], "event_id": r[1], "type": r[2], "attempt": r[3], "at": _iso(r[4]), "outcome": r[5],
             "status_code": r[6], "latency_ms": r[7], "error": r[8]} for r in rows]


def _dead(conn: sqlite3.Connection, name: str, limit: int) -> list[dict]:
    rows = conn.execute(
        "SELECT d.event_id, d.topic, d.order_key, d.attempts, d.created_at, d.dead_at, d.error, o.ticket_id "
        "FROM webhook_dead d LEFT JOIN outbox o ON o.seq = d.event_seq WHERE d.endpoint = ? "
        "ORDER BY d.seq DESC LIMIT ?", (name, limit)).fetchall()
    return [{"event_id": r[0], "type": r[1], "ticket_id": r[7], "attempts": r[3], "queued_at": _iso(r[4]),
             "dead_at": _iso(r[5]), "error": r[6]} for r in rows]


def _queue_stats(conn: sqlite3.Connection) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for name, n in conn.execute("SELECT endpoint, count(*) FROM webhook_queue GROUP BY endpoint"):
        out.setdefault(name, {})["queued"] = n
    for name, n in conn.execute("SELECT endpoint, count(*) FROM webhook_dead GROUP BY endpoint"):
        out.setdefault(name, {})["dead"] = n
    return out


def _replay(conn: sqlite3.Connection, name: str, since: int | None, event_id: str | None, now: int) -> int:
    if conn.execute("SELECT 1 FROM webhook_endpoints WHERE name = ?", (name,)).fetchone() is None:
        raise NotFound(f"webhook endpoint {name!r} not found")
    where, args = ["endpoint = ?"], [name]
    if since is not None:
        where.append("created_at >= ?")
        args.append(since)
    if event_id is not None:
        where.append("event_id = ?")
        args.append(event_id)
    cond = " AND ".join(where)
    n = conn.execute(
        "INSERT INTO webhook_queue (endpoint, event_seq, event_id, topic, order_key, created_at, next_at) "
        f"SELECT endpoint, event_seq, event_id, topic, order_key, ?, ? FROM webhook_dead WHERE {cond} ORDER BY seq",
        (now, now, *args)).rowcount
    conn.execute(f"DELETE FROM webhook_dead WHERE {cond}", args)
    if event_id is not None and n == 0:  # delivered before: send it again (same webhook-id)
        r = conn.execute("SELECT seq, id, topic, ticket_id FROM outbox WHERE id = ? AND topic != ?",
                         (event_id, REPLY_TOPIC)).fetchone()
        if r is None:
            raise NotFound(f"event {event_id} is neither a dead letter of {name!r} nor kept in the outbox")
        conn.execute("INSERT INTO webhook_queue (endpoint, event_seq, event_id, topic, order_key, created_at, "
                     "next_at) VALUES (?,?,?,?,?,?,?)", (name, r[0], r[1], r[2], r[3] or f"event:{r[1]}", now, now))
        n = 1
    if n:
        conn.execute("UPDATE webhook_endpoints SET failures = 0, paused_until = NULL WHERE name = ?", (name,))
    return n


def _prune(conn: sqlite3.Connection, now: int, outbox_s: float | None, log_s: float | None, log_max: int,
           journal_raw_s: float | None) -> dict[str, int]:
    out = {"outbox": 0, "webhook_log": 0, "journal_raw": 0}
    if outbox_s:
        cutoff = now - int(outbox_s * 1000)
        floor = conn.execute("SELECT min(cursor) FROM webhook_endpoints WHERE enabled = 1").fetchone()[0]
        floor = _outbox_end(conn) if floor is None else floor
        out["outbox"] += conn.execute(
            "DELETE FROM outbox WHERE topic != ? AND created_at < ? AND seq <= ? "
            "AND seq NOT IN (SELECT event_seq FROM webhook_queue) AND seq NOT IN (SELECT event_seq FROM webhook_dead)",
            (REPLY_TOPIC, cutoff, floor)).rowcount
        out["outbox"] += conn.execute("DELETE FROM outbox WHERE topic = ? AND status = 'sent' AND created_at < ?",
                                      (REPLY_TOPIC, cutoff)).rowcount
    if log_s:
        out["webhook_log"] += conn.execute("DELETE FROM webhook_log WHERE at < ?",
                                           (now - int(log_s * 1000),)).rowcount
    for (name,) in conn.execute("SELECT DISTINCT endpoint FROM webhook_log").fetchall():
        r = conn.execute("SELECT seq FROM webhook_log WHERE endpoint = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
                         (name, max(0, log_max - 1))).fetchone()
        if r is not None:
            out["webhook_log"] += conn.execute("DELETE FROM webhook_log WHERE endpoint = ? AND seq < ?",
                                               (name, r[0])).rowcount
    if journal_raw_s:
        # the row (and its idempotency key) stays: a late redelivery is still recognised
        out["journal_raw"] = conn.execute(
            "UPDATE journal SET raw = X'', raw_pruned_at = ? WHERE status = 'processed' AND processed_at < ? "
            "AND raw_pruned_at IS NULL", (now, now - int(journal_raw_s * 1000))).rowcount
    return out
