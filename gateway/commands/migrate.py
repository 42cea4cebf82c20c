"""``omnigate migrate --from sqlite:DIR --to redis://…``: move a single-node
installation to the Redis backend, losing nothing.

Run it with the daemon stopped: it takes the data folder's lock
(gateway/datalock.py) for its whole run, so it refuses while a daemon holds
the folder and no daemon can start on it meanwhile. The SQLite store is read
through a read-only connection in one read transaction (a consistent
snapshot); Redis is written under ``--prefix`` with the Redis backend's own
key layout (gateway/store/redis_keys.py, the helpers of RedisStore).

**One step per entity**, in :data:`STEPS` (``journal``, ``nonces``,
``contacts``, ``identities``, ``tickets``, ``timeline``, ``message_keys``,
``thread_refs``, ``participants``, the assignment steps of
:mod:`gateway.commands.migrate_assign` (``agents``, ``assignments``,
``queue``, ``sla_clocks``, ``sla_timers``, ``sla_events``, ``stats``,
``changed``), ``outbox``, ``delivery_early``, ``state``, ``audit``, ``tokens``, ``mentions``,
``auto_replies``, ``indexes``, ``attachments``; ``events``, ``webhooks``,
``desks``, ``console`` in gateway/commands/migrate_hooks.py). Each step
names the SQLite tables it takes. Before writing
anything every other table of the SQLite file is counted: rows in a table
no step takes (a table a newer version added before its Redis support
landed) stop the
migration, naming the table — unless ``--skip TABLE`` leaves it behind on
purpose (printed). Tables in :data:`DERIVED` need no step.

**Idempotent, re-runnable.** A run that finished is recorded in the marker
hash ``<prefix>migrated``; running again then changes nothing (the
daemons may have written since: nothing of theirs is overwritten). A run
that stopped half-way (Redis went away, the machine died) is simply run
again: every write sets a key to the value the SQLite row gives
(``SET``/``HSET``/``ZADD``/``SADD``), so it writes the same state again; the two writes that are not idempotent are guarded: a
pending journal entry is added to the journal stream only when it has no
stream id yet, audit records only above the last one moved (kept in the
marker). Sequence counters (journal, timeline, ticket numbers) are raised to
the SQLite values, never lowered; the row counts are set from SQLite at the
end. The marker also records the source folder; a prefix
that holds a deployment's data without that marker (or a marker of another
folder) is refused.

What stays behind: files of the data folder other than the store, its
attachments and the webchat's state (``webchat.db``, ``webchat.key``,
``webchat-files/``: the ``webchat`` step, connectors/webchat/redis_transcript.py).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgspec

from gateway.commands import migrate_assign, migrate_hooks
from gateway.store.base import JOURNAL_STATUSES

#: SQLite tables that need no step: derived from others, or SQLite's own.
DERIVED: dict[str, str] = {
    "counters": "the ticket counter moves with the tickets step",
    "agent_teams": "the Redis backend derives each team's members from agents.teams",
    "sqlite_sequence": "SQLite's own",
    "sqlite_stat1": "SQLite's own",
}
BATCH = 500


class MigrateError(Exception):
    """The migration cannot run (or go on); the message says why."""


@dataclass
class Ctx:
    db: sqlite3.Connection
    store: Any  # RedisStore
    data_dir: Path
    attachments: Any  # SharedAttachments
    marker: dict[str, str] = field(default_factory=dict)
    moved: dict[str, int] = field(default_factory=dict)

    @property
    def k(self) -> Any:
        return self.store.k

    @property
    def r(self) -> Any:
        return self.store.r

    def rows(self, sql: str, args: tuple = ()) -> Any:
        cur = self.db.execute(sql, args)
        while True:
            batch = cur.fetchmany(BATCH)
            if not batch:
                return
            yield batch

    async def run_tx(self, txs: list[Any]) -> None:
        """Execute guarded-program builders' writes (no guards) in one pipeline."""
        from gateway.store.redis_store import LAST, NUMBER

        pipe = self.r.pipeline(transaction=False)
        for tx in txs:
            for cmd, ki, *args in tx.ops:
                assert not any(a in (NUMBER, LAST) for a in args)
                key = tx.keys[ki - 1]
                if cmd == "HINCRBY" and key == self.k.counts:
                    continue  # row counts are set once at the end
                pipe.execute_command(cmd, key, *args)
        await pipe.execute()

    async def raise_to(self, key: str, value: int) -> None:
        """A sequence counter raised to ``value`` (never lowered)."""
        cur = await self.r.get(key)
        if cur is None or int(cur) < value:
            await self.r.set(key, value)


@dataclass(frozen=True)
class Step:
    """One entity: the SQLite tables it takes and the coroutine moving them (returns rows moved)."""

    name: str
    tables: tuple[str, ...]
    run: Callable[[Ctx], Awaitable[int]]


# ------------------------------------------------------------------ steps


async def _journal(c: Ctx) -> int:
    k, n, top = c.k, 0, 0
    for batch in c.rows("SELECT seq, id, channel, account, key, received_at, status, attempts, error, meta, raw, "
                        "ticket_id, contact_id, processed_at FROM journal ORDER BY seq"):
        sids = await _pipe(c, [("HGET", k.journal_entry(r[1]), "sid") for r in batch])
        pipe = c.r.pipeline(transaction=False)
        for r in batch:
            seq, jid, status, raw = r[0], r[1], r[6], r[10] if r[10] is not None else b""
            fields = {"seq": seq, "channel": r[2], "account": r[3], "key": r[4], "received_at": r[5],
                      "status": status, "attempts": r[7], "error": r[8], "meta": r[9], "raw": raw,
                      "ticket_id": r[11], "contact_id": r[12], "processed_at": r[13], "size": len(raw)}
            pipe.hset(k.journal_entry(jid), mapping={f: v for f, v in fields.items() if v is not None})
            pipe.set(k.journal_key(r[2], r[3], r[4]), jid)
            pipe.zadd(k.journal_all, {jid: seq})
            for s in JOURNAL_STATUSES:
                if s != status:
                    pipe.zrem(k.journal_status(s), jid)
            pipe.zadd(k.journal_status(status), {jid: seq})
            top = max(top, seq)
        await pipe.execute()
        # pending entries join the journal stream once (the workers' group reads it from id 0)
        fresh = [r[1] for r, sid in zip(batch, sids) if r[6] == "pending" and sid is None]
        if fresh:
            stream_ids = await _pipe(c, [("XADD", k.stream, "*", "j", jid) for jid in fresh])
            await _pipe(c, [("HSET", k.journal_entry(jid), "sid", sid) for jid, sid in zip(fresh, stream_ids)])
        n += len(batch)
    await c.raise_to(k.journal_seq, top)
    return n


async def _nonces(c: Ctx) -> int:
    now, n = int(time.time() * 1000), 0
    for batch in c.rows("SELECT scope, value, expires, digest, journal_id FROM nonces WHERE expires > ?", (now,)):
        pipe = c.r.pipeline(transaction=False)
        for scope, value, expires, digest, jid in batch:
            key = c.k.nonce(scope, value)
            hexd = digest.hex() if isinstance(digest, bytes) else str(digest)
            pipe.hset(key, mapping={"digest": hexd, "journal_id": jid})
            pipe.pexpireat(key, expires)
        await pipe.execute()
        n += len(batch)
    return n


async def _contacts(c: Ctx) -> int:
    from gateway.store.redis_store import Tx

    n = 0
    for batch in c.rows("SELECT id, name, tier, tags, attributes, flags, merged_into, version, created_at, "
                        "updated_at FROM contacts"):
        txs = []
        for r in batch:
            tx = Tx()
            tx.op("DEL", c.k.contact(r[0]))  # a re-run leaves no field of an earlier run's
            tx.hset(c.k.contact(r[0]), dict(zip(("name", "tier", "tags", "attributes", "flags", "merged_into",
                                                 "version", "created_at", "updated_at"), r[1:])))
            if r[6]:
                tx.op("SADD", c.k.contact_merged(r[6]), r[0])
            txs.append(tx)
        await c.run_tx(txs)
        n += len(batch)
    return n


async def _identities(c: Ctx) -> int:
    from gateway.store.redis_store import Tx, _j

    n = 0
    for batch in c.rows("SELECT kind, value, contact_id, origin_contact_id, reason, created_at FROM identities"):
        tx = Tx()
        for kind, value, cid, origin, reason, created in batch:
            tx.op("DEL", c.k.identity(kind, value))
            tx.hset(c.k.identity(kind, value), {"contact": cid, "origin": origin, "reason": reason,
                                                "created_at": created})
            tx.op("SADD", c.k.contact_identities(cid), _j([kind, value]))
        await c.run_tx([tx])
        n += len(batch)
    return n


_TICKET_COLS = ("id", "number", "contact_id", "origin_contact_id", "subject", "status", "priority", "team", "skills",
                "assignee", "tags", "channels", "reply_to", "follow_up_of", "sla", "version", "created_at",
                "updated_at", "last_message_at", "first_response_at", "solved_at", "closed_at")


async def _tickets(c: Ctx) -> int:
    from gateway.store.redis_store import Tx

    n, top = 0, 0
    for batch in c.rows(f"SELECT {', '.join(_TICKET_COLS)} FROM tickets"):
        tx = Tx()
        for r in batch:
            f = dict(zip(_TICKET_COLS, r))
            tid = f.pop("id")
            tx.op("DEL", c.k.ticket(tid))
            tx.hset(c.k.ticket(tid), f)
            tx.op("HSET", c.k.ticket_numbers, f["number"], tid)
            tx.op("ZADD", c.k.contact_tickets(f["contact_id"]), f["last_message_at"], tid)
            top = max(top, f["number"])
        await c.run_tx([tx])
        n += len(batch)
    counter = c.db.execute("SELECT value FROM counters WHERE name = 'ticket'").fetchone()
    await c.raise_to(c.k.ticket_counter, max(top, counter[0] if counter else 0))
    return n


async def _timeline(c: Ctx) -> int:
    from gateway.store.redis_store import RedisStore, Tx, _j, dt
    from gateway.store.sqlite import _att_dec, _dec
    from routing.model import TimelineEntry

    n, top = 0, 0
    for batch in c.rows("SELECT id, contact_id, kind, at, ticket_id, channel, journal_id, external_id, subject, "
                        "text, attachments, data, linked_to, edited_at, seq, origin_contact_id, text_hash "
                        "FROM timeline ORDER BY seq"):
        tx = Tx()
        for r in batch:
            e = TimelineEntry(id=r[0], contact_id=r[1], kind=r[2], at=dt(r[3]), ticket_id=r[4], channel=r[5],
                              journal_id=r[6], external_id=r[7], subject=r[8], text=r[9],
                              attachments=_att_dec.decode(r[10]) if r[10] else [],
                              data=_dec.decode(r[11]) if r[11] else {}, linked_to=r[12], edited_at=dt(r[13]))
            RedisStore._add_entry(c.store, tx, e, r[14], r[15], journal_id=r[6])
            if r[16] and e.kind == "message_in" and not e.data.get("text_hash"):
                tx.op("ZADD", c.k.contact_text(e.contact_id, r[16]), r[3],
                      _j({"j": r[6], "e": e.id, "t": e.ticket_id, "c": e.contact_id}))
            top = max(top, r[14])
        await c.run_tx([tx])
        n += len(batch)
    await c.raise_to(c.k.timeline_seq, top)
    return n


async def _message_keys(c: Ctx) -> int:
    from gateway.store.redis_store import _j

    n = 0
    for batch in c.rows("SELECT channel, account, external_id, journal_id, timeline_id, ticket_id, contact_id "
                        "FROM message_keys"):
        pipe = c.r.pipeline(transaction=False)
        for ch, acc, ext, jid, eid, tid, cid in batch:
            pipe.set(c.k.message_key(ch, acc, ext), _j({"j": jid, "t": eid, "k": tid, "c": cid}))
        await pipe.execute()
        n += len(batch)
    return n


async def _thread_refs(c: Ctx) -> int:
    n = 0
    for batch in c.rows("SELECT ref, ticket_id FROM thread_refs"):
        pipe = c.r.pipeline(transaction=False)
        for ref, tid in batch:
            pipe.set(c.k.thread_ref(ref), tid)
        await pipe.execute()
        n += len(batch)
    return n


async def _participants(c: Ctx) -> int:
    from gateway.store.redis_store import _j

    n = 0
    for batch in c.rows("SELECT ticket_id, kind, value, source, added_at FROM ticket_participants"):
        pipe = c.r.pipeline(transaction=False)
        for tid, kind, value, source, added in batch:
            pipe.hset(c.k.ticket_participants(tid), _j([kind, value]), _j({"source": source, "added_at": added}))
        await pipe.execute()
        n += len(batch)
    return n


async def _outbox(c: Ctx) -> int:
    n = 0
    # replies only: the other topics are events, moved to the events stream (migrate_hooks.events)
    for batch in c.rows("SELECT id, topic, ticket_id, payload, created_at, status, attempts, next_at, error, "
                        "timeline_id, external_id, sent_at, (SELECT contact_id FROM timeline WHERE id = timeline_id) "
                        "FROM outbox WHERE topic = 'reply.send'"):
        pipe = c.r.pipeline(transaction=False)
        for r in batch:
            oid, topic, status = r[0], r[1], r[5]
            if status == "sending":  # a lease of the stopped daemon: due again
                status = "pending"
            fields = {"topic": topic, "ticket_id": r[2], "payload": r[3], "created_at": r[4], "status": status,
                      "attempts": r[6], "next_at": r[7], "error": r[8], "timeline_id": r[9], "external_id": r[10],
                      "sent_at": r[11]}
            pipe.delete(c.k.outbox_item(oid))
            pipe.hset(c.k.outbox_item(oid), mapping={f: v for f, v in fields.items() if v is not None})
            if status == "pending":
                pipe.zadd(c.k.outbox_due(topic), {oid: r[7]})
            else:
                pipe.zrem(c.k.outbox_due(topic), oid)
            if status == "sent" and r[10] and r[9]:  # delivery reports find the reply by the platform's id
                pipe.hset(c.k.delivery_sent(r[10]), mapping={f: v for f, v in (
                    ("timeline_id", r[9]), ("ticket_id", r[2]), ("contact_id", r[12])) if v is not None})
        await pipe.execute()
        n += len(batch)
    return n


async def _delivery_early(c: Ctx) -> int:
    """Reports on replies not settled yet (redis_delivery.py): kept for what remains of their day."""
    from gateway.store.sqlite_delivery import EARLY_KEEP_MS

    n = 0
    now = int(time.time() * 1000)
    for batch in c.rows("SELECT external_id, status, report, created_at FROM delivery_early"):
        pipe = c.r.pipeline(transaction=False)
        for external_id, status, report, created_at in batch:
            left = created_at + EARLY_KEEP_MS - now
            if left > 0:
                pipe.hset(c.k.delivery_early(external_id), status, report)
                pipe.pexpire(c.k.delivery_early(external_id), left)
        await pipe.execute()
        n += len(batch)
    return n


async def _state(c: Ctx) -> int:
    n = 0
    for batch in c.rows("SELECT key, value FROM state"):
        pipe = c.r.pipeline(transaction=False)
        for key, value in batch:
            pipe.set(c.k.state(key), value)
        await pipe.execute()
        n += len(batch)
    return n


async def _audit(c: Ctx) -> int:
    done = int(c.marker.get("audit_seq", 0))
    n = 0
    for batch in c.rows("SELECT seq, at, actor, action, subject, data FROM audit WHERE seq > ? ORDER BY seq", (done,)):
        pipe = c.r.pipeline(transaction=False)
        for seq, at, actor, action, subject, data in batch:
            pipe.xadd(c.k.audit, {"at": at, "actor": actor, "action": action, "subject": subject,
                                  "data": data or "{}"})
            if action.startswith("contact."):  # contact_audit reads a list per contact (redis_api.py)
                d = msgspec.json.decode(data) if data else {}
                rec = msgspec.json.encode({"seq": seq, "at": at, "actor": actor, "action": action,
                                           "subject": subject, "data": d}).decode()
                for cid in dict.fromkeys(x for x in (subject, d.get("winner"), d.get("from")) if x):
                    pipe.rpush(c.k.contact_audit(cid), rec)
        pipe.hset(c.k.migrated, "audit_seq", batch[-1][0])  # in the same pipeline: a re-run resumes after it
        await pipe.execute()
        n += len(batch)
    if n:
        await c.r.set(c.k.audit_seq, max(int(await c.r.get(c.k.audit_seq) or 0), done + n))
    return n


async def _tokens(c: Ctx) -> int:
    """API tokens by their digest (the tokens themselves were never stored)."""
    from gateway.store.sqlite_tokens import TokenInfo

    def at(v: Any) -> Any:
        from datetime import datetime, timezone

        return None if v is None else datetime.fromtimestamp(v / 1000, tz=timezone.utc)

    n = 0
    for batch in c.rows("SELECT id, prefix, agent_id, role, created_by, created_at, note, expires_at, revoked_at, "
                        "last_used_at, hash FROM api_tokens ORDER BY created_at, id"):
        for r in batch:
            info = TokenInfo(id=r[0], prefix=r[1], agent_id=r[2], role=r[3], created_by=r[4], created_at=at(r[5]),
                             note=r[6], expires_at=at(r[7]), revoked_at=at(r[8]), last_used_at=at(r[9]))
            await c.store.token_import(info, r[10])
            n += 1
    return n


async def _mentions(c: Ctx) -> int:
    n = 0
    for batch in c.rows("SELECT timeline_id, agent_id, ticket_id, by, at FROM mentions"):
        pipe = c.r.pipeline(transaction=False)
        for timeline_id, agent, ticket_id, by, at in batch:
            pipe.zadd(c.k.mentions(agent), {msgspec.json.encode({"timeline_id": timeline_id, "ticket_id": ticket_id,
                                                                  "by": by}).decode(): at})
        await pipe.execute()
        n += len(batch)
    return n


async def _auto_replies(c: Ctx) -> int:
    """The auto-reply ledger: each address's last reply (its window) and the replies of the budget's hour."""
    n = 0
    for batch in c.rows("SELECT address, max(at) FROM auto_reply_log GROUP BY address"):
        await c.r.hset(c.k.auto_reply_last, mapping={a: at for a, at in batch})
        n += len(batch)
    top = c.db.execute("SELECT max(at) FROM auto_reply_log").fetchone()[0]
    if top is not None:
        for batch in c.rows("SELECT rowid, at FROM auto_reply_log WHERE at > ?", (top - 3_600_000,)):
            await c.r.zadd(c.k.auto_reply_log, {f"m{rowid}": at for rowid, at in batch})
    return n


async def _indexes(c: Ctx) -> int:
    """The ticket list indexes and the contact id set, built from what the steps wrote (redis_api.py)."""
    return (await c.store.api_reindex())["tickets"]


async def _attachments(c: Ctx) -> int:
    root = c.data_dir / "attachments"
    n = 0
    if not root.is_dir():
        return 0
    for path in sorted(root.glob("??/*")):
        if path.name.startswith("."):
            continue  # a temporary file of a crashed write
        ref = path.parent.name + path.name
        data = await asyncio.to_thread(path.read_bytes)
        got = await c.attachments.aput(data)
        if got != ref:
            raise MigrateError(f"attachment {path} does not match its name (sha256 {got}): the folder is damaged")
        n += 1
    return n


async def _webchat(c: Ctx) -> int:
    """The webchat connector's own state (webchat.db, its key and files): its module moves it."""
    from connectors.webchat.redis_transcript import import_local

    return await import_local(c.data_dir, c.r, c.k, c.attachments)


#: The migration, one step per entity, in order. Adding Redis support for a
#: table means adding its step here (and its table leaves the refusal list).
STEPS: list[Step] = [
    Step("journal", ("journal",), _journal),
    Step("nonces", ("nonces",), _nonces),
    Step("contacts", ("contacts",), _contacts),
    Step("identities", ("identities",), _identities),
    Step("tickets", ("tickets",), _tickets),
    Step("timeline", ("timeline",), _timeline),
    Step("message_keys", ("message_keys",), _message_keys),
    Step("thread_refs", ("thread_refs",), _thread_refs),
    Step("participants", ("ticket_participants",), _participants),
    # agents, presence, assignment, SLA (gateway/commands/migrate_assign.py): after tickets
    Step("agents", ("agents",), migrate_assign.agents),
    Step("assignments", ("assignments",), migrate_assign.assignments),
    Step("queue", ("assign_queue",), migrate_assign.queue),
    Step("sla_clocks", ("sla_clocks",), migrate_assign.sla_clocks),
    Step("sla_timers", ("sla_timers",), migrate_assign.sla_timers),
    Step("sla_events", ("sla_events",), migrate_assign.sla_events),
    Step("stats", (), migrate_assign.stats),
    Step("changed", (), migrate_assign.changed),
    Step("outbox", ("outbox",), _outbox),
    Step("delivery_early", ("delivery_early",), _delivery_early),
    Step("state", ("state",), _state),
    Step("audit", ("audit",), _audit),
    Step("tokens", ("api_tokens",), _tokens),
    Step("mentions", ("mentions",), _mentions),
    Step("auto_replies", ("auto_reply_log",), _auto_replies),
    Step("indexes", (), _indexes),
    Step("attachments", (), _attachments),
    # outbound webhooks, help-desk sync, console (gateway/commands/migrate_hooks.py)
    Step("events", (), migrate_hooks.events),
    Step("webhooks", ("webhook_endpoints", "webhook_queue", "webhook_dead", "webhook_log"), migrate_hooks.webhooks),
    Step("desks", ("desk_links", "desk_seen"), migrate_hooks.desks),
    Step("console", ("canned_replies", "console_sessions"), migrate_hooks.console),
    Step("webchat", (), _webchat),
]


# ------------------------------------------------------------------ the run


async def _pipe(c: Ctx, cmds: list[tuple]) -> list:
    pipe = c.r.pipeline(transaction=False)
    for cmd in cmds:
        pipe.execute_command(*cmd)
    return await pipe.execute()


def untaken(db: sqlite3.Connection, skip: set[str]) -> tuple[dict[str, int], dict[str, int]]:
    """(tables holding rows no step takes, skipped tables' rows)."""
    taken = {t for s in STEPS for t in s.tables} | set(DERIVED)
    refused, skipped = {}, {}
    for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        if name in taken:
            continue
        rows = db.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
        if rows:
            (skipped if name in skip else refused)[name] = rows
    return refused, skipped


async def migrate(data_dir: Path, url: str, *, prefix: str = "og:", skip: set[str] = frozenset(),
                  attachments_dir: str | None = None, redis_attachment_max_bytes: int | None = None,
                  out: Callable[[str], None] = print) -> dict[str, int]:
    """Run every step; returns rows moved per step. Raises MigrateError (nothing written) when refused."""
    from gateway.store.redis_attachments import REDIS_MAX_BYTES, SharedAttachments
    from gateway.store.redis_store import RedisStore

    db_path = data_dir / "omnigate.db"
    if not db_path.exists():
        raise MigrateError(f"no SQLite store in {data_dir} ({db_path.name} is missing)")
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
    store = RedisStore(url, prefix=prefix)
    try:
        from gateway.store.schema import MIGRATIONS

        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version != len(MIGRATIONS):
            raise MigrateError(f"the SQLite store is at schema version {version}, this omnigate reads "
                               f"{len(MIGRATIONS)}: start and stop this version's daemon on it once (it upgrades "
                               "the store), then migrate")
        db.execute("BEGIN")  # one read transaction: every step reads the same snapshot
        refused, skipped = untaken(db, set(skip))
        if refused:
            names = ", ".join(f"{t} ({n} rows)" for t, n in refused.items())
            raise MigrateError(f"the SQLite store holds rows the Redis backend cannot take yet: {names}; "
                               "wait for their Redis support, or leave them behind with --skip TABLE")
        for t, n in skipped.items():
            out(f"skipped: {t} ({n} rows) stays behind (--skip)")
        if not await store.ping():
            raise MigrateError(f"cannot reach Redis at {url}")
        k = store.k
        marker = {(a.decode() if isinstance(a, bytes) else a): (b.decode() if isinstance(b, bytes) else b)
                  for a, b in (await store.r.hgetall(k.migrated)).items()}
        source = str(data_dir.resolve())
        if marker and marker.get("source") != source:
            raise MigrateError(f"prefix {prefix!r} holds a migration of {marker.get('source')}, not of {source}")
        if not marker and (await store.r.exists(k.journal_seq, k.counts, k.stream)):
            raise MigrateError(f"prefix {prefix!r} on {url} already holds a deployment's data; "
                               "migrate into an empty prefix (--prefix)")
        if marker.get("finished_at"):
            out(f"already migrated from {source} (finished at {marker['finished_at']} ms): nothing to do")
            return {}
        await store.r.hset(k.migrated, mapping={"source": source, "started_at": int(time.time() * 1000)})
        files = SharedAttachments(store, attachments_dir,
                                  redis_max_bytes=redis_attachment_max_bytes or REDIS_MAX_BYTES)
        ctx = Ctx(db=db, store=store, data_dir=data_dir, attachments=files, marker=marker)
        for step in STEPS:
            moved = await step.run(ctx)
            ctx.moved[step.name] = moved
            out(f"{step.name}: {moved}")
        counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("contacts", "tickets", "timeline", "outbox")}
        await store.r.hset(k.counts, mapping=counts)
        await store.r.hset(k.migrated, "finished_at", int(time.time() * 1000))
        return ctx.moved
    finally:
        db.close()
        await store.close()


def main(argv: list[str], prog: str = "omnigate migrate") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", required=True, metavar="sqlite:DIR",
                    help="the data folder of the single-node installation")
    ap.add_argument("--to", dest="target", default=None, metavar="redis://…",
                    help="the Redis of the deployment (redis://, rediss://, unix://, redis+sentinel://); "
                         "default: --config's redis_url")
    ap.add_argument("--config", default=None, metavar="FILE",
                    help="the Redis deployment's configuration: its redis_url, store.redis_prefix, "
                         "store.attachments_dir and store.redis_attachment_max_bytes are the defaults")
    ap.add_argument("--prefix", default=None, help="the key prefix (store.redis_prefix; default og:)")
    ap.add_argument("--skip", action="append", default=[], metavar="TABLE",
                    help="leave this table's rows behind on purpose (repeatable)")
    ap.add_argument("--attachments-dir", default=None,
                    help="store.attachments_dir of the deployment (attachments above the size go there)")
    ap.add_argument("--redis-attachment-max-bytes", type=int, default=None,
                    help="store.redis_attachment_max_bytes of the deployment")
    args = ap.parse_args(argv)
    if args.config:
        from gateway.config import ConfigError, load

        try:
            config = load(args.config)
        except ConfigError as exc:
            print(f"{prog}: configuration error: {exc}", file=sys.stderr)
            return 2
        args.target = args.target or config.redis_url
        args.prefix = args.prefix or config.store.redis_prefix
        args.attachments_dir = args.attachments_dir or config.store.attachments_dir
        if args.redis_attachment_max_bytes is None:
            args.redis_attachment_max_bytes = config.store.redis_attachment_max_bytes
    args.prefix = args.prefix or "og:"
    if not args.source.startswith("sqlite:"):
        print(f"{prog}: --from takes sqlite:DIR, got {args.source!r}", file=sys.stderr)
        return 2
    if not args.target or not args.target.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
        print(f"{prog}: --to takes a redis:// URL (or --config a configuration with redis_url), "
              f"got {(args.target or '')[:40]!r}", file=sys.stderr)
        return 2
    data_dir = Path(args.source[len("sqlite:"):])
    if not (data_dir / "omnigate.db").is_file():
        print(f"{prog}: no SQLite store in {data_dir} (omnigate.db is missing)", file=sys.stderr)
        return 1
    from gateway import datalock

    try:
        lock = datalock.acquire(data_dir)
    except datalock.Locked as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: {data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        asyncio.run(migrate(data_dir, args.target, prefix=args.prefix, skip=set(args.skip),
                            attachments_dir=args.attachments_dir,
                            redis_attachment_max_bytes=args.redis_attachment_max_bytes))
    except MigrateError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except (OSError, sqlite3.Error) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    print(f"{prog}: done; start the daemons with redis_url={args.target} (store.redis_prefix={args.prefix})")
    return 0

