"""Outbound webhooks, the help-desk sync's store and the console's store on
the Redis backend (mixins of :class:`gateway.store.redis_store.RedisStore`).

The SQLite twins are ``sqlite_webhooks.py``, ``sqlite_desks.py`` and
``sqlite_console.py``; the behaviour is the same (one test suite runs on
both), the layout is Redis's (key names: the last section of
:class:`gateway.store.redis_keys.Keys`).

**Events.** Every outbox topic but ``reply.send`` is an *event*: the script
that commits the change (``APPLY``) ``XADD``s it to the events stream, with
snapshots of the ticket hash, the timeline entry and the contact taken by
the same script after the change's writes (``{"$": "H"|"G"|"S"}`` arguments),
so an event carries the ticket *as committed*, exactly like SQLite's
``insert_events`` in the commit transaction. The stream id is the event's
place; each endpoint's ``cursor`` is the stream id it was fanned out up to.

**Delivery, several instances.**

- *Fan-out* (``WH_QUEUE``): an instance reads the events after an endpoint's
  cursor and queues the matching ones in one script guarded by that cursor:
  two instances fanning out at once queue each event once (the loser's
  script sees the cursor moved and queues nothing).
- *Lines*: each (endpoint, ticket) is a sorted set of queue rows by seq;
  only its head is in the endpoint's *due* set (scored by ``next_at``), so a
  ticket's events go out in commit order.
- *Claims* (``WH_CLAIM``): a due head is leased (``status sending``, a lease
  id, its due score moved to the lease's end) in one script; a head already
  leased is not due, so two instances never send one row at once. An
  instance that dies holding leases: at the lease's end the heads are due
  again and any instance takes them (``webhook_release_leases`` is a no-op
  here: other instances' leases are live).
- *Settling* (``WH_SETTLE``): checks the lease is still the caller's, logs
  the attempt, and delivered / dead / retrying / gone in one script; the
  next row of the line becomes the head (and, with ``chain_lease_s``, is
  leased to the same caller at once).
- *Dead letters*, the *delivery log*: sorted sets per endpoint (JSON rows).
- *Retention* (``webhook_prune``): events older than ``outbox`` and behind
  every enabled endpoint's cursor leave the stream (queued and dead rows
  carry their own payload); log lines by age and count.

The half-open breaker's "one probe at a time" holds per instance (each
instance may probe once).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.store.redis_codec import dt as _dt, j as _j, ms as _ms, s as _s
from gateway.store.base import NotFound, StoreError
from gateway.store.sqlite_console import CannedReply, ConsoleSession, digest
from gateway.store.sqlite_tickets import TimelineRow
from gateway.store.sqlite_webhooks import Claimed, _DIRECTION, _matches
from routing.model import TimelineEntry, new_id

if TYPE_CHECKING:
    from gateway.store.redis_store import RedisStore, Tx

_dec = msgspec.json.Decoder()
_entry_dec = msgspec.json.Decoder(TimelineEntry)


def _iso_ms(v: Any) -> str | None:
    d = _dt(v)
    return d.isoformat() if d else None


def _iso_text(v: Any) -> str | None:
    """A msgspec-encoded datetime as SQLite's snapshots write it (``isoformat()``)."""
    if not v:
        return None
    return datetime.fromisoformat(str(v).replace("Z", "+00:00")).isoformat()


def _sid(v: str) -> tuple[int, int]:
    a, _, b = v.partition("-")
    return int(a), int(b or 0)


class RedisClaimed(Claimed, kw_only=True):
    """A claimed queue row; ``row`` names it on Redis."""

    row: str
    ticket_id: str | None = None


# ---------------------------------------------------------------- Lua

WH_QUEUE_LUA = """
-- KEYS: 1 endpoint, 2 its rows, 3 its due set, 4 seq counter, 5 its dead letters; then (line, row) per row
-- ARGV: 1 'fanout'|'replay', 2 expected cursor, 3 new cursor, 4 now; then per row: fields JSON, dead member|''
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] == 'fanout' then
  if redis.call('HGET', KEYS[1], 'cursor') ~= ARGV[2] then return -1 end
  redis.call('HSET', KEYS[1], 'cursor', ARGV[3])
end
local n, i, a = 0, 6, 5
while KEYS[i] do
  local line, row = KEYS[i], KEYS[i + 1]
  local f, dead = cjson.decode(ARGV[a]), ARGV[a + 1]
  if dead == '' or redis.call('ZREM', KEYS[5], dead) == 1 then
    local seq = redis.call('INCR', KEYS[4])
    redis.call('HSET', row, 'seq', seq, 'endpoint', f.endpoint, 'event_id', f.event_id, 'topic', f.topic,
               'order_key', f.order_key, 'status', 'pending', 'attempts', 0, 'created_at', ARGV[4],
               'next_at', ARGV[4], 'payload', f.payload, 'event_at', f.event_at, 'ticket_id', f.ticket_id,
               'id', f.id)
    redis.call('ZADD', KEYS[2], seq, f.id)
    redis.call('ZADD', line, seq, f.id)
    if redis.call('ZRANGE', line, 0, 0)[1] == f.id then redis.call('ZADD', KEYS[3], ARGV[4], f.id) end
    n = n + 1
  end
  i = i + 2
  a = a + 2
end
if ARGV[1] == 'replay' and n > 0 then
  redis.call('HSET', KEYS[1], 'failures', 0)
  redis.call('HDEL', KEYS[1], 'paused_until')
end
return n
"""

WH_CLAIM_LUA = """
-- KEYS: per candidate (its endpoint's due set, its row); ARGV: now, until, lease, then per candidate its id
local out = {}
for i = 1, #KEYS, 2 do
  local id = ARGV[3 + (i + 1) / 2]
  local due = redis.call('ZSCORE', KEYS[i], id)
  if due and tonumber(due) <= tonumber(ARGV[1]) and redis.call('EXISTS', KEYS[i + 1]) == 1 then
    redis.call('HSET', KEYS[i + 1], 'status', 'sending', 'lease', ARGV[3], 'next_at', ARGV[2])
    local attempts = redis.call('HINCRBY', KEYS[i + 1], 'attempts', 1)
    redis.call('ZADD', KEYS[i], ARGV[2], id)
    out[#out + 1] = id
    out[#out + 1] = attempts
  end
end
return out
"""

WH_SETTLE_LUA = """
-- KEYS: 1 row, 2 due set, 3 line, 4 rows, 5 endpoint, 6 log, 7 seq counter, 8 dead letters, 9 next row (chain)
-- ARGV: 1 id, 2 lease, 3 outcome, 4 now, 5 log JSON, 6 next_at, 7 pause_until|'', 8 error|'', 9 reason|'',
--       10 dead JSON, 11 chain: the next row's id|'', 12 chain lease's end
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[2] or redis.call('HGET', KEYS[1], 'status') ~= 'sending' then
  return {0}
end
local id, outcome, now = ARGV[1], ARGV[3], ARGV[4]
local entry = cjson.decode(ARGV[5])
entry['seq'] = redis.call('INCR', KEYS[7])
redis.call('ZADD', KEYS[6], entry['seq'], cjson.encode(entry))
local function pause()
  redis.call('HINCRBY', KEYS[5], 'failures', 1)
  if ARGV[7] == '' then redis.call('HDEL', KEYS[5], 'paused_until')
  else redis.call('HSET', KEYS[5], 'paused_until', ARGV[7]) end
end
local function leave()
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZREM', KEYS[4], id)
end
if outcome == 'delivered' or outcome == 'dead' then
  leave()
  if outcome == 'delivered' then
    if tonumber(redis.call('HGET', KEYS[5], 'failures') or '0') > 0 then
      redis.call('HSET', KEYS[5], 'failures', 0)
      redis.call('HDEL', KEYS[5], 'paused_until')
    end
  else
    local dead = cjson.decode(ARGV[10])
    dead['seq'] = redis.call('INCR', KEYS[7])
    dead['dead_at'] = tonumber(now)
    redis.call('ZADD', KEYS[8], dead['seq'], cjson.encode(dead))
    pause()
  end
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if head then
    if outcome == 'delivered' and ARGV[11] == head and redis.call('HGET', KEYS[5], 'enabled') == '1'
        and redis.call('HGET', KEYS[9], 'status') == 'pending'
        and tonumber(redis.call('HGET', KEYS[9], 'next_at')) <= tonumber(now) then
      redis.call('HSET', KEYS[9], 'status', 'sending', 'lease', ARGV[2], 'next_at', ARGV[12])
      local attempts = redis.call('HINCRBY', KEYS[9], 'attempts', 1)
      redis.call('ZADD', KEYS[2], ARGV[12], head)
      return {2, attempts}
    end
    redis.call('ZADD', KEYS[2], now, head)
  end
elseif outcome == 'gone' then
  redis.call('HSET', KEYS[1], 'status', 'pending', 'next_at', now, 'error', ARGV[8])
  redis.call('HDEL', KEYS[1], 'lease')
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('HSET', KEYS[5], 'enabled', 0, 'disabled_reason', ARGV[9], 'updated_at', now)
else
  redis.call('HSET', KEYS[1], 'status', 'pending', 'next_at', ARGV[6], 'error', ARGV[8])
  redis.call('HDEL', KEYS[1], 'lease')
  redis.call('ZADD', KEYS[2], ARGV[6], id)
  pause()
end
return {1}
"""

_EP_FIELDS = ("url", "secret", "events", "allow_private", "enabled", "source", "description", "cursor",
              "disabled_reason", "failures", "paused_until", "created_at", "updated_at")
_FIELDS = ("url", "secret", "events", "allow_private", "enabled", "description")
_ROW_FIELDS = ("seq", "endpoint", "event_id", "topic", "attempts", "created_at", "event_at", "payload",
               "order_key", "ticket_id")


def _pairs(raw: Any) -> dict:
    """A hash snapshot as the script encoded it: a flat JSON array (an empty one: ``{}``)."""
    v = _dec.decode(raw) if raw else []
    if isinstance(v, dict):
        return {}
    return {v[i]: v[i + 1] for i in range(0, len(v) - 1, 2)}


def _ticket_snap(tid: str, h: dict) -> dict | None:
    if not h or "number" not in h:
        return None
    return {"id": tid, "number": int(h["number"]), "contact_id": h.get("contact_id"), "subject": h.get("subject"),
            "status": h.get("status"), "priority": h.get("priority") or "normal", "team": h.get("team"),
            "assignee": h.get("assignee"), "tags": _dec.decode(h["tags"]) if h.get("tags") else [],
            "channels": _dec.decode(h["channels"]) if h.get("channels") else [],
            "version": int(h.get("version") or 1), "created_at": _iso_ms(h.get("created_at")),
            "updated_at": _iso_ms(h.get("updated_at")), "last_message_at": _iso_ms(h.get("last_message_at")),
            "first_response_at": _iso_ms(h.get("first_response_at")), "solved_at": _iso_ms(h.get("solved_at")),
            "closed_at": _iso_ms(h.get("closed_at")), "follow_up_of": h.get("follow_up_of")}


def _message_snap(raw: Any) -> dict | None:
    if not raw:
        return None
    e = _dec.decode(raw)["e"]
    data = e.get("data") or {}
    direction = _DIRECTION.get(e["kind"]) or (data.get("call") or {}).get("direction") or "inbound"
    attachments = [{k: a.get(k) for k in ("name", "content_type", "size", "sha256")} for a in e.get("attachments") or []]
    out = {"id": e["id"], "ticket_id": e.get("ticket_id"), "contact_id": e.get("contact_id"), "kind": e["kind"],
           "at": _iso_text(e.get("at")), "channel": e.get("channel"), "direction": direction,
           "external_id": e.get("external_id"), "subject": e.get("subject"), "text": e.get("text"),
           "attachments": attachments, "edited_at": _iso_text(e.get("edited_at"))}
    for key in ("author", "auto", "public", "delivery", "sent_at"):
        if key in data:
            out[key] = data[key]
    return out


def _contact_snap(cid: str, h: dict, idents_raw: Any) -> dict | None:
    if not h or "version" not in h:
        return None
    idents = sorted(tuple(_dec.decode(m)) for m in (_dec.decode(idents_raw) if idents_raw else []) if m)
    return {"id": cid, "name": h.get("name"), "tier": h.get("tier"),
            "tags": _dec.decode(h["tags"]) if h.get("tags") else [], "merged_into": h.get("merged_into"),
            "identities": [{"kind": k, "value": v} for k, v in idents],
            "created_at": _iso_ms(h.get("created_at")), "updated_at": _iso_ms(h.get("updated_at"))}


def event_data(f: dict) -> dict:
    """An event's ``data`` from its stream entry: its own fields and the snapshots taken when it was committed."""
    topic = f["topic"]
    data = _dec.decode(f["payload"])
    tid = f.get("ticket_id") or data.get("ticket_id")
    if tid and f.get("t"):
        snap = _ticket_snap(tid, _pairs(f["t"]))
        if snap is not None:
            data["ticket"] = snap
    if f.get("m"):
        msg = _message_snap(f["m"])
        if msg is not None:
            if topic.startswith("message.") and "message" not in data:
                data["message"] = msg
            elif topic == "note.mentioned":
                data["note"] = msg
    if topic.startswith("contact.") and f.get("c"):
        cid = data.get("winner") or data.get("contact")
        snap = _contact_snap(cid, _pairs(f["c"]), f.get("ci")) if isinstance(cid, str) else None
        if snap is not None:
            data["contact"] = snap
    return data


def _event_delivery(k: Any, name: str, f: dict[str, str], args: list[Any]) -> list[str]:
    """A delivery row to endpoint ``name`` of the outbox event ``f`` (its
    stream fields) for the queueing script: its two keys are returned, its
    two arguments appended to ``args`` (the row, and no dead letter)."""
    rid = new_id()
    order_key = f.get("ticket_id") or f"event:{f['id']}"
    args += [_j({"id": rid, "endpoint": name, "event_id": f["id"], "topic": f["topic"],
                 "order_key": order_key, "payload": _j(event_data(f)), "event_at": f["at"],
                 "ticket_id": f.get("ticket_id") or ""}), ""]
    return [k.webhook_line(name, order_key), k.webhook_row(rid)]


class RedisWebhookOps:
    """Mixed into RedisStore: events, endpoints, fan-out, claims, settling, dead letters, retention."""

    def _wh_scripts(self: "RedisStore") -> None:
        self._whq = self.r.register_script(WH_QUEUE_LUA)
        self._whc = self.r.register_script(WH_CLAIM_LUA)
        self._whs = self.r.register_script(WH_SETTLE_LUA)

    # ------------------------------------------------------------ events

    def _event_add(self: "RedisStore", tx: "Tx", topic: str, ticket_id: str | None, payload: dict, now: int) -> None:
        """Append an event to the guarded program ``tx``: the XADD runs in the same script as the
        change (after its writes), with the snapshots read at that point."""
        k = self.k
        eid = new_id()
        args: list[Any] = ["id", eid, "topic", topic, "payload", _j(payload), "at", now]
        tid = ticket_id or payload.get("ticket_id")
        if ticket_id:
            args += ["ticket_id", ticket_id]
        if isinstance(tid, str):
            args += ["t", {"$": "H", "k": tx.k(k.ticket(tid))}]
        tl = payload.get("timeline_id")
        if isinstance(tl, str) and (topic.startswith("message.") or topic == "note.mentioned"):
            args += ["m", {"$": "G", "k": tx.k(k.timeline_entry(tl))}]
        cid = payload.get("winner") or payload.get("contact")
        if topic.startswith("contact.") and isinstance(cid, str):
            args += ["c", {"$": "H", "k": tx.k(k.contact(cid))}, "ci", {"$": "S", "k": tx.k(k.contact_identities(cid))}]
        tx.op("XADD", k.events, "*", *args)
        tx.op("SET", k.event_id(eid), {"$": "L"})
        tx.op("HINCRBY", k.counts, "outbox", 1)

    async def webhook_event_insert(self: "RedisStore", topic: str, ticket_id: str | None, payload: dict,
                                   now: datetime | None = None) -> None:
        """Record an event outside a pipeline commit (the API's note mentions, PATCH)."""
        from gateway.store.redis_store import Tx

        tx = Tx()
        self._event_add(tx, topic, ticket_id, payload, _ms(now or self.clock()))
        await self._run(tx)

    async def webhook_outbox_end(self: "RedisStore") -> str:
        """The last event's stream id (``0-0``: none yet)."""
        last = await self._call(self.r.xrevrange(self.k.events, "+", "-", count=1))
        return _s(last[0][0]) if last else "0-0"

    # ------------------------------------------------------------ endpoints

    def _ep_row(self: "RedisStore", name: str, raw: list) -> dict | None:
        if raw[0] is None:
            return None
        h = dict(zip(_EP_FIELDS, (_s(v) for v in raw)))
        return {"name": name, "url": h["url"], "secret": h["secret"],
                "events": _dec.decode(h["events"]) if h["events"] else [],
                "allow_private": h["allow_private"] == "1", "enabled": h["enabled"] == "1", "source": h["source"],
                "description": h["description"], "cursor": h["cursor"], "disabled_reason": h["disabled_reason"],
                "failures": int(h["failures"] or 0), "paused_until": _iso_ms(h["paused_until"]),
                "created_at": _iso_ms(h["created_at"]), "updated_at": _iso_ms(h["updated_at"])}

    async def webhook_endpoints(self: "RedisStore") -> list[dict]:
        names = sorted(_s(n) for n in await self._call(self.r.smembers(self.k.webhook_endpoints)))
        if not names:
            return []
        pipe = self.r.pipeline(transaction=False)
        for n in names:
            pipe.hmget(self.k.webhook_endpoint(n), *_EP_FIELDS)
        rows = await self._call(pipe.execute())
        return [e for e in (self._ep_row(n, r) for n, r in zip(names, rows)) if e is not None]

    async def webhook_endpoint(self: "RedisStore", name: str) -> dict | None:
        return self._ep_row(name, await self._call(self.r.hmget(self.k.webhook_endpoint(name), *_EP_FIELDS)))

    async def webhook_upsert(self: "RedisStore", name: str, fields: dict, *, source: str, now: datetime,
                             create_only: bool = False) -> dict:
        """Create (cursor at the current end of the events) or update an endpoint."""
        from gateway.store.base import Conflict
        from gateway.store.redis_store import Tx

        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise StoreError(f"unknown endpoint fields: {', '.join(sorted(unknown))}")
        values = {k: (_j(v) if k == "events" else int(v) if isinstance(v, bool) else v) for k, v in fields.items()}
        key = self.k.webhook_endpoint(name)
        for _ in range(10):
            tx = Tx()
            exists = await self._call(self.r.exists(key))
            if not exists:
                if "url" not in values:
                    raise StoreError("an endpoint needs a url")
                tx.absent(key)
                row = {"enabled": 1, "allow_private": 0, "events": "[]", "failures": 0, **values, "source": source,
                       "cursor": await self.webhook_outbox_end(), "created_at": _ms(now), "updated_at": _ms(now)}
                tx.hset(key, row)
                tx.op("SADD", self.k.webhook_endpoints, name)
            elif create_only:
                raise StoreError(f"endpoint {name!r} exists")
            else:
                tx.hash_is(key, "source", _s(await self._call(self.r.hget(key, "source"))))
                tx.hset(key, {**values, "source": source, "updated_at": _ms(now)})
                for f, v in values.items():
                    if v is None:
                        tx.op("HDEL", key, f)
                if fields.get("enabled") is True:
                    tx.op("HSET", key, "failures", 0)
                    tx.op("HDEL", key, "disabled_reason", "paused_until")
            try:
                await self._run(tx)
                break
            except Conflict:  # created or changed by another instance meanwhile: again
                continue
        else:
            raise StoreError(f"endpoint {name!r} kept changing; try again")
        ep = await self.webhook_endpoint(name)
        assert ep is not None
        return ep

    async def webhook_delete(self: "RedisStore", name: str) -> bool:
        """The endpoint, its queue, dead letters and log (guarded by its cursor: a fan-out meanwhile: again)."""
        from gateway.store.base import Conflict
        from gateway.store.redis_store import Tx

        k = self.k
        key = k.webhook_endpoint(name)
        for _ in range(10):
            cursor = await self._call(self.r.hget(key, "cursor"))
            if cursor is None:
                return False
            rows = [_s(i) for i in await self._call(self.r.zrange(k.webhook_rows(name), 0, -1))]
            tx = Tx()
            tx.hash_is(key, "cursor", _s(cursor))
            lines = set()
            for rid in rows:
                ok = await self._call(self.r.hget(k.webhook_row(rid), "order_key"))
                if ok is not None:
                    lines.add(_s(ok))
                tx.op("DEL", k.webhook_row(rid))
            for ok in lines:
                tx.op("DEL", k.webhook_line(name, ok))
            for dk in (key, k.webhook_rows(name), k.webhook_due(name), k.webhook_dead(name), k.webhook_log(name)):
                tx.op("DEL", dk)
            tx.op("SREM", k.webhook_endpoints, name)
            try:
                await self._run(tx)
                return True
            except Conflict:
                continue
        raise StoreError(f"endpoint {name!r} kept changing; try again")

    async def webhook_set_enabled(self: "RedisStore", name: str, enabled: bool, reason: str | None,
                                  now: datetime) -> dict:
        from gateway.store.redis_store import Tx

        key = self.k.webhook_endpoint(name)
        cur = await self._call(self.r.hget(key, "enabled"))
        if cur is None:
            raise NotFound(f"webhook endpoint {name!r} not found")
        tx = Tx()
        tx.hash_is(key, "enabled", _s(cur))
        if enabled and _s(cur) != "1":
            # a re-enabled endpoint goes on from now: what happened while it was off is not sent
            # (events already queued before it was disabled are, in order)
            tx.hset(key, {"enabled": 1, "failures": 0, "cursor": await self.webhook_outbox_end(),
                          "updated_at": _ms(now)})
            tx.op("HDEL", key, "disabled_reason", "paused_until")
        elif not enabled:
            tx.hset(key, {"enabled": 0, "disabled_reason": reason, "updated_at": _ms(now)})
        await self._run(tx)
        ep = await self.webhook_endpoint(name)
        assert ep is not None
        return ep

    async def webhook_release_leases(self: "RedisStore", now: datetime) -> int:
        """Nothing on Redis: the other instances' leases are live; a dead
        instance's rows are due again when their leases run out."""
        return 0

    # ------------------------------------------------------------ fan-out, claims

    async def webhook_fanout(self: "RedisStore", now: datetime, limit: int = 2000) -> int:
        """Queue new events for each enabled endpoint (filter, targeted events); how many queued.
        Each endpoint's batch is one script guarded by its cursor (queued once across instances)."""
        k = self.k
        queued = 0
        for name in [_s(n) for n in await self._call(self.r.smembers(k.webhook_endpoints))]:
            enabled, events, cursor = [_s(v) for v in await self._call(
                self.r.hmget(k.webhook_endpoint(name), "enabled", "events", "cursor"))]
            if enabled != "1" or cursor is None:
                continue
            entries = await self._call(self.r.xrange(k.events, f"({cursor}", "+", count=limit))
            if not entries:
                continue
            patterns = _dec.decode(events) if events else []
            keys = [k.webhook_endpoint(name), k.webhook_rows(name), k.webhook_due(name), k.webhook_seq,
                    k.webhook_dead(name)]
            args: list[Any] = ["fanout", cursor, _s(entries[-1][0]), _ms(now)]
            for sid, raw in entries:
                f = {_s(a): _s(b) for a, b in raw.items()}
                payload = _dec.decode(f["payload"])
                target = payload.get("webhook")
                if target is not None:  # a rule's or an escalation's webhook: that endpoint only
                    if target != name:
                        continue
                elif not _matches(f["topic"], patterns):
                    continue
                keys += _event_delivery(k, name, f, args)
            n = await self._call(self._whq(keys=keys, args=args))
            if n > 0:
                queued += n
        return queued

    async def webhook_claim(self: "RedisStore", limit: int, lease_s: float, now: datetime,
                            breaker_threshold: int, busy: frozenset[str] = frozenset()) -> list[Claimed]:
        """Claim due heads; an endpoint whose breaker is half-open gets one probe,
        none while one of its deliveries is in flight here (``busy``)."""
        if limit <= 0:
            return []
        k = self.k
        now_ms = _ms(now)
        cands: list[tuple[float, str, str]] = []
        for ep in await self.webhook_endpoints():
            if not ep["enabled"] or (ep["paused_until"] and datetime.fromisoformat(ep["paused_until"]) > now):
                continue
            name = ep["name"]
            if ep["failures"] >= breaker_threshold:  # half-open: one probe at a time (per instance)
                if name in busy:
                    continue
                n = 1
            else:
                n = limit
            for rid, score in await self._call(self.r.zrangebyscore(k.webhook_due(name), "-inf", now_ms, start=0,
                                                                    num=n, withscores=True)):
                cands.append((score, _s(rid), name))
        cands.sort()
        cands = cands[:limit]
        if not cands:
            return []
        lease = new_id()
        until = now_ms + int(lease_s * 1000)
        keys: list[str] = []
        for _, rid, name in cands:
            keys += [k.webhook_due(name), k.webhook_row(rid)]
        got = await self._call(self._whc(keys=keys, args=[now_ms, until, lease, *(rid for _, rid, _ in cands)]))
        out = await self._claimed([(_s(got[i]), int(got[i + 1])) for i in range(0, len(got), 2)], lease)
        out.sort(key=lambda c: c.seq)
        return out

    async def _claimed(self: "RedisStore", rows: list[tuple[str, int]], lease: str) -> list[RedisClaimed]:
        """The claimed rows (id, attempts) read in one round trip."""
        if not rows:
            return []
        pipe = self.r.pipeline(transaction=False)
        for rid, _ in rows:
            pipe.hmget(self.k.webhook_row(rid), *_ROW_FIELDS)
        out = []
        for (rid, attempts), r in zip(rows, await self._call(pipe.execute())):
            if r[0] is None:
                continue
            f = dict(zip(_ROW_FIELDS, (_s(v) for v in r)))
            out.append(RedisClaimed(
                seq=int(f["seq"]), endpoint=f["endpoint"], event_id=f["event_id"], topic=f["topic"],
                attempts=attempts, created_at=int(f["created_at"]), event_at=int(f["event_at"]),
                payload=_dec.decode(f["payload"]), lease=lease, order_key=f["order_key"], row=rid,
                ticket_id=f["ticket_id"] or None))
        return out

    async def webhook_settle(self: "RedisStore", item: Claimed, outcome: str, *, now: datetime,
                             code: int | None = None, latency_ms: int | None = None, error: str | None = None,
                             next_at: datetime | None = None, pause_until: datetime | None = None,
                             disable_reason: str | None = None, chain_lease_s: float | None = None
                             ) -> "bool | Claimed":
        """Record one attempt. ``outcome``: ``delivered`` | ``retrying`` | ``dead`` | ``gone``.
        False when the lease was lost. With ``chain_lease_s``, a delivered event's
        ticket's next event, when due, is claimed in the same script and returned."""
        k = self.k
        rid = getattr(item, "row", None)
        if rid is None:
            raise StoreError("not a claim of the Redis backend")
        name, order_key = item.endpoint, item.order_key or ""
        now_ms = _ms(now)
        nxt = ""
        if outcome == "delivered" and chain_lease_s:
            line = await self._call(self.r.zrange(k.webhook_line(name, order_key), 0, 1))
            if len(line) == 2 and _s(line[0]) == rid:
                nxt = _s(line[1])
        ticket_id = getattr(item, "ticket_id", None)
        log_line = {"event_id": item.event_id, "type": item.topic, "attempt": item.attempts, "at": now_ms,
                    "outcome": outcome, "status_code": code, "latency_ms": latency_ms, "error": error}
        dead = {"event_id": item.event_id, "type": item.topic, "ticket_id": ticket_id, "attempts": item.attempts,
                "queued_at": item.created_at, "error": error, "order_key": order_key, "payload": _j(item.payload),
                "event_at": item.event_at}
        keys = [k.webhook_row(rid), k.webhook_due(name), k.webhook_line(name, order_key), k.webhook_rows(name),
                k.webhook_endpoint(name), k.webhook_log(name), k.webhook_seq, k.webhook_dead(name),
                k.webhook_row(nxt or rid)]
        until = now_ms + int((chain_lease_s or 0) * 1000)
        args = [rid, item.lease, outcome, now_ms, _j(log_line), _ms(next_at) if next_at else now_ms,
                _ms(pause_until) if pause_until else "", error or "", disable_reason or "", _j(dead), nxt, until]
        got = await self._call(self._whs(keys=keys, args=args))
        if int(got[0]) == 0:
            return False
        if int(got[0]) == 2:
            c = await self._claimed([(nxt, int(got[1]))], item.lease)
            return c[0] if c else True
        return True

    async def webhook_next_due(self: "RedisStore", now: datetime) -> datetime | None:
        best: int | None = None
        for ep in await self.webhook_endpoints():
            if not ep["enabled"]:
                continue
            first = await self._call(self.r.zrange(self.k.webhook_due(ep["name"]), 0, 0, withscores=True))
            if not first:
                continue
            at = int(first[0][1])
            if ep["paused_until"]:
                at = max(at, _ms(datetime.fromisoformat(ep["paused_until"])))
            best = at if best is None else min(best, at)
        return _dt(best) if best is not None else None

    # ------------------------------------------------------------ what the API and the CLI read

    async def webhook_deliveries(self: "RedisStore", name: str, limit: int = 100,
                                 before: int | None = None) -> list[dict]:
        top = f"({before}" if before else "+inf"
        rows = await self._call(self.r.zrevrangebyscore(self.k.webhook_log(name), top, "-inf", start=0, num=limit))
        out = []
        for raw in rows:
            d = _dec.decode(raw)
            out.append({"seq": d["seq"], "event_id": d["event_id"], "type": d["type"], "attempt": d["attempt"],
                        "at": _iso_ms(d["at"]), "outcome": d["outcome"], "status_code": d.get("status_code"),
                        "latency_ms": d.get("latency_ms"), "error": d.get("error")})
        return out

    async def webhook_dead(self: "RedisStore", name: str, limit: int = 100) -> list[dict]:
        rows = await self._call(self.r.zrevrange(self.k.webhook_dead(name), 0, max(0, limit - 1)))
        out = []
        for raw in rows:
            d = _dec.decode(raw)
            out.append({"event_id": d["event_id"], "type": d["type"], "ticket_id": d.get("ticket_id"),
                        "attempts": d["attempts"], "queued_at": _iso_ms(d["queued_at"]),
                        "dead_at": _iso_ms(d["dead_at"]), "error": d.get("error")})
        return out

    async def webhook_queue_stats(self: "RedisStore") -> dict[str, dict]:
        out: dict[str, dict] = {}
        for name in sorted(_s(n) for n in await self._call(self.r.smembers(self.k.webhook_endpoints))):
            q = await self._call(self.r.zcard(self.k.webhook_rows(name)))
            d = await self._call(self.r.zcard(self.k.webhook_dead(name)))
            if q:
                out.setdefault(name, {})["queued"] = q
            if d:
                out.setdefault(name, {})["dead"] = d
        return out

    async def webhook_replay(self: "RedisStore", name: str, *, since: datetime | None = None,
                             event_id: str | None = None, now: datetime) -> int:
        """Dead letters (all, since a time, or one event) back into the queue; an
        ``event_id`` that was delivered is sent again while the event is kept."""
        k = self.k
        if not await self._call(self.r.exists(k.webhook_endpoint(name))):
            raise NotFound(f"webhook endpoint {name!r} not found")
        keys = [k.webhook_endpoint(name), k.webhook_rows(name), k.webhook_due(name), k.webhook_seq,
                k.webhook_dead(name)]
        args: list[Any] = ["replay", "", "", _ms(now)]
        for raw in await self._call(self.r.zrange(k.webhook_dead(name), 0, -1)):
            d = _dec.decode(raw)
            if since is not None and d["queued_at"] < _ms(since):
                continue
            if event_id is not None and d["event_id"] != event_id:
                continue
            rid = new_id()
            keys += [k.webhook_line(name, d["order_key"]), k.webhook_row(rid)]
            args += [_j({"id": rid, "endpoint": name, "event_id": d["event_id"], "topic": d["type"],
                         "order_key": d["order_key"], "payload": d["payload"], "event_at": d["event_at"],
                         "ticket_id": d.get("ticket_id") or ""}), _s(raw)]
        if event_id is not None and len(keys) == 5:  # delivered before: send it again (same webhook-id)
            sid = _s(await self._call(self.r.get(k.event_id(event_id))))
            entries = await self._call(self.r.xrange(k.events, sid, sid)) if sid else []
            if not entries:
                raise NotFound(f"event {event_id} is neither a dead letter of {name!r} nor kept in the outbox")
            f = {_s(a): _s(b) for a, b in entries[0][1].items()}
            keys += _event_delivery(k, name, f, args)
        return max(0, int(await self._call(self._whq(keys=keys, args=args))))

    # ------------------------------------------------------------ retention

    async def webhook_prune(self: "RedisStore", now: datetime, *, outbox_s: float | None = None,
                            log_s: float | None = None, log_max: int = 0,
                            journal_raw_s: float | None = None) -> dict[str, int]:
        """Events older than ``outbox_s`` that every enabled endpoint has fanned out leave the
        stream (queued rows and dead letters carry their own payload); delivery log lines
        older than ``log_s`` and beyond ``log_max`` per endpoint go; ``journal_raw_s``
        walks the processed journal index (see ``_prune_journal_raw``)."""
        k = self.k
        now_ms = _ms(now)
        out = {"outbox": 0, "webhook_log": 0, "journal_raw": 0}
        eps = await self.webhook_endpoints()
        if outbox_s:
            cutoff = now_ms - int(outbox_s * 1000)
            cursors = [_sid(e["cursor"]) for e in eps if e["enabled"]]
            floor = min(cursors) if cursors else None
            start = "-"
            while True:
                batch = await self._call(self.r.xrange(k.events, start, "+", count=500))
                gone: list[tuple[str, str]] = []
                stop = False
                for sid_b, raw in batch:
                    sid = _s(sid_b)
                    at = int(raw.get(b"at", 0))
                    if at >= cutoff or (floor is not None and _sid(sid) > floor):
                        stop = True
                        break
                    gone.append((sid, _s(raw.get(b"id"))))
                if gone:
                    pipe = self.r.pipeline(transaction=False)
                    pipe.xdel(k.events, *(s for s, _ in gone))
                    pipe.delete(*(k.event_id(e) for _, e in gone if e))
                    await self._call(pipe.execute())
                    out["outbox"] += len(gone)
                if stop or len(batch) < 500:
                    break
                start = f"({_s(batch[-1][0])}"
        for ep in eps:
            key = k.webhook_log(ep["name"])
            if log_s:
                cutoff = now_ms - int(log_s * 1000)
                while True:
                    rows = await self._call(self.r.zrange(key, 0, 499, withscores=True))
                    old = [score for raw, score in rows if _dec.decode(raw)["at"] < cutoff]
                    if old:
                        out["webhook_log"] += int(await self._call(self.r.zremrangebyscore(key, "-inf", max(old))))
                    if len(old) < 500:
                        break
            keep = max(1, log_max)
            out["webhook_log"] += int(await self._call(self.r.zremrangebyrank(key, 0, -(keep + 1))))
        if journal_raw_s:
            out["journal_raw"] = await self._prune_journal_raw(now_ms - int(journal_raw_s * 1000), now_ms)
        return out

    async def _prune_journal_raw(self: "RedisStore", cutoff: int, now_ms: int) -> int:
        """Processed entries' raw payloads older than ``cutoff`` are emptied (the entry, its
        idempotency key and ``raw_pruned_at`` stay: a late redelivery is still recognised and
        ``journal_requeue`` refuses it). Walks the processed index in seq order from a checkpoint
        (the last seq pruned), stopping at the first entry processed after the cutoff: cost per
        run ~ the entries pruned. An entry processed long after its arrival (a requeue) behind
        the checkpoint keeps its payload."""
        k = self.k
        mark = k.state("webhooks:journal_raw_checkpoint")
        start = int(await self._call(self.r.get(mark)) or 0)
        n = 0
        while True:
            rows = await self._call(self.r.zrangebyscore(k.journal_status("processed"), f"({start}", "+inf",
                                                         start=0, num=200, withscores=True))
            if not rows:
                break
            pipe = self.r.pipeline(transaction=False)
            for jid, _ in rows:
                pipe.hmget(k.journal_entry(_s(jid)), "processed_at", "raw_pruned_at")
            heads = await self._call(pipe.execute())
            pipe = self.r.pipeline(transaction=False)
            stop = False
            for (jid, score), (processed_at, pruned_at) in zip(rows, heads):
                if processed_at is None or int(processed_at) >= cutoff:
                    stop = True
                    break
                if pruned_at is None:
                    pipe.hset(k.journal_entry(_s(jid)), mapping={"raw": b"", "raw_pruned_at": now_ms})
                    n += 1
                start = int(score)
            await self._call(pipe.execute())
            await self._call(self.r.set(mark, start))
            if stop or len(rows) < 200:
                break
        return n


# ---------------------------------------------------------------- help-desk sync


class RedisDeskOps:
    """Mixed into RedisStore: the omnigate ↔ desk ticket mapping and the comments seen."""

    async def desk_link(self: "RedisStore", desk: str, ticket_id: str) -> str | None:
        return _s(await self._call(self.r.hget(self.k.desk_links(desk), ticket_id)))

    async def desk_ticket_of(self: "RedisStore", desk: str, desk_ticket_id: str) -> str | None:
        return _s(await self._call(self.r.hget(self.k.desk_remote(desk), str(desk_ticket_id))))

    async def desk_link_set(self: "RedisStore", desk: str, ticket_id: str, desk_ticket_id: str, *,
                            owned: bool = False) -> None:
        """Link the tickets (both directions in one program; a link that exists either way is
        kept, as SQLite's INSERT OR IGNORE); ``owned``: the desk routes it from now on."""
        from gateway.store.base import Conflict
        from gateway.store.redis_store import Tx

        k = self.k
        tx = Tx()
        tx.hash_is(k.desk_links(desk), ticket_id, None)
        tx.hash_is(k.desk_remote(desk), str(desk_ticket_id), None)
        tx.op("HSET", k.desk_links(desk), ticket_id, str(desk_ticket_id))
        tx.op("HSET", k.desk_remote(desk), str(desk_ticket_id), ticket_id)
        tx.op("ZADD", k.desk_order(desk), _ms(self.clock()), ticket_id)
        if owned:
            tx.op("SET", k.desk_owned(ticket_id), desk)
        try:
            await self._run(tx)
        except Conflict:
            pass

    async def desk_links(self: "RedisStore", desk: str) -> list[tuple[str, str]]:
        ids = [_s(i) for i in await self._call(self.r.zrange(self.k.desk_order(desk), 0, -1))]
        if not ids:
            return []
        remote = await self._call(self.r.hmget(self.k.desk_links(desk), ids))
        return [(t, _s(d)) for t, d in zip(ids, remote) if d is not None]

    async def desk_owned_ticket(self: "RedisStore", ticket_id: str) -> bool:
        """Is the ticket routed by a desk (``ownership: desk``)? Asked by the assignment step (redis_assign.py)."""
        return bool(await self._call(self.r.exists(self.k.desk_owned(ticket_id))))

    async def desk_seen(self: "RedisStore", desk: str, comment_ids: list[str]) -> set[str]:
        if not comment_ids:
            return set()
        ids = [str(c) for c in comment_ids]
        got = await self._call(self.r.hmget(self.k.desk_seen(desk), ids))
        return {c for c, v in zip(ids, got) if v is not None}

    async def desk_seen_add(self: "RedisStore", desk: str, comment_id: str, ticket_id: str, origin: str) -> None:
        await self._call(self.r.hsetnx(self.k.desk_seen(desk), str(comment_id),
                                       _j({"ticket_id": ticket_id, "origin": origin, "at": _ms(self.clock())})))


# ---------------------------------------------------------------- console


_SESSION_FIELDS = ("agent_id", "role", "token_id", "bootstrap", "csrf", "expires_at", "ended_at")
_CANNED_FIELDS = ("id", "name", "text", "language", "created_by", "created_at", "updated_at")


def _canned(r: list) -> CannedReply | None:
    if r[0] is None:
        return None
    f = dict(zip(_CANNED_FIELDS, (_s(v) for v in r)))
    return CannedReply(id=f["id"], name=f["name"], text=f["text"], language=f["language"] or None,
                       created_by=f["created_by"], created_at=_dt(f["created_at"]), updated_at=_dt(f["updated_at"]))


class RedisConsoleOps:
    """Mixed into RedisStore: console sessions, canned replies, the live view's tail."""

    async def session_create(self: "RedisStore", agent_id: str, role: str, token_id: str | None,
                             bootstrap: str | None, now: datetime, expires_at: datetime) -> tuple[str, str]:
        """A new session: ``(cookie value, csrf token)``; the key expires after the session."""
        value, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        key = self.k.console_session(digest(value))
        fields = {"agent_id": agent_id, "role": role, "token_id": token_id, "bootstrap": bootstrap, "csrf": csrf,
                  "created_at": _ms(now), "expires_at": _ms(expires_at)}
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={f: v for f, v in fields.items() if v is not None})
        # the key outlives the session by its length as the caller's clock sees it (that clock may be
        # injected); session_get checks expires_at against the caller's now
        pipe.pexpire(key, max(1000, _ms(expires_at) - _ms(now) + 60_000))
        await self._call(pipe.execute())
        return value, csrf

    async def session_get(self: "RedisStore", value: str, now: datetime) -> ConsoleSession | None:
        """The live session of this cookie value, or None (unknown, ended, expired, or its token revoked/expired)."""
        r = await self._call(self.r.hmget(self.k.console_session(digest(value)), *_SESSION_FIELDS))
        if r[0] is None or r[6] is not None or int(r[5]) <= _ms(now):
            return None
        token_id = _s(r[2])
        if token_id is not None:
            tokens = {t.id: t for t in await self.token_list(include_revoked=True)}
            t = tokens.get(token_id)
            if t is None or not t.active(now):
                return None
        return ConsoleSession(agent_id=_s(r[0]), role=_s(r[1]), token_id=token_id, bootstrap=_s(r[3]),
                              csrf=_s(r[4]), expires_at=_dt(r[5]))

    async def session_end(self: "RedisStore", value: str, now: datetime) -> None:
        key = self.k.console_session(digest(value))
        if await self._call(self.r.exists(key)):
            await self._call(self.r.hsetnx(key, "ended_at", _ms(now)))

    async def canned_list(self: "RedisStore", q: str | None = None, limit: int = 50) -> list[CannedReply]:
        names = await self._call(self.r.hgetall(self.k.canned_names))
        pipe = self.r.pipeline(transaction=False)
        ids = [_s(i) for _, i in sorted(names.items())]
        for cid in ids:
            pipe.hmget(self.k.canned(cid), *_CANNED_FIELDS)
        out = [c for c in (_canned(r) for r in await self._call(pipe.execute())) if c is not None] if ids else []
        if q:
            needle = q.casefold()
            out = [c for c in out if needle in c.name.casefold() or needle in c.text.casefold()]
        return sorted(out, key=lambda c: c.name)[:limit]

    async def canned_get(self: "RedisStore", canned_id: str) -> CannedReply | None:
        return _canned(await self._call(self.r.hmget(self.k.canned(canned_id), *_CANNED_FIELDS)))

    async def canned_put(self: "RedisStore", name: str, text: str, language: str | None, actor: str, now: datetime,
                         canned_id: str | None = None, *, keep_existing: bool = False) -> CannedReply | None:
        """Create (``canned_id`` None) or replace one; a name already taken by another is a StoreError.
        ``keep_existing``: a seed — an existing name is left as it is (returns None). One guarded
        program: the name index and the reply change together."""
        from gateway.store.base import Conflict
        from gateway.store.redis_store import Tx

        k = self.k
        for _ in range(10):
            other = _s(await self._call(self.r.hget(k.canned_names, name)))
            if other is not None and other != canned_id:
                if keep_existing:
                    return None
                raise StoreError(f"a canned reply named {name!r} exists")
            tx = Tx()
            tx.hash_is(k.canned_names, name, other)
            if canned_id is None:
                cid = new_id()
                tx.hset(k.canned(cid), {"id": cid, "name": name, "text": text, "language": language or "",
                                        "created_by": actor, "created_at": _ms(now), "updated_at": _ms(now)})
            else:
                cid = canned_id
                old = _s(await self._call(self.r.hget(k.canned(cid), "name")))
                if old is None:
                    raise NotFound(f"no canned reply {cid}")
                tx.hash_is(k.canned(cid), "name", old)
                if old != name:
                    tx.op("HDEL", k.canned_names, old)
                tx.hset(k.canned(cid), {"name": name, "text": text, "language": language or "",
                                        "updated_at": _ms(now)})
            tx.op("HSET", k.canned_names, name, cid)
            await self._audit(tx, _ms(now), actor, "canned_reply.put", cid, None)
            try:
                await self._run(tx)
            except Conflict:
                continue
            return await self.canned_get(cid)
        raise StoreError("canned replies kept changing; try again")

    async def canned_delete(self: "RedisStore", canned_id: str, actor: str, now: datetime) -> None:
        from gateway.store.base import Conflict
        from gateway.store.redis_store import Tx

        k = self.k
        name = _s(await self._call(self.r.hget(k.canned(canned_id), "name")))
        if name is None:
            raise NotFound(f"no canned reply {canned_id}")
        tx = Tx()
        tx.hash_is(k.canned(canned_id), "name", name)
        tx.op("DEL", k.canned(canned_id))
        tx.op("HDEL", k.canned_names, name)
        await self._audit(tx, _ms(now), actor, "canned_reply.delete", canned_id, None)
        try:
            await self._run(tx)
        except Conflict:
            raise NotFound(f"no canned reply {canned_id}") from None

    async def sla_warned(self: "RedisStore", ticket_ids: list[str]) -> dict[str, set[str]]:
        """Per ticket, the SLA targets whose current warning has fired: a warning fired for the
        target (the ticket's SLA clock's ``fired`` keys, ``warning:<target>:<since>``) and no
        warning timer still pending for it (redis_assign.py's keys). Two reads per ticket, pipelined."""
        if not ticket_ids:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for tid in ticket_ids:
            pipe.get(self.k.sla_clock(tid))
            pipe.hvals(self.k.sla_timers(tid))
        rows = await self._call(pipe.execute())
        out: dict[str, set[str]] = {}
        for i, tid in enumerate(ticket_ids):
            clock_raw, timers = rows[2 * i], rows[2 * i + 1]
            fired = (_dec.decode(clock_raw).get("fired") or []) if clock_raw else []
            warned = {key.split(":", 2)[1] for key in fired if key.startswith("warning:")}
            pending = {t[1] for t in (_dec.decode(v) for v in timers) if t[0] == "warning"}
            if warned - pending:
                out[tid] = warned - pending
        return out

    async def timeline_tail(self: "RedisStore", after_seq: int, limit: int = 500) -> list[TimelineRow]:
        """Timeline entries with ``seq > after_seq`` in ``seq`` order, with their ticket's facts
        (the ``tlall`` index every commit script adds to)."""
        k = self.k
        rows = await self._call(self.r.zrangebyscore(k.timeline_all, f"({after_seq}", "+inf", start=0, num=limit,
                                                     withscores=True))
        if not rows:
            return []
        raws = await self._call(self.r.mget([k.timeline_entry(_s(m)) for m, _ in rows]))
        recs = [(_dec.decode(raw), int(score)) for (_, score), raw in zip(rows, raws) if raw is not None]
        tids = list(dict.fromkeys(rec["e"].get("ticket_id") for rec, _ in recs if rec["e"].get("ticket_id")))
        facts: dict[str, list] = {}
        if tids:
            pipe = self.r.pipeline(transaction=False)
            for tid in tids:
                pipe.hmget(k.ticket(tid), "number", "status", "team", "assignee")
            facts = dict(zip(tids, await self._call(pipe.execute())))
        out = []
        for rec, seq in recs:
            e = _entry_dec.decode(_j(rec["e"]))
            f = facts.get(e.ticket_id or "", [None] * 4)
            out.append(TimelineRow(entry=e, seq=seq, ticket_number=int(f[0]) if f[0] is not None else None,
                                   ticket_status=_s(f[1]), ticket_team=_s(f[2]), ticket_assignee=_s(f[3])))
        return out

    async def timeline_last_seq(self: "RedisStore") -> int:
        last = await self._call(self.r.zrevrange(self.k.timeline_all, 0, 0, withscores=True))
        return int(last[0][1]) if last else 0

