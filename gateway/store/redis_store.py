"""The Redis backend of the store protocol: several instances, one state.

Every instance started with the same ``redis_url`` talks to one Redis
primary (replicas and Sentinel for fail-over) through ``redis.asyncio``.
Key names live in :mod:`gateway.store.redis_keys` (one prefix; hash tags
``{c:<id>}`` per contact and ``{t:<id>}`` per ticket).

Atomicity. Every multi-key step is one Lua script, registered once
(``register_script``: EVALSHA, loaded again after a Redis restart):

- ``APPEND``: the journal append — the idempotency ``SET NX`` of (channel,
  account, key), the entry's hash, its place in the status index, the
  ``XADD`` to the journal stream and, for signed callbacks, the nonce — all
  or nothing; the caller is answered only after the script ran (see
  ARCHITECTURE.md, "Redis: what durable means").
- ``APPLY``: a guarded write program. The Python side reads what a step
  needs (a snapshot, the ticket's current channels…), then sends the script
  *guards* — "this hash field still has this value" (the contact's and the
  ticket's ``version``), "this key does not exist" (a new contact, an
  identity not yet linked), "this message key is not taken" — and the
  *writes*. The script checks every guard first and applies every write only
  if all hold, so a step is atomic and optimistic exactly like the SQLite
  backend's version-checked UPDATEs: a stale snapshot raises ``Conflict``
  and the worker decides again. Redis runs a script alone, so nothing can
  interleave between the checks and the writes.

Claiming. The journal stream has one consumer group (``workers``) shared by
every instance; each store is one consumer. ``claim_pending`` returns this
consumer's own unfinished entries, new entries (``XREADGROUP >``) and
entries another consumer left idle longer than ``claim_idle_s``
(``XAUTOCLAIM``: a dead instance's work). Settling an entry (commit,
fail, processed) ``XACK``s it in the same script. Processing stays
idempotent: a commit whose message key is taken by the same journal entry
changes nothing.

Every operation of the store protocol is implemented here; the areas live
in mixins (``redis_api``, ``redis_assign``, ``redis_delivery``,
``redis_webhooks``, ``redis_order``, ``redis_shared``).
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any, Callable

import msgspec
import structlog

from connectors.base import IngestResult, Nonce, NonceReused
from gateway.store.redis_codec import j as _j, s as _s, dt, evalsha, ms, retry_conflicts
from gateway.store.base import (
    JOURNAL_STATUSES,
    REPLY_TOPIC,
    Conflict,
    Delivery,
    JournalEntry,
    NotFound,
    OutboxItem,
    Page,
    StoreError,
    StoreUnavailable,
)
from gateway.store.redis_api import REINDEX_LUA, ApiOps
from gateway.store.redis_assign import RedisAssignOps
from gateway.store.redis_delivery import RedisDeliveryOps
from gateway.store.redis_keys import Keys
from gateway.store.redis_order import RedisOrderMixin
from gateway.store.redis_shared import RedisSharedMixin
from gateway.store.redis_webhooks import RedisConsoleOps, RedisDeskOps, RedisWebhookOps
from routing.calls import call_text, merge_call
from routing.dedupe import reused_id
from routing.model import Contact, Identity, ReplyTarget, SlaState, Ticket, TimelineEntry, new_id, utcnow
from routing.pipeline import Lookup
from routing.sla import response_verdict
from routing.state import Commit, CommitResult, ContactState, Hit, Snapshot, TicketState

try:  # redis-py is a dependency of omnigate; imported lazily by callers that pick this backend
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, ResponseError, TimeoutError as RedisTimeoutError
except ImportError:  # pragma: no cover
    aioredis = None  # type: ignore[assignment]

log = structlog.get_logger(__name__)

_dec = msgspec.json.Decoder()
_entry_dec = msgspec.json.Decoder(TimelineEntry)
_reply_dec = msgspec.json.Decoder(ReplyTarget)
_sla_dec = msgspec.json.Decoder(SlaState)


# ---------------------------------------------------------------- Lua

APPEND_LUA = """
-- KEYS: idem, entry, stream, seq, all, pending[, nonce]
-- ARGV: jid, channel, account, key, raw, meta, received_at[, digest, ttl_ms]
local nonce = KEYS[7]
if nonce then
  local seen = redis.call('HMGET', nonce, 'digest', 'journal_id')
  if seen[1] then
    if seen[1] == ARGV[8] then return {0, seen[2]} end
    return {-1, seen[2]}
  end
end
local existing = redis.call('GET', KEYS[1])
local jid = ARGV[1]
local created = 1
if existing then
  jid = existing
  created = 0
else
  local seq = redis.call('INCR', KEYS[4])
  redis.call('SET', KEYS[1], jid)
  local sid = redis.call('XADD', KEYS[3], '*', 'j', jid)
  redis.call('HSET', KEYS[2], 'seq', seq, 'channel', ARGV[2], 'account', ARGV[3], 'key', ARGV[4],
             'raw', ARGV[5], 'received_at', ARGV[7], 'status', 'pending', 'attempts', 0,
             'size', string.len(ARGV[5]), 'sid', sid)
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'meta', ARGV[6]) end
  redis.call('ZADD', KEYS[5], seq, jid)
  redis.call('ZADD', KEYS[6], seq, jid)
end
if nonce then
  redis.call('HSET', nonce, 'digest', ARGV[8], 'journal_id', jid)
  redis.call('PEXPIRE', nonce, ARGV[9])
end
return {created, jid}
"""

APPLY_LUA = REINDEX_LUA + """
-- ARGV[1]: {"g": guards, "n": [counter key index, first] | null, "o": writes,
--           "q": [counter key index, count] (absent: none), "x": [[ticket key index, ticket id]…]
--           reindexed after the writes, "xb": index names' base}
-- guard: ["t", k] message key taken -> {"taken", value} (checked first, in order)
--        ["h", k, field, expected|null] hash field equals (null: absent)
--        ["v", k, expected|null] string value equals (null: absent)
--        ["x", k] key absent
--        ["n", k, field, max] / ["z", k, min, limit]: see redis_api.REINDEX_LUA (api_guard)
-- write: [command, k, arg…]; an arg {"$":"N"} is the ticket number drawn,
--        {"$":"L"} the previous write's reply (an XADD's new id),
--        {"$":"Q","i":i} the i-th timeline seq drawn by "q" (after the guards: seqs follow
--        the order the programs ran in, and a refused program draws none),
--        {"$":"QM","i":i,"m":id} the member '<seq, 16 digits>:<id>',
--        {"$":"QJ","i":i,"j":text} text .. seq .. '}' (a timeline record's JSON ending in "s"),
--        {"$":"H"|"S"|"G","k":i} KEYS[i]'s hash / set (JSON) or value as it is at that
--        point of the program (an event's snapshot as committed: redis_webhooks.py)
local p = cjson.decode(ARGV[1])
for i, g in ipairs(p.g) do
  local kind, k = g[1], KEYS[g[2]]
  if kind == 't' then
    local v = redis.call('GET', k)
    if v then return {'taken', v} end
  elseif kind == 'h' then
    local v = redis.call('HGET', k, g[3])
    if g[4] == cjson.null then
      if v then return {'conflict', tostring(i)} end
    elseif v ~= g[4] then return {'conflict', tostring(i)} end
  elseif kind == 'v' then
    local v = redis.call('GET', k)
    if g[3] == cjson.null then
      if v then return {'conflict', tostring(i)} end
    elseif v ~= g[3] then return {'conflict', tostring(i)} end
  elseif kind == 'x' then
    if redis.call('EXISTS', k) == 1 then return {'conflict', tostring(i)} end
  elseif api_guard(g, k) then return {'conflict', tostring(i)}
  end
end
local num = false
if p.n ~= cjson.null and p.n then
  local ck = KEYS[p.n[1]]
  if redis.call('EXISTS', ck) == 0 then
    redis.call('SET', ck, p.n[2])
    num = tonumber(p.n[2])
  else
    num = redis.call('INCR', ck)
  end
end
local qbase = 0
if p.q then qbase = redis.call('INCRBY', KEYS[p.q[1]], p.q[2]) - p.q[2] end
local last = false
for _, op in ipairs(p.o) do
  local args = {}
  for j = 3, #op do
    local a = op[j]
    if type(a) == 'table' then
      local t = a['$']
      if t == 'N' then a = num
      elseif t == 'Q' then a = string.format('%d', qbase + a['i'])
      elseif t == 'QM' then a = string.format('%016d', qbase + a['i']) .. ':' .. a['m']
      elseif t == 'QJ' then a = a['j'] .. string.format('%d', qbase + a['i']) .. '}'
      elseif t == 'H' then a = cjson.encode(redis.call('HGETALL', KEYS[a['k']]))
      elseif t == 'S' then a = cjson.encode(redis.call('SMEMBERS', KEYS[a['k']]))
      elseif t == 'G' then a = redis.call('GET', KEYS[a['k']]) or ''
      else a = last end
    end
    args[#args + 1] = a
  end
  last = redis.call(op[1], KEYS[op[2]], unpack(args))
end
for _, x in ipairs(p.x or {}) do tix_reindex(KEYS[x[1]], x[2], p.xb) end
return {'ok', tostring(num or -1)}
"""

LEASE_LUA = """
-- KEYS[1]: the lease; ARGV: holder, ttl_ms, acquire|renew|release
local cur = redis.call('GET', KEYS[1])
if ARGV[3] == 'acquire' then
  if not cur then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
  end
end
if cur ~= ARGV[1] then return 0 end
if ARGV[3] == 'release' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

TAKE_LUA = """
-- KEYS[1]: the ticket's holder; KEYS[2], KEYS[3]: agents_live_seq, agents_live_v;
-- KEYS[4..]: the candidates' load hashes, in preference order
-- ARGV[1]: capacity class; ARGV[2*i], ARGV[2*i+1]: candidate i's agent id and capacity
local held = redis.call('GET', KEYS[1])
if held then return {'held', held} end
for i = 4, #KEYS do
  local agent, cap = ARGV[2 * (i - 3)], tonumber(ARGV[2 * (i - 3) + 1])
  local load = tonumber(redis.call('HGET', KEYS[i], ARGV[1]) or '0')
  if load < cap then
    redis.call('HINCRBY', KEYS[i], ARGV[1], 1)
    redis.call('INCR', KEYS[2])
    redis.call('HINCRBY', KEYS[3], agent, 1)
    redis.call('SET', KEYS[1], agent .. ' ' .. ARGV[1])
    return {'took', agent}
  end
end
return {'full', ''}
"""

RELEASE_LUA = """
-- KEYS[1]: the ticket's holder, KEYS[2]: that agent's load, KEYS[3], KEYS[4]: agents_live_seq,
-- agents_live_v; ARGV[1]: the holder value read ('<agent> <class>')
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local agent, cls = string.match(ARGV[1], '^(.-) (.*)$')
if tonumber(redis.call('HGET', KEYS[2], cls) or '0') > 0 then
  redis.call('HINCRBY', KEYS[2], cls, -1)
  redis.call('INCR', KEYS[3])
  redis.call('HINCRBY', KEYS[4], agent, 1)
end
return 1
"""

CLAIM_LUA = """
-- KEYS[1]: the topic's due set; KEYS[2..]: candidate outbox rows (read just before)
-- ARGV: now_ms, until_ms, lease; ARGV[3+i]: candidate i's id
local out = {}
for i = 2, #KEYS do
  local id = ARGV[2 + i]
  local due = redis.call('ZSCORE', KEYS[1], id)
  if due and tonumber(due) <= tonumber(ARGV[1]) then
    redis.call('HSET', KEYS[i], 'status', 'sending', 'lease', ARGV[3], 'next_at', ARGV[2])
    local attempts = redis.call('HINCRBY', KEYS[i], 'attempts', 1)
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    out[#out + 1] = id
    out[#out + 1] = attempts
  end
end
return out
"""

NUMBER = {"$": "N"}
LAST = {"$": "L"}


class Tx:
    """One guarded write program for ``APPLY_LUA``: guards, then writes."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self.taken: list[list] = []
        self.guards: list[list] = []
        self.ops: list[list] = []
        self.number: list | None = None
        self.seqs: list | None = None
        self.reindexed: list[list] = []
        self.index_base = ""

    def k(self, key: str) -> int:
        i = self._index.get(key)
        if i is None:
            self.keys.append(key)
            i = self._index[key] = len(self.keys)
        return i

    def take(self, key: str) -> None:
        self.taken.append(["t", self.k(key)])

    def hash_is(self, key: str, field: str, expected: str | None) -> None:
        self.guards.append(["h", self.k(key), field, expected])

    def value_is(self, key: str, expected: str | None) -> None:
        self.guards.append(["v", self.k(key), expected])

    def absent(self, key: str) -> None:
        self.guards.append(["x", self.k(key)])

    def draw_number(self, counter: str, first: int) -> None:
        self.number = [self.k(counter), str(first)]

    def draw_seq(self, counter: str) -> int:
        """One more seq drawn from ``counter`` inside the program (after its
        guards); the draw's index for the ``Q``/``QM``/``QJ`` arguments."""
        if self.seqs is None:
            self.seqs = [self.k(counter), 0]
        self.seqs[1] += 1
        return self.seqs[1]

    def op(self, cmd: str, key: str, *args: Any) -> None:
        self.ops.append([cmd, self.k(key), *(a if isinstance(a, dict) else _s(a) for a in args)])

    def hset(self, key: str, fields: dict[str, Any]) -> None:
        flat: list[Any] = []
        for f, v in fields.items():
            if v is not None:
                flat += [f, v]
        if flat:
            self.op("HSET", key, *flat)

    def reindex(self, ticket_key: str, ticket_id: str, base: str) -> None:
        """After the writes, move the ticket between the list indexes its hash
        now names (``redis_api.REINDEX_LUA``): every program that changes a
        ticket's status, priority, team, assignee or times calls this."""
        if not any(x[1] == ticket_id for x in self.reindexed):
            self.reindexed.append([self.k(ticket_key), ticket_id])
        self.index_base = base

    def program(self) -> str:
        prog: dict[str, Any] = {"g": self.taken + self.guards, "n": self.number, "o": self.ops}
        if self.seqs is not None:
            prog["q"] = self.seqs
        if self.reindexed:
            prog["x"], prog["xb"] = self.reindexed, self.index_base
        return _j(prog)


class _Taken(Exception):
    def __init__(self, value: bytes):
        self.value = value


def instance_name(listen: str) -> str:
    """This instance's consumer name in the journal's group: the host and the
    listen address, stable across restarts, so a restarted instance takes
    its own unfinished entries back at once (others take them over only
    after ``claim_idle_s``)."""
    return f"{socket.gethostname()}:{listen}"


_TICKET_FIELDS = ("number", "contact_id", "origin_contact_id", "subject", "status", "priority", "team", "skills",
                  "assignee", "tags", "channels", "reply_to", "follow_up_of", "sla", "created_at", "updated_at",
                  "last_message_at", "first_response_at", "solved_at", "closed_at", "version")
_CONTACT_FIELDS = ("name", "tier", "tags", "attributes", "flags", "merged_into", "created_at", "updated_at", "version")
_JOURNAL_FIELDS = ("seq", "channel", "account", "key", "received_at", "status", "attempts", "error", "meta",
                   "ticket_id", "contact_id", "processed_at", "size", "sid")

def ticket_from_row(ticket_id: str, r: list) -> Ticket | None:
    """A ticket from its hash's ``_TICKET_FIELDS`` (None: no such ticket)."""
    if r[0] is None:
        return None
    f = dict(zip(_TICKET_FIELDS, r))
    return Ticket(
        id=ticket_id, number=int(f["number"]), contact_id=_s(f["contact_id"]), subject=_s(f["subject"]),
        status=_s(f["status"]), priority=_s(f["priority"]) or "normal", team=_s(f["team"]),
        skills=_dec.decode(f["skills"]) if f["skills"] else {}, assignee=_s(f["assignee"]),
        tags=_dec.decode(f["tags"]) if f["tags"] else [], channels=_dec.decode(f["channels"]) if f["channels"] else [],
        reply_to=_reply_dec.decode(f["reply_to"]) if f["reply_to"] else None, follow_up_of=_s(f["follow_up_of"]),
        sla=_sla_dec.decode(f["sla"]) if f["sla"] else None, created_at=dt(f["created_at"]),
        updated_at=dt(f["updated_at"]), last_message_at=dt(f["last_message_at"]),
        first_response_at=dt(f["first_response_at"]), solved_at=dt(f["solved_at"]), closed_at=dt(f["closed_at"]),
    )


class RedisStore(ApiOps, RedisDeliveryOps, RedisAssignOps, RedisWebhookOps, RedisDeskOps, RedisConsoleOps, RedisOrderMixin,
                 RedisSharedMixin):
    """The store on one Redis (primary + replicas + Sentinel in production)."""

    backend = "redis"

    def __init__(self, url: str, *, prefix: str = "og:", clock: Callable[[], datetime] = utcnow,
                 first_ticket_number: int = 1000, consumer: str | None = None, claim_idle_s: float = 60.0,
                 client: Any = None, socket_timeout_s: float = 5.0, wait_replicas: int = 0,
                 wait_timeout_ms: int = 1000):
        if aioredis is None:  # pragma: no cover
            raise StoreError("the redis package is not installed")
        self.url = url
        self.k = Keys(prefix)
        self.clock = clock
        self._first_number = first_ticket_number
        #: this instance's name in the consumer group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.claim_idle_ms = int(claim_idle_s * 1000)
        #: an append is acknowledged only once this many replicas have it (WAIT)
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        socket_timeout_s = max(socket_timeout_s, wait_timeout_ms / 1000 + 2)  # WAIT blocks that long
        from gateway.store.redis_conn import connect  # redis://, rediss://, unix://, redis+sentinel://

        self.r = client or connect(url, decode_responses=False, health_check_interval=10,
                                   socket_timeout=socket_timeout_s, socket_connect_timeout=2.0)
        self._append = self.r.register_script(APPEND_LUA)
        self._apply = self.r.register_script(APPLY_LUA)
        self._lease = self.r.register_script(LEASE_LUA)
        self._take = self.r.register_script(TAKE_LUA)
        self._release = self.r.register_script(RELEASE_LUA)
        self._claim = self.r.register_script(CLAIM_LUA)
        self._wh_scripts()
        self._group_ready = False
        self._closed = False

    # ------------------------------------------------------------ plumbing

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.r.aclose()

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(f"redis unavailable: {exc}") from exc

    async def _pipelined(self, build: Callable[[Any], None], scripts: tuple[Any, ...] = ()) -> list:
        """One round trip: the pipeline ``build`` fills (not a transaction), its
        scripts (``scripts``, called as ``EVALSHA`` by ``build`` with
        :func:`evalsha`) included. redis-py's own script-in-pipeline asks Redis
        ``SCRIPT EXISTS`` first, a round trip of its own every time; here a Redis
        that forgot them (a restart, ``SCRIPT FLUSH``) answers ``NOSCRIPT``,
        they are loaded and the whole pipeline is sent again — so only
        pipelines whose every command may run twice (reads, a lease taken by
        the same holder) go through here."""
        for attempt in range(2):
            pipe = self.r.pipeline(transaction=False)
            build(pipe)
            try:
                return await self._call(pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
                for script in scripts:
                    await self._call(self.r.script_load(script.script))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, tx: Tx) -> int | None:
        """Run a guarded program; the ticket number drawn (or None). Raises
        Conflict when a guard failed, _Taken when a message key was taken."""
        if self._closed:
            raise StoreError("store is closed")
        kind, value = await self._call(self._apply(keys=tx.keys, args=[tx.program()]))
        if kind == b"taken":
            raise _Taken(value)
        if kind == b"conflict":
            raise Conflict(f"state changed since it was read (guard {int(value)})")
        n = int(value)
        return None if n < 0 else n

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except (RedisConnectionError, RedisTimeoutError):
            return False

    # ------------------------------------------------------------ journal

    async def journal_append(self, channel: str, account: str, key: str, raw: bytes,
                             meta: dict | None = None, *, nonce: Nonce | None = None) -> IngestResult:
        """Append durably: answered after Redis ran the script (with
        ``appendfsync always`` after its fsync; see ARCHITECTURE.md)."""
        k = self.k
        jid = new_id()
        keys = [k.journal_key(channel, account, key), k.journal_entry(jid), k.stream, k.journal_seq,
                k.journal_all, k.journal_status("pending")]
        args: list[Any] = [jid, channel, account, key, raw, _j(meta) if meta else "", ms(self.clock())]
        if nonce is not None:
            keys.append(k.nonce(nonce.scope, nonce.value))
            ttl = max(1, (ms(nonce.expires) or 0) - (ms(nonce.now) or 0))
            args += [hashlib.sha256(raw).hexdigest(), ttl]
        if self.wait_replicas:
            # the script and WAIT on one connection (WAIT covers that connection's writes)
            async with self.r.pipeline(transaction=False) as pipe:
                await self._append(keys=keys, args=args, client=pipe)
                pipe.execute_command("WAIT", self.wait_replicas, self.wait_timeout_ms)
                (created, jid_b), replicas = await self._call(pipe.execute())
            if int(replicas) < self.wait_replicas and created != -1:
                # stored on the primary, not yet on enough replicas: not acknowledged (the
                # sender retries; the idempotency key answers with this same entry)
                raise StoreError(f"redis: the append reached {int(replicas)} of {self.wait_replicas} replicas "
                                 f"in {self.wait_timeout_ms} ms")
        else:
            created, jid_b = await self._call(self._append(keys=keys, args=args))
        if created == -1:
            raise NonceReused(f"nonce {nonce.value!r} was already used with another body: a replayed signature")
        return IngestResult(journal_id=_s(jid_b), created=created == 1)

    async def _entries(self, ids: list[str], with_raw: bool) -> list[JournalEntry]:
        if not ids:
            return []
        fields = _JOURNAL_FIELDS + (("raw",) if with_raw else ())
        pipe = self.r.pipeline(transaction=False)
        for jid in ids:
            pipe.hmget(self.k.journal_entry(jid), *fields)
        rows = await self._call(pipe.execute())
        out = []
        for jid, r in zip(ids, rows):
            if r[0] is None:
                continue
            meta = r[8]
            out.append(JournalEntry(
                id=jid, seq=int(r[0]), channel=_s(r[1]), account=_s(r[2]), key=_s(r[3]), received_at=dt(r[4]),
                status=_s(r[5]), attempts=int(r[6] or 0), error=_s(r[7]), meta=_dec.decode(meta) if meta else {},
                ticket_id=_s(r[9]), contact_id=_s(r[10]), processed_at=dt(r[11]), size=int(r[12] or 0),
                raw=bytes(r[14]) if with_raw and r[14] is not None else None,
            ))
        return out

    async def journal_get(self, journal_id: str, *, with_raw: bool = False) -> JournalEntry | None:
        rows = await self._entries([journal_id], with_raw)
        return rows[0] if rows else None

    async def journal_list(self, *, status: str | None = None, since: datetime | None = None, after_seq: int = 0,
                           limit: int = 100, with_raw: bool = False, ids: list[str] | None = None,
                           channel: str | None = None) -> list[JournalEntry]:
        """In arrival order from the seq-scored index (per status when given);
        ``since``/``channel``/``ids`` filter what the index yields, in chunks."""
        index = self.k.journal_status(status) if status else self.k.journal_all
        want = set(ids) if ids else None
        out: list[JournalEntry] = []
        start = f"({after_seq}"
        chunk = max(limit, 100)
        while len(out) < limit:
            batch = await self._call(self.r.zrangebyscore(index, start, "+inf", start=0, num=chunk, withscores=True))
            if not batch:
                break
            start = f"({int(batch[-1][1])}"
            jids = [_s(m) for m, _ in batch if want is None or _s(m) in want]
            for e in await self._entries(jids, with_raw):
                if since is not None and e.received_at < since:
                    continue
                if channel is not None and e.channel != channel:
                    continue
                out.append(e)
            if len(batch) < chunk:
                break
        return out[:limit]

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._call(self.r.xgroup_create(self.k.stream, self.k.group, id="0", mkstream=True))
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def claim_pending(self, after_seq: int, limit: int) -> list[JournalEntry]:
        """Pending entries for this consumer, in arrival order, with raw bytes:
        its own unfinished ones (when ``after_seq`` is 0: a start or a
        rescan — a restarted instance takes them back), new ones from the shared
        consumer group, and ones another consumer left idle for
        ``claim_idle_s`` (a dead instance's). Entries already settled are
        acknowledged and skipped."""
        await self._ensure_group()
        k, r = self.k, self.r
        sids: dict[str, str] = {}
        try:
            # its own unfinished entries only on a (re)scan from the start: later calls
            # would re-read the entries the caller holds in flight
            own = await self._call(r.xreadgroup(k.group, self.consumer, {k.stream: "0"}, count=limit)) \
                if after_seq == 0 else []
            new = await self._call(r.xreadgroup(k.group, self.consumer, {k.stream: ">"}, count=limit))
            stolen: list = []
            if self.claim_idle_ms >= 0:
                res = await self._call(r.xautoclaim(k.stream, k.group, self.consumer, self.claim_idle_ms,
                                                    start_id="0-0", count=limit))
                stolen = res[1]
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream was deleted under us (a flush): make it again
                self._group_ready = False
                return []
            raise
        for streams in (own, new):
            for _name, messages in streams or []:
                for sid, fields in messages:
                    if fields:
                        sids[_s(fields[b"j"])] = _s(sid)
        for sid, fields in stolen:
            if fields:
                sids[_s(fields[b"j"])] = _s(sid)
        entries = await self._entries(list(sids), True)
        stale = [sids[e.id] for e in entries if e.status != "pending"]
        if stale:
            await self._call(r.xack(k.stream, k.group, *stale))
        picked = sorted((e for e in entries if e.status == "pending" and e.seq > after_seq), key=lambda e: e.seq)
        if stolen:
            log.info("redis.journal_taken_over", consumer=self.consumer, entries=len(stolen))
        return picked[:limit]

    async def _journal_head(self, jid: str) -> tuple[int, str | None, str | None]:
        seq, sid, status = await self._call(self.r.hmget(self.k.journal_entry(jid), "seq", "sid", "status"))
        if seq is None:
            raise NotFound(f"journal entry {jid} not found")
        return int(seq), _s(sid), _s(status)

    def _settle(self, tx: Tx, jid: str, seq: int, sid: str | None, status: str, fields: dict[str, Any],
                drop: tuple[str, ...] = ()) -> None:
        """The journal entry's new status, its indexes, and the stream ack."""
        k = self.k
        entry = k.journal_entry(jid)
        tx.hset(entry, {"status": status, **fields})
        if drop:
            tx.op("HDEL", entry, *drop)
        for s in JOURNAL_STATUSES:
            if s != status:
                tx.op("ZREM", k.journal_status(s), jid)
        tx.op("ZADD", k.journal_status(status), seq, jid)
        if sid and status != "pending":
            tx.op("XACK", k.stream, k.group, sid)
        if status != "pending":
            self._order_settled(tx, jid)  # its sender's next entry may go (redis_order.py)

    async def journal_fail(self, journal_id: str, error: str) -> None:
        seq, sid, _ = await self._journal_head(journal_id)
        tx = Tx()
        self._settle(tx, journal_id, seq, sid, "failed", {"error": error[:2000], "processed_at": ms(self.clock())})
        tx.op("HINCRBY", self.k.journal_entry(journal_id), "attempts", 1)
        await self._run(tx)

    async def journal_mark_processed(self, journal_id: str) -> None:
        seq, sid, _ = await self._journal_head(journal_id)
        tx = Tx()
        self._settle(tx, journal_id, seq, sid, "processed", {"processed_at": ms(self.clock())}, drop=("error",))
        await self._run(tx)

    async def journal_requeue(self, journal_ids: list[str]) -> int:
        """Back to ``pending`` with a new stream entry (the old one was acked),
        so any instance's worker claims it; returns how many."""
        n = 0
        for jid in journal_ids:
            try:
                seq, _sid, status = await self._journal_head(jid)
            except NotFound:
                continue
            if status == "pending":
                continue
            if await self._call(self.r.hexists(self.k.journal_entry(jid), "raw_pruned_at")):
                continue  # its payload was pruned (retention): it cannot be decided again
            tx = Tx()
            tx.hash_is(self.k.journal_entry(jid), "status", status)
            self._settle(tx, jid, seq, None, "pending", {}, drop=("error",))
            await self._ensure_group()
            tx.op("XADD", self.k.stream, "*", "j", jid)
            tx.op("HSET", self.k.journal_entry(jid), "sid", LAST)
            try:
                await self._run(tx)
            except Conflict:
                continue
            n += 1
        return n

    async def journal_counts(self) -> dict[str, int]:
        pipe = self.r.pipeline(transaction=False)
        for s in ("pending", "failed", "duplicate"):
            pipe.zcard(self.k.journal_status(s))
        pipe.get(self.k.journal_seq)
        *small, total = await self._call(pipe.execute())
        out = dict(zip(("pending", "failed", "duplicate"), (int(x) for x in small)))
        out["processed"] = max(0, int(total or 0) - sum(out.values()))
        return out

    async def counts(self) -> dict[str, int]:
        total, counts = await self._call(asyncio_gather(self.r.get(self.k.journal_seq), self.r.hgetall(self.k.counts)))
        out = {"journal": int(total or 0)}
        for t in ("contacts", "tickets", "timeline", "outbox"):
            out[t] = int(counts.get(t.encode(), 0))
        return out

    # ------------------------------------------------------------ snapshot

    async def _hit_of(self, raw: bytes) -> Hit:
        h = _dec.decode(raw)
        jkey = await self._call(self.r.hget(self.k.journal_entry(h["j"]), "key"))
        return Hit(h["j"], h.get("t"), h.get("k"), h.get("c"), _s(jkey))

    async def _ticket_states(self, ids: list[str]) -> list[TicketState | None]:
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for tid in ids:
            pipe.hmget(self.k.ticket(tid), "number", "contact_id", "status", "version", "created_at",
                       "last_message_at", "subject", "channels", "solved_at", "priority", "team", "assignee")
        out: list[TicketState | None] = []
        for tid, r in zip(ids, await self._call(pipe.execute())):
            if r[0] is None:
                out.append(None)
                continue
            out.append(TicketState(
                id=tid, number=int(r[0]), contact_id=_s(r[1]), status=_s(r[2]), version=int(r[3]),
                created_at=dt(r[4]), last_message_at=dt(r[5]), subject=_s(r[6]),
                channels=tuple(_dec.decode(r[7])), solved_at=dt(r[8]), priority=_s(r[9]) or "normal",
                team=_s(r[10]), assignee=_s(r[11])))
        return out

    async def snapshot(self, look: Lookup, now: datetime) -> Snapshot:
        """What one Inbound is decided on. Read in three pipelined round trips
        (what the message names: its key, the edited message's key, the
        identities' owners, thread refs, ticket numbers; then what the owners
        name: contacts, their latest tickets, the near-duplicate; then the
        tickets' states), more only on a hit (its journal key) or a reply to
        another contact's thread (participants). Not one point in time — the
        commit's guards (versions, absent keys) catch anything that changed, as
        SQLite's version checks do."""
        k, r = self.k, self.r
        idents = look.identities
        pipe = r.pipeline(transaction=False)
        pipe.get(k.message_key(*look.message_key))
        if look.edits_key is not None:
            pipe.get(k.message_key(*look.edits_key))
        for ident in idents:
            pipe.hget(k.identity(ident.kind, ident.value), "contact")
        if look.refs:
            pipe.mget([k.thread_ref(ref) for ref in look.refs])
        if look.numbers:
            pipe.hmget(k.ticket_numbers, [str(n) for n in look.numbers])
        res = iter(await self._call(pipe.execute()))
        exact = next(res)
        snap = Snapshot(now=now, exact=await self._hit_of(exact) if exact else None)
        if snap.exact is not None and not look.call and not reused_id(snap.exact.journal_key, look.content_sha):
            return snap
        if look.edits_key is not None:
            edited = next(res)
            snap.edited = await self._hit_of(edited) if edited else None
        for ident in idents:
            owner = next(res)
            if owner:
                snap.owners[ident.key()] = _s(owner)
        ref_owners = next(res) if look.refs else []
        number_owners = next(res) if look.numbers else []
        cids = list(dict.fromkeys(snap.owners.values()))
        sender_owner = snap.owners.get(look.sender.key())
        near = bool(look.text_hash and sender_owner)
        tids: list[str] = []
        if cids or near:
            pipe = r.pipeline(transaction=False)
            for cid in cids:
                pipe.hmget(k.contact(cid), "version", "name", "tier", "tags", "flags")
                pipe.zrevrange(k.contact_tickets(cid), 0, 19)
            if near:
                horizon = ms(now) - int(look.near_window_s * 1000)
                pipe.zrangebyscore(k.contact_text(sender_owner, look.text_hash), horizon, "+inf", start=0, num=1)
            res2 = await self._call(pipe.execute())
            for i, cid in enumerate(cids):
                c, tickets = res2[2 * i], res2[2 * i + 1]
                if c[0] is None:
                    continue
                snap.contacts[cid] = ContactState(
                    id=cid, version=int(c[0]), name=_s(c[1]), tier=_s(c[2]),
                    tags=tuple(_dec.decode(c[3])) if c[3] else (), flags=tuple(_dec.decode(c[4])) if c[4] else ())
                tids += [_s(t) for t in tickets]
            if near and res2[-1]:
                h = _dec.decode(res2[-1][0])
                snap.near_duplicate = Hit(h["j"], h["e"], h.get("t"), h.get("c"))
        found = [(ref, _s(t)) for ref, t in zip(look.refs, ref_owners) if t]
        found_n = [(n, _s(t)) for n, t in zip(look.numbers, number_owners) if t]
        # every ticket state in one round trip: the contacts' tickets, then the refs', then the numbers'
        states = await self._ticket_states(tids + [t for _, t in found] + [t for _, t in found_n])
        if cids:
            snap.tickets = [t for t in states[:len(tids)] if t is not None]
            snap.tickets.sort(key=lambda t: t.last_message_at, reverse=True)
        for (ref, _), st in zip(found, states[len(tids):len(tids) + len(found)]):
            if st is not None:
                snap.ref_tickets[ref] = st
        if snap.ref_tickets:
            member = _j([look.sender.kind, look.sender.value])
            part = set()
            for t in snap.ref_tickets.values():
                if t.contact_id != sender_owner and await self._call(r.hexists(k.ticket_participants(t.id), member)):
                    part.add(t.id)
            snap.participating = frozenset(part)
        for (n, _), st in zip(found_n, states[len(tids) + len(found):]):
            if st is not None:
                snap.numbered[n] = st
        return snap

    # ------------------------------------------------------------ commit

    def _journal_done(self, tx: Tx, c: Commit, seq: int, sid: str | None, status: str, now: int,
                      ticket_id: str | None, contact_id: str | None) -> None:
        self._settle(tx, c.journal_id, seq, sid, status,
                     {"processed_at": now, "ticket_id": ticket_id, "contact_id": contact_id}, drop=("error",))

    async def _number_of(self, ticket_id: str | None) -> int | None:
        if not ticket_id:
            return None
        n = await self._call(self.r.hget(self.k.ticket(ticket_id), "number"))
        return int(n) if n else None

    async def commit(self, c: Commit) -> CommitResult:
        """One guarded program: the contact's and ticket's version checks, the
        message key's SET NX, and every write of the Commit (contact,
        identities → contact, ticket, timeline, message key, thread refs,
        participants, outbox, journal status and stream ack)."""
        k = self.k
        now = ms(self.clock())
        plain = c.message_key is not None and c.outcome == "processed" and c.delivery is None
        (seq, sid, _), rows = await self._commit_reads(c, plain)
        if c.message_key is None or c.outcome != "processed":
            if c.final:
                tx = Tx()
                if c.outcome == "duplicate":
                    self._journal_done(tx, c, seq, sid, "duplicate", now, c.ticket_id, c.contact_id)
                else:
                    self._settle(tx, c.journal_id, seq, sid, "processed", {}, drop=("error",))
                    tx.op("HSETNX", k.journal_entry(c.journal_id), "processed_at", now)
                await self._run(tx)
            return CommitResult(c.outcome, c.contact_id, c.ticket_id, await self._number_of(c.ticket_id))
        try:
            if c.delivery is not None:  # a platform's delivery report of one of our replies (redis_delivery.py)
                return await self._commit_delivery(c)
            return await self._commit(c, now, seq, sid, rows)
        except _Taken as taken:
            hit = await self._hit_of(taken.value)
            if c.key_taken_conflicts and hit.journal_id != c.journal_id:
                raise Conflict(f"call {c.message_key[2]} was committed by another report since the snapshot") from None
            tx = Tx()
            if hit.journal_id == c.journal_id:  # a replay of this entry: nothing changes
                if c.final:
                    self._settle(tx, c.journal_id, seq, sid, "processed", {}, drop=("error",))
                    await self._run(tx)
                return CommitResult("processed", hit.contact_id, hit.ticket_id, await self._number_of(hit.ticket_id))
            if c.final:
                self._journal_done(tx, c, seq, sid, "duplicate", now, hit.ticket_id, hit.contact_id)
                await self._run(tx)
            return CommitResult("duplicate", hit.contact_id, hit.ticket_id, await self._number_of(hit.ticket_id))

    async def _commit_reads(self, c: Commit, plain: bool) -> tuple[tuple[int, str | None, str | None], dict[str, Any]]:
        """The journal entry's head and, for a plain commit (``plain``), every row
        ``_commit`` reads — the contact's head, the origin identity, the changed
        ticket's row, the ticket's number, an edited entry — in ONE pipelined
        round trip: none depends on another, and each is what a separate read
        would have returned (the program's guards check the versions either way)."""
        k = self.k
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(k.journal_entry(c.journal_id), "seq", "sid", "status")
        names: list[str] = []
        if plain:
            if c.new_contact is None and c.contact_id is not None:
                pipe.hmget(k.contact(c.contact_id), "version", "name", "flags", "merged_into")
                names.append("contact")
                if c.origin_identity is not None:
                    pipe.hget(k.identity(c.origin_identity.kind, c.origin_identity.value), "origin")
                    names.append("origin")
            if c.new_ticket is None and c.ticket_change is not None:
                pipe.hmget(k.ticket(c.ticket_change.id), "version", "channels", "tags", "origin_contact_id",
                           "contact_id", "last_message_at")
                names.append("ticket")
            if c.new_ticket is None and c.ticket_id is not None:  # its number (set once, at its creation)
                pipe.hget(k.ticket(c.ticket_id), "number")
                names.append("number")
            if c.edit is not None:
                pipe.get(k.timeline_entry(c.edit.timeline_id))
                names.append("edit")
        head, *rest = await self._call(pipe.execute())
        if head[0] is None:
            raise NotFound(f"journal entry {c.journal_id} not found")
        return (int(head[0]), _s(head[1]), _s(head[2])), dict(zip(names, rest))

    async def _commit(self, c: Commit, now: int, seq: int, sid: str | None, rows: dict[str, Any]) -> CommitResult:
        k = self.k
        tx = Tx()
        tx.take(k.message_key(*c.message_key))
        cid = c.contact_id
        assert cid is not None
        ckey = k.contact(cid)
        if c.new_contact is not None:
            tx.absent(ckey)
            flags = sorted((set(c.add_flags)) - set(c.remove_flags))
            tx.hset(ckey, {"name": c.new_contact.name, "created_at": ms(c.new_contact.created_at), "updated_at": now,
                           "version": 1, "tags": "[]", "attributes": "{}", "flags": _j(flags)})
            tx.op("HINCRBY", k.counts, "contacts", 1)
            tx.op("ZADD", k.contacts_by_id, 0, cid)
        else:
            version, name, flags_raw, merged = rows["contact"]
            if version is None or merged or int(version) != c.contact_expect_version:
                raise Conflict(f"contact {cid} changed since the snapshot")
            tx.hash_is(ckey, "version", str(c.contact_expect_version))
            fields: dict[str, Any] = {"updated_at": now}
            if name is None and c.contact_name:
                fields["name"] = c.contact_name
            if c.add_flags or c.remove_flags:
                flags = set(_dec.decode(flags_raw)) if flags_raw else set()
                fields["flags"] = _j(sorted((flags | set(c.add_flags)) - set(c.remove_flags)))
            tx.hset(ckey, fields)
            tx.op("HINCRBY", ckey, "version", 1)
        for link in c.link_identities:
            ikey = k.identity(link.identity.kind, link.identity.value)
            tx.absent(ikey)
            tx.hset(ikey, {"contact": cid, "origin": cid, "reason": link.reason, "created_at": now})
            tx.op("SADD", k.contact_identities(cid), _j([link.identity.kind, link.identity.value]))

        origin = cid
        if c.origin_identity is not None and c.new_contact is None:
            origin = _s(rows["origin"]) or cid
        ticket_origin = origin
        ticket_contact = cid
        if c.new_ticket is not None:
            t = c.new_ticket
            tkey = k.ticket(t.id)
            tx.absent(tkey)
            tx.draw_number(k.ticket_counter, self._first_number)
            tx.hset(tkey, {
                "contact_id": cid, "origin_contact_id": origin, "subject": t.subject, "status": t.status,
                "priority": t.priority, "team": t.team, "skills": _j(t.skills), "assignee": t.assignee,
                "tags": _j(sorted(set(t.tags))), "channels": _j([t.channel]),
                "reply_to": _j(t.reply_to) if t.reply_to else None, "follow_up_of": t.follow_up_of,
                "created_at": ms(t.created_at), "updated_at": now, "last_message_at": ms(t.created_at), "version": 1,
            })
            tx.op("HSET", tkey, "number", NUMBER)
            tx.op("HSET", k.ticket_numbers, NUMBER, t.id)
            tx.op("ZADD", k.contact_tickets(cid), ms(t.created_at), t.id)
            tx.op("HINCRBY", k.counts, "tickets", 1)
            tx.reindex(tkey, t.id, k.ticket_index_base)
        elif c.ticket_change is not None:
            ch = c.ticket_change
            tkey = k.ticket(ch.id)
            row = rows["ticket"]
            if row[0] is None or int(row[0]) != ch.expect_version:
                raise Conflict(f"ticket {ch.id} changed since the snapshot")
            tx.hash_is(tkey, "version", str(ch.expect_version))
            ticket_origin, ticket_contact = _s(row[3]), _s(row[4])
            fields = {"updated_at": now}
            if ch.status:
                fields["status"] = ch.status
                if ch.status == "open":
                    tx.op("HDEL", tkey, "solved_at")
            if ch.last_message_at:
                lma = max(int(row[5] or 0), ms(ch.last_message_at))
                fields["last_message_at"] = lma
                tx.op("ZADD", k.contact_tickets(ticket_contact), lma, ch.id)
            if ch.add_channel:
                fields["channels"] = _j(sorted(set(_dec.decode(row[1])) | {ch.add_channel}))
            if ch.add_tags:
                fields["tags"] = _j(sorted(set(_dec.decode(row[2])) | set(ch.add_tags)))
            for col, value in (("priority", ch.priority), ("team", ch.team), ("assignee", ch.assignee)):
                if value is not None:
                    fields[col] = value
            if ch.skills is not None:
                fields["skills"] = _j(ch.skills)
            if ch.reply_to is not None:
                fields["reply_to"] = _j(ch.reply_to)
            tx.hset(tkey, fields)
            tx.op("HINCRBY", tkey, "version", 1)
            tx.reindex(tkey, ch.id, k.ticket_index_base)
            if ch.responded_at is not None:
                tx.op("HSETNX", tkey, "first_response_at", ms(ch.responded_at))

        for e in c.timeline:  # their seqs drawn in the program
            self._add_entry(tx, e, None, ticket_origin if e.ticket_id == c.ticket_id else origin,
                            journal_id=c.journal_id)
        if c.edit is not None:
            ekey = k.timeline_entry(c.edit.timeline_id)
            raw = rows["edit"]
            if raw is not None:
                tx.value_is(ekey, _s(raw))
                rec = _dec.decode(raw)
                e = rec["e"]
                data = e.get("data") or {}
                if c.edit.call is not None:
                    data["call"] = merge_call(data.get("call"), c.edit.call)
                    data.setdefault("call_reports", []).append({"journal_id": c.journal_id, "call": c.edit.call})
                    e["text"] = call_text(data["call"])
                else:
                    data.setdefault("edits", []).append({"previous_text": e.get("text"),
                                                         "edited_at": c.edit.edited_at.isoformat(),
                                                         "journal_id": c.journal_id})
                    e["text"] = c.edit.text
                e["data"] = data
                e["edited_at"] = c.edit.edited_at
                tx.op("SET", ekey, _j(rec))
        if c.ticket_id:
            for ref in c.thread_refs:
                tx.op("SET", k.thread_ref(ref), c.ticket_id, "NX")
            for ident, src in c.participants:
                tx.op("HSETNX", k.ticket_participants(c.ticket_id), _j([ident.kind, ident.value]),
                      _j({"source": src, "added_at": now}))
        for ev in c.outbox:
            self._add_outbox(tx, ev.topic, ev.ticket_id, ev.payload, now)
        if c.new_ticket is not None or c.ticket_change is not None:  # the assignment sweep's index
            tx.op("ZADD", k.tickets_changed, now, c.new_ticket.id if c.new_ticket is not None else c.ticket_change.id)
        tx.op("SET", k.message_key(*c.message_key),
              _j({"j": c.journal_id, "t": c.message_entry_id, "k": c.ticket_id, "c": cid}))
        if c.final:
            self._journal_done(tx, c, seq, sid, "processed", now, c.ticket_id, cid)
        number = await self._run(tx)
        if number is None:  # not drawn now: the number read before (a ticket's number never changes)
            number = int(rows["number"]) if rows.get("number") is not None else await self._number_of(c.ticket_id)
        return CommitResult("processed", cid, c.ticket_id, number)

    def _add_entry(self, tx: Tx, e: TimelineEntry, seq: int | None, origin: str, journal_id: str | None = None) -> None:
        """The entry's record and indexes; ``seq`` None: drawn from the timeline
        counter inside the program (no round trip of its own; ``migrate`` gives
        the seq it copies)."""
        k = self.k
        at = ms(e.at)
        if seq is None:
            i = tx.draw_seq(k.timeline_seq)
            member: Any = {"$": "QM", "i": i, "m": e.id}
            tx.op("SET", k.timeline_entry(e.id), {"$": "QJ", "i": i, "j": _j({"e": e, "o": origin})[:-1] + ',"s":'})
            tx.op("ZADD", k.timeline_all, {"$": "Q", "i": i}, e.id)
        else:
            member = f"{seq:016d}:{e.id}"
            tx.op("SET", k.timeline_entry(e.id), _j({"e": e, "o": origin, "s": seq}))
            tx.op("ZADD", k.timeline_all, seq, e.id)
        tx.op("ZADD", k.contact_timeline(e.contact_id), at, member)
        if e.ticket_id:
            tx.op("ZADD", k.ticket_timeline(e.ticket_id), at, member)
        text_hash = e.data.get("text_hash") if e.kind == "message_in" else None
        if text_hash:
            tx.op("ZADD", k.contact_text(e.contact_id, text_hash), at,
                  _j({"j": e.journal_id or journal_id, "e": e.id, "t": e.ticket_id, "c": e.contact_id}))
        tx.op("HINCRBY", k.counts, "timeline", 1)

    def _add_outbox(self, tx: Tx, topic: str, ticket_id: str | None, payload: dict, now: int) -> None:
        if topic != REPLY_TOPIC:  # an event: the webhooks' stream, with its snapshots (redis_webhooks.py)
            self._event_add(tx, topic, ticket_id, payload, now)
            return
        oid = new_id()
        tx.hset(self.k.outbox_item(oid), {"topic": topic, "ticket_id": ticket_id, "payload": _j(payload),
                                          "created_at": now, "next_at": now, "attempts": 0})
        tx.op("ZADD", self.k.outbox_due(topic), now, oid)
        tx.op("HINCRBY", self.k.counts, "outbox", 1)

    # ------------------------------------------------------------ reads

    async def get_ticket(self, ticket_id: str) -> Ticket | None:
        return ticket_from_row(ticket_id, await self._call(self.r.hmget(self.k.ticket(ticket_id), *_TICKET_FIELDS)))

    async def get_ticket_by_number(self, number: int) -> Ticket | None:
        tid = await self._call(self.r.hget(self.k.ticket_numbers, str(number)))
        return await self.get_ticket(_s(tid)) if tid else None

    async def tickets_of(self, contact_id: str) -> list[Ticket]:
        ids = await self._call(self.r.zrange(self.k.contact_tickets(contact_id), 0, -1))
        tickets = [t for t in [await self.get_ticket(_s(i)) for i in ids] if t is not None]
        return sorted(tickets, key=lambda t: t.created_at)

    async def get_contact(self, contact_id: str) -> Contact | None:
        k = self.k
        r = await self._call(self.r.hmget(k.contact(contact_id), *_CONTACT_FIELDS))
        if r[8] is None:
            return None
        f = dict(zip(_CONTACT_FIELDS, r))
        idents = sorted(Identity(*_dec.decode(m)) for m in await self._call(self.r.smembers(k.contact_identities(contact_id))))
        return Contact(id=contact_id, name=_s(f["name"]), tier=_s(f["tier"]),
                       tags=_dec.decode(f["tags"]) if f["tags"] else [],
                       attributes=_dec.decode(f["attributes"]) if f["attributes"] else {},
                       flags=_dec.decode(f["flags"]) if f["flags"] else [], merged_into=_s(f["merged_into"]),
                       identities=idents, created_at=dt(f["created_at"]), updated_at=dt(f["updated_at"]))

    async def _resolve_merged(self, contact_id: str) -> str:
        seen: set[str] = set()
        while contact_id not in seen:
            seen.add(contact_id)
            nxt = await self._call(self.r.hget(self.k.contact(contact_id), "merged_into"))
            if not nxt:
                break
            contact_id = _s(nxt)
        return contact_id

    async def timeline(self, *, contact_id: str | None = None, ticket_id: str | None = None,
                       cursor: str | None = None, limit: int = 50) -> Page:
        """Keyset pages over the contact's (or ticket's) sorted set, scored by
        ``at`` with ``<seq>:<id>`` members: O(log n + page) per page."""
        if contact_id is not None:
            key = self.k.contact_timeline(await self._resolve_merged(contact_id))
        else:
            key = self.k.ticket_timeline(ticket_id or "")
        at, seq = 0, -1
        if cursor:
            try:
                at_s, seq_s = cursor.split(".", 1)
                at, seq = int(at_s), int(seq_s)
                if not (0 <= at < 2**63 and 0 <= seq < 2**63):
                    raise ValueError(cursor)
            except ValueError:
                raise StoreError(f"bad cursor {cursor[:64]!r}") from None
        picked: list[tuple[str, int, int]] = []
        offset = 0
        chunk = limit + 1 + 32
        while len(picked) < limit + 1:
            rows = await self._call(self.r.zrangebyscore(key, at, "+inf", start=offset, num=chunk, withscores=True))
            for member, score in rows:
                s, eid = _s(member).split(":", 1)
                if int(score) == at and int(s) <= seq:
                    continue
                picked.append((eid, int(score), int(s)))
            if len(rows) < chunk:
                break
            offset += len(rows)
        raws = await self._call(self.r.mget([self.k.timeline_entry(e) for e, _, _ in picked[:limit]])) if picked else []
        items = [_entry_dec.decode(_j(_dec.decode(raw)["e"])) for raw in raws if raw is not None]
        nxt = None
        if len(picked) > limit:
            _, last_at, last_seq = picked[limit - 1]
            nxt = f"{last_at}.{last_seq}"
        return Page(items=items, next_cursor=nxt)

    # ------------------------------------------------------------ ticket participants

    async def ticket_participant_add(self, ticket_id: str, identity: Identity, source: str) -> None:
        await self._call(self.r.hsetnx(self.k.ticket_participants(ticket_id), _j([identity.kind, identity.value]),
                                       _j({"source": source, "added_at": ms(self.clock())})))

    async def ticket_participants(self, ticket_id: str) -> list[dict]:
        rows = await self._call(self.r.hgetall(self.k.ticket_participants(ticket_id)))
        out = []
        for m, v in rows.items():
            kind, value = _dec.decode(m)
            meta = _dec.decode(v)
            out.append({"kind": kind, "value": value, "source": meta["source"],
                        "added_at": dt(meta["added_at"]).isoformat()})
        return sorted(out, key=lambda p: (p["added_at"], p["value"]))

    # ------------------------------------------------------------ contacts

    async def _audit(self, tx: Tx, now: int, actor: str, action: str, subject: str, data: dict) -> None:
        tx.op("XADD", self.k.audit, "*", "at", now, "actor", actor, "action", action, "subject", subject,
              "data", _j(data))
        if action.startswith("contact."):
            await self._audit_contacts(tx, now, actor, action, subject, data)

    async def _moved_entries(self, members: list[tuple[bytes, float]]) -> list[tuple[str, float, dict]]:
        if not members:
            return []
        ids = [_s(m).split(":", 1)[1] for m, _ in members]
        raws = await self._call(self.r.mget([self.k.timeline_entry(i) for i in ids]))
        return [(_s(m), score, _dec.decode(raw)) for (m, score), raw in zip(members, raws) if raw is not None]

    async def merge_contacts(self, winner_id: str, loser_id: str, actor: str, reason: str | None = None) -> Contact:
        """One guarded program over both contacts (their versions checked):
        the loser's identities, tickets and timeline move to the winner."""
        if winner_id == loser_id:
            raise StoreError("cannot merge a contact into itself")
        await retry_conflicts(lambda: self._merge(winner_id, loser_id, actor, reason), 5,
                              f"contacts {winner_id} and {loser_id}")
        contact = await self.get_contact(winner_id)
        assert contact is not None
        return contact

    async def _merge(self, winner: str, loser: str, actor: str, reason: str | None) -> None:
        k, r = self.k, self.r
        now = ms(self.clock())
        heads = {}
        for cid in (winner, loser):
            version, merged, name = await self._call(r.hmget(k.contact(cid), "version", "merged_into", "name"))
            if version is None:
                raise NotFound(f"contact {cid} not found")
            if merged:
                raise StoreError(f"contact {cid} is already merged into {_s(merged)}")
            heads[cid] = (_s(version), _s(name))
        tx = Tx()
        for cid in (winner, loser):
            tx.hash_is(k.contact(cid), "version", heads[cid][0])
            tx.hash_is(k.contact(cid), "merged_into", None)
        idents = await self._call(r.smembers(k.contact_identities(loser)))
        tickets = await self._call(r.zrange(k.contact_tickets(loser), 0, -1, withscores=True))
        entries = await self._moved_entries(await self._call(r.zrange(k.contact_timeline(loser), 0, -1, withscores=True)))
        for m in idents:
            kind, value = _dec.decode(m)
            tx.op("HSET", k.identity(kind, value), "contact", winner)
            tx.op("SADD", k.contact_identities(winner), m)
        for tid, score in tickets:
            tx.op("HSET", k.ticket(_s(tid)), "contact_id", winner)
            tx.op("ZADD", k.contact_tickets(winner), int(score), tid)
        for member, score, rec in entries:
            rec["e"]["contact_id"] = winner
            tx.op("SET", k.timeline_entry(rec["e"]["id"]), _j(rec))
            tx.op("ZADD", k.contact_timeline(winner), int(score), member)
        for key in (k.contact_identities(loser), k.contact_tickets(loser), k.contact_timeline(loser)):
            tx.op("DEL", key)
        tx.hset(k.contact(loser), {"merged_into": winner, "updated_at": now})
        tx.op("HINCRBY", k.contact(loser), "version", 1)
        fields: dict[str, Any] = {"updated_at": now}
        if heads[winner][1] is None and heads[loser][1] is not None:
            fields["name"] = heads[loser][1]
        tx.hset(k.contact(winner), fields)
        tx.op("HINCRBY", k.contact(winner), "version", 1)
        tx.op("SADD", k.contact_merged(winner), loser)
        moved = {"identities": len(idents), "tickets": len(tickets), "timeline": len(entries)}
        data = {"winner": winner, "loser": loser, "moved": moved, "reason": reason}
        await self._audit(tx, now, actor, "contact.merge", loser, data)
        await self._note_entry(tx, TimelineEntry(
            id=new_id(), contact_id=winner, kind="identity", at=dt(now),
            text=f"contact {loser} merged into this contact by {actor}" + (f": {reason}" if reason else ""), data=data))
        self._add_outbox(tx, "contact.merged", None, data, now)
        await self._run(tx)

    async def _note_entry(self, tx: Tx, e: TimelineEntry) -> None:
        self._add_entry(tx, e, None, e.contact_id)

    async def unmerge_contact(self, contact_id: str, actor: str, reason: str | None = None) -> Contact:
        await retry_conflicts(lambda: self._unmerge(contact_id, actor, reason), 5, f"contact {contact_id}")
        contact = await self.get_contact(contact_id)
        assert contact is not None
        return contact

    async def _unmerge(self, contact_id: str, actor: str, reason: str | None) -> None:
        k, r = self.k, self.r
        now = ms(self.clock())
        version, winner_b = await self._call(r.hmget(k.contact(contact_id), "version", "merged_into"))
        if version is None:
            raise NotFound(f"contact {contact_id} not found")
        if not winner_b:
            raise StoreError(f"contact {contact_id} is not merged")
        winner = _s(winner_b)
        wversion = _s(await self._call(r.hget(k.contact(winner), "version")))
        family, frontier = {contact_id}, [contact_id]
        while frontier:
            nxt = []
            for cid in frontier:
                for m in await self._call(r.smembers(k.contact_merged(cid))):
                    m = _s(m)
                    if m not in family and _s(await self._call(r.hget(k.contact(m), "merged_into"))) == cid:
                        nxt.append(m)
            family.update(nxt)
            frontier = nxt
        tx = Tx()
        tx.hash_is(k.contact(contact_id), "version", _s(version))
        tx.hash_is(k.contact(winner), "version", wversion)
        moved = {"identities": 0, "tickets": 0, "timeline": 0}
        for m in await self._call(r.smembers(k.contact_identities(winner))):
            kind, value = _dec.decode(m)
            origin = _s(await self._call(r.hget(k.identity(kind, value), "origin")))
            if origin in family:
                tx.op("HSET", k.identity(kind, value), "contact", contact_id)
                tx.op("SREM", k.contact_identities(winner), m)
                tx.op("SADD", k.contact_identities(contact_id), m)
                moved["identities"] += 1
        for tid_b, score in await self._call(r.zrange(k.contact_tickets(winner), 0, -1, withscores=True)):
            tid = _s(tid_b)
            if _s(await self._call(r.hget(k.ticket(tid), "origin_contact_id"))) in family:
                tx.op("HSET", k.ticket(tid), "contact_id", contact_id)
                tx.op("ZREM", k.contact_tickets(winner), tid)
                tx.op("ZADD", k.contact_tickets(contact_id), int(score), tid)
                moved["tickets"] += 1
        entries = await self._moved_entries(await self._call(r.zrange(k.contact_timeline(winner), 0, -1, withscores=True)))
        for member, score, rec in entries:
            if rec["o"] in family:
                rec["e"]["contact_id"] = contact_id
                tx.op("SET", k.timeline_entry(rec["e"]["id"]), _j(rec))
                tx.op("ZREM", k.contact_timeline(winner), member)
                tx.op("ZADD", k.contact_timeline(contact_id), int(score), member)
                moved["timeline"] += 1
        tx.op("HDEL", k.contact(contact_id), "merged_into")
        tx.hset(k.contact(contact_id), {"updated_at": now})
        tx.op("HINCRBY", k.contact(contact_id), "version", 1)
        tx.hset(k.contact(winner), {"updated_at": now})
        tx.op("HINCRBY", k.contact(winner), "version", 1)
        tx.op("SREM", k.contact_merged(winner), contact_id)
        data = {"contact": contact_id, "from": winner, "moved": moved, "reason": reason}
        await self._audit(tx, now, actor, "contact.unmerge", contact_id, data)
        for cid in (contact_id, winner):
            await self._note_entry(tx, TimelineEntry(
                id=new_id(), contact_id=cid, kind="identity", at=dt(now),
                text=f"contact {contact_id} unmerged from {winner} by {actor}" + (f": {reason}" if reason else ""),
                data=data))
        self._add_outbox(tx, "contact.unmerged", None, data, now)
        await self._run(tx)

    # ------------------------------------------------------------ connector state

    async def state_get(self, key: str) -> str | None:
        return _s(await self._call(self.r.get(self.k.state(key))))

    async def state_set(self, key: str, value: str) -> None:
        await self._call(self.r.set(self.k.state(key), value))

    # ------------------------------------------------------------ outbox

    async def outbox_claim(self, topic: str, limit: int, lease_s: float) -> list[OutboxItem]:
        """Due rows of ``topic`` (and rows whose holder's lease ran out: a
        leased row's due time is its lease's end), leased to the caller in one
        script — two instances never get the same row while a lease holds."""
        k = self.k
        now = self.clock()
        until = now + timedelta(seconds=lease_s)
        ids = [_s(i) for i in await self._call(self.r.zrangebyscore(k.outbox_due(topic), "-inf", ms(now),
                                                                    start=0, num=limit))]
        if not ids:
            return []
        lease = new_id()
        got = await self._call(self._claim(keys=[k.outbox_due(topic)] + [k.outbox_item(i) for i in ids],
                                           args=[ms(now), ms(until), lease, *ids]))
        claimed = {_s(got[i]): int(got[i + 1]) for i in range(0, len(got), 2)}
        out = []
        for oid in ids:
            if oid not in claimed:
                continue
            ticket_id, timeline_id, payload = await self._call(
                self.r.hmget(k.outbox_item(oid), "ticket_id", "timeline_id", "payload"))
            out.append(OutboxItem(id=oid, topic=topic, ticket_id=_s(ticket_id), timeline_id=_s(timeline_id),
                                  payload=_dec.decode(payload), attempts=claimed[oid], lease=lease,
                                  lease_until=until))
        return out

    async def outbox_settle(self, item: OutboxItem, delivery: Delivery) -> bool:
        """The attempt's outcome on the row, its timeline entry's
        ``data.delivery``, the ticket's first response and a sent mail's
        thread ref, in one guarded program (the lease must still be ours);
        False when the lease was lost meanwhile."""
        k = self.k
        d = delivery
        status = {"sent": "sent", "retrying": "pending", "failed": "failed"}[d.status]
        tx = Tx()
        okey = k.outbox_item(item.id)
        tx.hash_is(okey, "lease", item.lease)
        tx.hash_is(okey, "status", "sending")
        tx.hset(okey, {"status": status, "next_at": ms(d.next_at or d.at), "error": d.reason,
                       "external_id": d.external_id, "sent_at": ms(d.at) if d.status == "sent" else None})
        tx.op("HDEL", okey, "lease")
        if status == "pending":
            tx.op("ZADD", k.outbox_due(item.topic), ms(d.next_at or d.at), item.id)
        else:
            tx.op("ZREM", k.outbox_due(item.topic), item.id)
        data = None
        if item.timeline_id:
            ekey = k.timeline_entry(item.timeline_id)
            raw = await self._call(self.r.get(ekey))
            if raw is not None:
                tx.value_is(ekey, _s(raw))
                rec = _dec.decode(raw)
                data = rec["e"].setdefault("data", {})
                data["delivery"] = msgspec.to_builtins(msgspec.structs.replace(d, thread_ref=None))
                if d.status == "sent" and d.external_id:  # reports find it; those that came first apply
                    await self._delivery_sent(tx, d.external_id, item.timeline_id, item.ticket_id, rec, ms(d.at))
                tx.op("SET", ekey, _j(rec))
        if d.status == "sent" and item.ticket_id and data is not None and \
                response_verdict(TimelineEntry("", "", "message_out", d.at, data=data)).counts:
            tkey = k.ticket(item.ticket_id)
            tx.op("HSETNX", tkey, "first_response_at", ms(d.at))
            tx.op("HSET", tkey, "updated_at", ms(d.at))
            tx.op("HINCRBY", tkey, "version", 1)
            tx.reindex(tkey, item.ticket_id, k.ticket_index_base)
            tx.op("ZADD", k.tickets_changed, ms(d.at), item.ticket_id)  # the sweep re-times its SLA
        if item.timeline_id and d.status != "retrying":
            # the send's outcome (sent or failed) for the webhooks, in the same script (redis_webhooks.py)
            self._add_outbox(tx, "message.status", item.ticket_id, {
                "timeline_id": item.timeline_id, "ticket_id": item.ticket_id, "status": d.status, "source": "send",
                "reason": d.reason, "external_id": d.external_id}, ms(d.at))
        if d.thread_ref and item.ticket_id:
            tx.op("SET", k.thread_ref(d.thread_ref.strip().strip("<>")), item.ticket_id, "NX")
        try:
            await self._run(tx)
        except Conflict:
            lease = _s(await self._call(self.r.hget(okey, "lease")))
            if lease != item.lease:
                return False
            return await self.outbox_settle(item, delivery)  # the entry changed (a report): again
        return True

    async def outbox_next_due(self, topic: str) -> datetime | None:
        first = await self._call(self.r.zrange(self.k.outbox_due(topic), 0, 0, withscores=True))
        return dt(int(first[0][1])) if first else None


    # ------------------------------------------------------------ leases

    async def lease_acquire(self, name: str, holder: str, ttl_s: float) -> bool:
        """Own ``name`` for ``ttl_s`` unless someone else does (held again by
        its holder: extended). The owner renews before it runs out; a dead
        owner's lease expires and another instance takes over."""
        return bool(await self._call(self._lease(keys=[self.k.lease(name)], args=[holder, int(ttl_s * 1000), "acquire"])))

    async def lease_renew(self, name: str, holder: str, ttl_s: float) -> bool:
        """False when the lease was lost (expired and taken): stop the work it guards."""
        return bool(await self._call(self._lease(keys=[self.k.lease(name)], args=[holder, int(ttl_s * 1000), "renew"])))

    async def lease_release(self, name: str, holder: str) -> bool:
        return bool(await self._call(self._lease(keys=[self.k.lease(name)], args=[holder, 1, "release"])))

    async def lease_holder(self, name: str) -> str | None:
        return _s(await self._call(self.r.get(self.k.lease(name))))

    # ------------------------------------------------------------ assignment: capacity

    async def assign_take(self, ticket_id: str, cls: str, candidates: list[tuple[str, int]]) -> str | None:
        """Give ``ticket_id`` to the first candidate (agent id, capacity of
        ``cls``) with room, in one script: the load check and increment and
        the ticket's holder are one step, so instances assigning at once
        never fill an agent above capacity (a candidate filled meanwhile is
        skipped). Returns the agent (the current holder if the ticket is
        already held), or None when every candidate is full."""
        if not candidates:
            return None
        keys = [self.k.ticket_held(ticket_id), self.k.agents_live_seq, self.k.agents_live_v] + \
            [self.k.agent_load(a) for a, _ in candidates]
        args: list[Any] = [cls]
        for agent, cap in candidates:
            args += [agent, cap]
        kind, value = await self._call(self._take(keys=keys, args=args))
        if kind == b"held":
            return _s(value).split(" ", 1)[0]
        return _s(value) if kind == b"took" else None

    async def assign_release(self, ticket_id: str) -> str | None:
        """Free the ticket's capacity (idempotent); the agent that held it."""
        held = _s(await self._call(self.r.get(self.k.ticket_held(ticket_id))))
        if not held:
            return None
        agent = held.split(" ", 1)[0]
        done = await self._call(self._release(keys=[self.k.ticket_held(ticket_id), self.k.agent_load(agent),
                                                    self.k.agents_live_seq, self.k.agents_live_v], args=[held]))
        return agent if done else None

    async def agent_load(self, agent_id: str) -> dict[str, int]:
        rows = await self._call(self.r.hgetall(self.k.agent_load(agent_id)))
        return {_s(c): int(n) for c, n in rows.items() if int(n)}


async def asyncio_gather(*aws: Any) -> list:
    import asyncio

    return list(await asyncio.gather(*aws))


