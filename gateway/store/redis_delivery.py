"""Platform delivery reports (WhatsApp statuses, Messenger deliveries and
reads) on the Redis backend — the same rules as ``sqlite_delivery.py``.

- A settled send with the platform's message id records
  ``{external_id → timeline id, ticket, contact}`` (``Keys.delivery_sent``,
  written by ``outbox_settle``'s own script), the index SQLite keeps on
  ``outbox.external_id``.
- A report moves its reply's ``data.delivery`` forward (``sent`` →
  ``delivered`` → ``read``; ``failed`` wins; a late report never moves it
  back) and writes a ``message.status`` event, in one guarded program with
  the journal entry's status: the entry's JSON must still be what was read
  (two reports on one reply racing on two instances: the loser reads again).
- A report naming a message not known yet is kept a day in
  ``Keys.delivery_early`` (a hash per platform id: status → report, expiring
  with it) and applied by the settle that records the id.
- A Messenger "watermark" (no message id) moves every reply to the contact
  on that channel sent up to it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.store.base import Conflict
from gateway.store.sqlite_delivery import EARLY_KEEP_MS, RANK, advanced
from routing.state import Commit, CommitResult, DeliveryStatus

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
_report_dec = msgspec.json.Decoder(DeliveryStatus)

#: How many of a contact's latest timeline entries a watermark looks through
#: for replies on its channel (SQLite: the 50 latest replies on the channel).
WATERMARK_SCAN = 400
WATERMARK_REPLIES = 50


def _ms(d: Any) -> int:
    return int(d.timestamp() * 1000)


class RedisDeliveryOps:
    """Mixin of ``RedisStore``: delivery reports."""

    async def _commit_delivery(self, c: Commit) -> CommitResult:
        """A Commit whose ``delivery`` is set (and its report's message key):
        applied, the key taken, the journal entry settled, in one program;
        read again on a race. A taken key raises ``_Taken`` to ``commit``."""
        from gateway.store.redis_store import Tx

        for _ in range(20):
            now = _ms(self.clock())
            seq, sid, _status = await self._journal_head(c.journal_id)
            tx = Tx()
            assert c.message_key is not None  # the report's own id: a redelivered report is a replay
            tx.take(self.k.message_key(*c.message_key))
            ticket_id, contact_id = await self._apply_delivery(tx, c.delivery, now)
            tx.op("SET", self.k.message_key(*c.message_key),
                  _enc.encode({"j": c.journal_id, "t": None, "k": ticket_id, "c": contact_id}).decode())
            if c.final:
                self._settle(tx, c.journal_id, seq, sid, "processed",
                             {"processed_at": now, "ticket_id": ticket_id, "contact_id": contact_id},
                             drop=("error",))
            try:
                await self._run(tx)
            except Conflict:
                continue  # another report on the same reply landed first: read again
            return CommitResult("processed", contact_id, ticket_id, await self._number_of(ticket_id))
        raise Conflict(f"delivery report of journal entry {c.journal_id}: the reply kept changing")

    async def _apply_delivery(self, tx: Any, d: DeliveryStatus, now: int) -> tuple[str | None, str | None]:
        k = self.k
        if d.watermark is not None:
            return await self._apply_watermark(tx, d, now)
        if not d.external_id:
            return None, None
        sent = await self._call(self.r.hmget(k.delivery_sent(d.external_id), "timeline_id", "ticket_id",
                                             "contact_id"))
        if sent[0] is None:  # perhaps our reply, sent but not settled yet: applied when it is
            early = k.delivery_early(d.external_id)
            tx.op("HSET", early, d.status, _enc.encode(d).decode())
            tx.op("PEXPIRE", early, EARLY_KEEP_MS)
            return None, None
        timeline_id, ticket_id, contact_id = (v.decode() if v else None for v in sent)
        raw = await self._call(self.r.get(k.timeline_entry(timeline_id)))
        if raw is None:
            return None, None
        self._advance(tx, d, timeline_id, ticket_id, contact_id, raw, now)
        return ticket_id, contact_id

    async def _apply_watermark(self, tx: Any, d: DeliveryStatus, now: int) -> tuple[str | None, str | None]:
        """Every reply to the contact on the channel sent up to the watermark
        (a Messenger read or delivery names no message) that has not got that far."""
        if d.contact_id is None:
            return None, None
        k = self.k
        contact_id = await self._resolve_merged(d.contact_id)
        members = await self._call(self.r.zrevrangebyscore(
            k.contact_timeline(contact_id), _ms(d.watermark), "-inf", start=0, num=WATERMARK_SCAN))
        ids = [m.decode().split(":", 1)[1] for m in members]
        raws = await self._call(self.r.mget([k.timeline_entry(i) for i in ids])) if ids else []
        last_ticket, seen = None, 0
        for timeline_id, raw in zip(ids, raws):
            if raw is None:
                continue
            e = _dec.decode(raw)["e"]
            if e.get("kind") != "message_out" or e.get("channel") != d.channel:
                continue
            seen += 1
            if seen > WATERMARK_REPLIES:
                break
            current = ((e.get("data") or {}).get("delivery") or {}).get("status", "queued")
            if current in ("queued", "retrying", "failed") or RANK.get(current, 0) >= RANK.get(d.status, 0):
                continue  # not sent yet, failed, or already that far
            self._advance(tx, d, timeline_id, e.get("ticket_id"), contact_id, raw, now)
            last_ticket = last_ticket or e.get("ticket_id")
        return last_ticket, contact_id

    def _advance(self, tx: Any, d: DeliveryStatus, timeline_id: str, ticket_id: str | None,
                 contact_id: str | None, raw: bytes, now: int) -> None:
        """The reply's ``data.delivery`` one step on (guarded by the entry's
        JSON as read) and its ``message.status`` event."""
        key = self.k.timeline_entry(timeline_id)
        tx.value_is(key, raw.decode())
        rec = _dec.decode(raw)
        self._delivery_step(tx, rec, d, timeline_id, ticket_id, contact_id, now)
        tx.op("SET", key, _enc.encode(rec).decode())

    def _delivery_step(self, tx: Any, rec: dict, d: DeliveryStatus, timeline_id: str, ticket_id: str | None,
              contact_id: str | None, now: int) -> None:
        """Move the timeline record ``rec``'s ``data.delivery`` (in place) and write the event."""
        data = rec["e"].get("data") or {}
        rec["e"]["data"] = data
        delivery = data["delivery"] = advanced(data.get("delivery"), d)
        self._add_outbox(tx, "message.status", ticket_id, {
            "timeline_id": timeline_id, "ticket_id": ticket_id, "contact_id": contact_id, "source": "report",
            "channel": d.channel, "external_id": delivery.get("external_id"), "status": d.status,
            "delivery": delivery}, now)

    async def _delivery_sent(self, tx: Any, external_id: str, timeline_id: str, ticket_id: str | None,
                             rec: dict, now: int) -> None:
        """In ``outbox_settle``'s program, for a reply sent with the platform's
        id: record the id, and apply (onto ``rec``, the timeline record the
        settle is about to write) the reports on it that arrived first — a
        race between the send API's answer and the status webhook."""
        k = self.k
        contact_id = rec["e"].get("contact_id")
        tx.hset(k.delivery_sent(external_id), {"timeline_id": timeline_id, "ticket_id": ticket_id,
                                                "contact_id": contact_id})
        early = await self._call(self.r.hgetall(k.delivery_early(external_id)))
        if not early:
            return
        reports = sorted((_report_dec.decode(r) for r in early.values()), key=lambda r: RANK.get(r.status, 0))
        for d in reports:
            self._delivery_step(tx, rec, d, timeline_id, ticket_id, contact_id, now)
        tx.op("DEL", k.delivery_early(external_id))
