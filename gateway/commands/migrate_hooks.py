"""``omnigate migrate`` steps for outbound webhooks, the help-desk sync and the
console (the Redis layout of ``gateway/store/redis_webhooks.py``).

- ``events``: the outbox's events (every topic but ``reply.send``; their
  payloads already hold the snapshots SQLite took at commit) go to the events
  stream with the ids ``0-<outbox seq>`` — below any id a live instance
  draws, in the SQLite order; an endpoint's cursor (an outbox seq) becomes
  ``0-<seq>``. A re-run adds only what is above the stream's last ``0-`` id.
- ``webhooks``: endpoints, queued rows (a stopped daemon's ``sending`` rows
  are due again at once; each (endpoint, ticket) line's head in the due set),
  dead letters and the delivery log, with their SQLite seqs (the counter is
  raised to the highest).
- ``desks``: links both ways (``owned`` too) and the comments seen.
- ``console``: canned replies; sessions still live (expiring when they do).

Every write sets a key to what the SQLite row gives, so a re-run writes the
same state again.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from gateway.store.base import REPLY_TOPIC

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def _j(v: Any) -> str:
    return _enc.encode(v).decode()


def sid(seq: int) -> str:
    """A migrated event's stream id."""
    return f"0-{seq}"


async def events(c: Any) -> int:
    k, n = c.k, 0
    last = await c.r.xrevrange(k.events, "+", "-", count=1)
    done = 0
    if last:
        ms_part, _, seq_part = last[0][0].decode().partition("-")
        if ms_part != "0":
            return 0  # live events already: the migrated ones were added before them
        done = int(seq_part)
    for batch in c.rows("SELECT seq, id, topic, ticket_id, payload, created_at FROM outbox WHERE topic != ? "
                        "AND seq > ? ORDER BY seq", (REPLY_TOPIC, done)):
        pipe = c.r.pipeline(transaction=False)
        for seq, eid, topic, ticket_id, payload, created_at in batch:
            fields = {"id": eid, "topic": topic, "payload": payload, "at": created_at}
            if ticket_id:
                fields["ticket_id"] = ticket_id
            pipe.xadd(k.events, fields, id=sid(seq))
            pipe.set(k.event_id(eid), sid(seq))
        await pipe.execute()
        n += len(batch)
    return n


async def webhooks(c: Any) -> int:
    k, n, top = c.k, 0, 0
    now = int(time.time() * 1000)
    for batch in c.rows("SELECT name, url, secret, events, allow_private, enabled, source, description, cursor, "
                        "disabled_reason, failures, paused_until, created_at, updated_at FROM webhook_endpoints"):
        pipe = c.r.pipeline(transaction=False)
        for r in batch:
            fields = {"url": r[1], "secret": r[2], "events": r[3], "allow_private": int(r[4]), "enabled": int(r[5]),
                      "source": r[6], "description": r[7], "cursor": sid(r[8]), "disabled_reason": r[9],
                      "failures": r[10], "paused_until": r[11], "created_at": r[12], "updated_at": r[13]}
            pipe.delete(k.webhook_endpoint(r[0]))
            pipe.hset(k.webhook_endpoint(r[0]), mapping={f: v for f, v in fields.items() if v is not None})
            pipe.sadd(k.webhook_endpoints, r[0])
        await pipe.execute()
        n += len(batch)
    heads: set[tuple[str, str]] = set()
    for batch in c.rows("SELECT q.seq, q.endpoint, q.event_id, q.topic, q.order_key, q.status, q.attempts, "
                        "q.created_at, q.next_at, q.error, o.payload, o.created_at, o.ticket_id FROM webhook_queue q "
                        "LEFT JOIN outbox o ON o.seq = q.event_seq ORDER BY q.seq"):
        pipe = c.r.pipeline(transaction=False)
        for r in batch:
            seq, name, order_key = r[0], r[1], r[4]
            rid = f"m{seq}"
            next_at = min(r[8], now) if r[5] == "sending" else r[8]  # a stopped daemon's lease: due now
            fields = {"seq": seq, "endpoint": name, "event_id": r[2], "topic": r[3], "order_key": order_key,
                      "status": "pending", "attempts": r[6], "created_at": r[7], "next_at": next_at, "error": r[9],
                      "payload": r[10] or "{}", "event_at": r[11] if r[11] is not None else r[7],
                      "ticket_id": r[12] or "", "id": rid}
            pipe.delete(k.webhook_row(rid))
            pipe.hset(k.webhook_row(rid), mapping={f: v for f, v in fields.items() if v is not None})
            pipe.zadd(k.webhook_rows(name), {rid: seq})
            pipe.zadd(k.webhook_line(name, order_key), {rid: seq})
            if (name, order_key) not in heads:  # rows come in seq order: the first of a line is its head
                heads.add((name, order_key))
                pipe.zadd(k.webhook_due(name), {rid: next_at})
            top = max(top, seq)
        await pipe.execute()
        n += len(batch)
    for batch in c.rows("SELECT d.seq, d.endpoint, d.event_id, d.topic, d.order_key, d.attempts, d.created_at, "
                        "d.dead_at, d.error, o.payload, o.created_at, o.ticket_id FROM webhook_dead d "
                        "LEFT JOIN outbox o ON o.seq = d.event_seq ORDER BY d.seq"):
        pipe = c.r.pipeline(transaction=False)
        for r in batch:
            member = {"event_id": r[2], "type": r[3], "ticket_id": r[11], "attempts": r[5], "queued_at": r[6],
                      "error": r[8], "order_key": r[4], "payload": r[9] or "{}",
                      "event_at": r[10] if r[10] is not None else r[6], "seq": r[0], "dead_at": r[7]}
            pipe.zremrangebyscore(k.webhook_dead(r[1]), r[0], r[0])
            pipe.zadd(k.webhook_dead(r[1]), {_j(member): r[0]})
            top = max(top, r[0])
        await pipe.execute()
        n += len(batch)
    for batch in c.rows("SELECT seq, endpoint, event_id, topic, attempt, at, outcome, code, latency_ms, error "
                        "FROM webhook_log ORDER BY seq"):
        pipe = c.r.pipeline(transaction=False)
        for r in batch:
            line = {"event_id": r[2], "type": r[3], "attempt": r[4], "at": r[5], "outcome": r[6],
                    "status_code": r[7], "latency_ms": r[8], "error": r[9], "seq": r[0]}
            pipe.zremrangebyscore(k.webhook_log(r[1]), r[0], r[0])
            pipe.zadd(k.webhook_log(r[1]), {_j(line): r[0]})
            top = max(top, r[0])
        await pipe.execute()
        n += len(batch)
    await c.raise_to(k.webhook_seq, top)
    return n


async def desks(c: Any) -> int:
    k, n = c.k, 0
    for batch in c.rows("SELECT desk, ticket_id, desk_ticket_id, owned, created_at FROM desk_links"):
        pipe = c.r.pipeline(transaction=False)
        for desk, tid, did, owned, created_at in batch:
            pipe.hset(k.desk_links(desk), tid, did)
            pipe.hset(k.desk_remote(desk), did, tid)
            pipe.zadd(k.desk_order(desk), {tid: created_at})
            if owned:
                pipe.set(k.desk_owned(tid), desk)
        await pipe.execute()
        n += len(batch)
    for batch in c.rows("SELECT desk, comment_id, ticket_id, origin, at FROM desk_seen"):
        pipe = c.r.pipeline(transaction=False)
        for desk, cid, tid, origin, at in batch:
            pipe.hset(k.desk_seen(desk), cid, _j({"ticket_id": tid, "origin": origin, "at": at}))
        await pipe.execute()
        n += len(batch)
    return n


async def console(c: Any) -> int:
    k, n = c.k, 0
    for batch in c.rows("SELECT id, name, text, language, created_by, created_at, updated_at FROM canned_replies"):
        pipe = c.r.pipeline(transaction=False)
        for cid, name, text, language, by, created_at, updated_at in batch:
            pipe.hset(k.canned(cid), mapping={"id": cid, "name": name, "text": text, "language": language or "",
                                               "created_by": by, "created_at": created_at, "updated_at": updated_at})
            pipe.hset(k.canned_names, name, cid)
        await pipe.execute()
        n += len(batch)
    now = int(time.time() * 1000)
    for batch in c.rows("SELECT hash, agent_id, role, token_id, bootstrap, csrf, created_at, expires_at FROM "
                        "console_sessions WHERE ended_at IS NULL AND expires_at > ?", (now,)):
        pipe = c.r.pipeline(transaction=False)
        for h, agent, role, token_id, bootstrap, csrf, created_at, expires_at in batch:
            fields = {"agent_id": agent, "role": role, "token_id": token_id, "bootstrap": bootstrap, "csrf": csrf,
                      "created_at": created_at, "expires_at": expires_at}
            pipe.hset(k.console_session(h), mapping={f: v for f, v in fields.items() if v is not None})
            # relative to this clock (Redis's own may differ): the key outlives the session by a minute
            pipe.pexpire(k.console_session(h), expires_at - now + 60_000)
        await pipe.execute()
        n += len(batch)
    return n
