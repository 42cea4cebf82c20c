"""The REST API's store operations on Redis: ticket lists and changes,
contact search, attributes and audit, timeline pages both ways, notes with
mentions, replies and auto-replies, API tokens.

Mixed into :class:`gateway.store.redis_store.RedisStore` (``ApiOps``); the
SQLite twins are ``sqlite_tickets.py``, ``sqlite_tokens.py`` and
``sqlite_replies.py``, and the same tests run against both.

**Ticket list indexes.** Every ticket is in sorted sets named by
``Keys.ticket_index(order, dim)``: order ``p`` (priority then age: score
rank·2^42 + created_at ms, member the ticket id, so equal scores fall back
to the id as SQLite's ``ORDER BY rank, created_at, id``) and ``u`` (last
update: score updated_at ms, member ``<number:016d>:<id>``, ties broken by
the number), for each dim the ticket is in: ``all``, ``s:<status>``,
``t:<team>``, ``a:<assignee>`` or ``na``. They are kept by the write
scripts themselves: a guarded program (``Tx``) that changes a ticket calls
``tx.reindex(...)`` and the APPLY script, after its writes, reads the
ticket's hash and moves it between sets (``REINDEX_LUA``; the dims it is in
are remembered in the ticket's ``ix`` field) — so no writer computes index
changes and none can forget one half of them. The counts per status, team
and assignee are the sets' ``ZCARD`` (:meth:`ApiOps.ticket_counts`).

A list page picks the smallest of the filters' index unions (``ZCARD`` of
each; several values of one filter are merged in order), walks it from the
cursor in chunks and checks every filter on each ticket read: O(log n +
scanned), scanned ≈ page ÷ the selectivity of the other filters.

**Events.** Every change here writes its webhook/outbox events through
:meth:`ApiOps._api_events`, inside the same guarded program as the change.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.store.redis_codec import dt as _dt, j as _j, ms as _ms, retry_conflicts, s as _s
from gateway.store.base import REPLY_TOPIC, NotFound, ReplyDraft, StoreError
from gateway.store.sqlite_replies import reply_target_and_data
from gateway.store.sqlite_tickets import (AuditRecord, Mention, TicketQuery, TicketRecord, TimelineRow, VersionMismatch,
                                          change_sentence)
from gateway.store.sqlite_tokens import ROLES, TokenInfo, hash_token, new_token
from routing.model import OPEN_STATUSES, Contact, Identity, SlaState, TimelineEntry, new_id

if TYPE_CHECKING:
    from gateway.store.redis_store import RedisStore, Tx
    from gateway.store.sqlite_replies import AutoReplyLimits

_dec = msgspec.json.Decoder()
_entry_dec = msgspec.json.Decoder(TimelineEntry)

RANK = {"urgent": 0, "high": 1, "normal": 2}
RANK_SHIFT = 1 << 42  # created_at in ms stays below 2^42 until 2109; scores stay exact (< 2^53)
_RETRIES = 8

#: Lua prepended to the APPLY script (redis_store.APPLY_LUA): the ticket
#: reindex run after a program's writes, and two guard kinds of the API
#: ("n": a hash field absent or a number <= a bound; "z": fewer than N
#: members of a sorted set scored from a bound).
REINDEX_LUA = r"""
local function tix_reindex(tkey, tid, base)
  local f = redis.call('HMGET', tkey, 'number', 'status', 'priority', 'team', 'assignee', 'created_at',
                       'updated_at', 'ix', 'tags', 'channels')
  local old, want = {}, {}
  local oldu = false
  if f[8] then
    local first = true
    for line in string.gmatch(f[8], '[^\n]+') do
      if first then oldu = line; first = false else old[#old + 1] = line end
    end
  end
  if not f[1] then
    for _, d in ipairs(old) do
      redis.call('ZREM', base .. 'p:' .. d, tid)
      redis.call('ZREM', base .. 'u:' .. d, oldu)
    end
    return
  end
  want[#want + 1] = 'all'
  want[#want + 1] = 's:' .. f[2]
  if f[4] and f[4] ~= '' then want[#want + 1] = 't:' .. f[4] end
  if f[5] and f[5] ~= '' then want[#want + 1] = 'a:' .. f[5] else want[#want + 1] = 'na' end
  for _, field in ipairs({{9, 'g:'}, {10, 'c:'}}) do
    local raw = f[field[1]]
    if raw and raw ~= '' then
      local ok, list = pcall(cjson.decode, raw)
      if ok and type(list) == 'table' then
        for _, v in ipairs(list) do
          if type(v) == 'string' and not string.find(v, '\n', 1, true) then want[#want + 1] = field[2] .. v end
        end
      end
    end
  end
  local keep = {}
  for _, d in ipairs(want) do keep[d] = true end
  for _, d in ipairs(old) do
    if not keep[d] then
      redis.call('ZREM', base .. 'p:' .. d, tid)
      redis.call('ZREM', base .. 'u:' .. d, oldu)
    end
  end
  local rank = 3
  if f[3] == 'urgent' then rank = 0
  elseif f[3] == 'high' then rank = 1
  elseif f[3] == 'normal' or not f[3] then rank = 2 end
  local pscore = string.format('%.0f', rank * 4398046511104 + tonumber(f[6]))
  local umember = string.format('%016d', tonumber(f[1])) .. ':' .. tid
  local uscore = f[7] or f[6]
  for _, d in ipairs(want) do
    redis.call('ZADD', base .. 'p:' .. d, pscore, tid)
    redis.call('ZADD', base .. 'u:' .. d, uscore, umember)
  end
  redis.call('HSET', tkey, 'ix', umember .. '\n' .. table.concat(want, '\n'))
end

local function api_guard(g, k)
  if g[1] == 'n' then
    local v = redis.call('HGET', k, g[3])
    return v and tonumber(v) > tonumber(g[4])
  elseif g[1] == 'z' then
    return redis.call('ZCOUNT', k, g[3], '+inf') >= tonumber(g[4])
  end
  return false
end
"""

TOUCH_LUA = """
-- KEYS[1]: a token's hash; ARGV[1]: the use's time (ms): last_used_at only moves forward
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local cur = tonumber(redis.call('HGET', KEYS[1], 'last_used_at') or '0')
if tonumber(ARGV[1]) > cur then redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1]) end
return 1
"""


def _rs() -> Any:
    """The core Redis module (imported late: it imports this mixin)."""
    from gateway.store import redis_store

    return redis_store


#: what a list's filters read of each ticket scanned (the page itself is then read whole)
_VIEW_FIELDS = ("status", "priority", "team", "assignee", "tags", "channels", "contact_id", "created_at",
                "updated_at", "sla", "first_response_at", "number")


class _View(msgspec.Struct):
    """The fields a ticket list filters on, decoded from the hash."""

    status: str | None
    priority: str
    team: str | None
    assignee: str | None
    tags: list
    channels: list
    contact_id: str | None
    created: int
    updated: int
    sla: SlaState | None
    responded: bool
    number: int


_sla_dec = msgspec.json.Decoder(SlaState)


def _view(r: list) -> _View | None:
    if r[0] is None:
        return None
    return _View(status=_s(r[0]), priority=_s(r[1]) or "normal", team=_s(r[2]), assignee=_s(r[3]),
                 tags=_dec.decode(r[4]) if r[4] else [], channels=_dec.decode(r[5]) if r[5] else [],
                 contact_id=_s(r[6]), created=int(r[7]), updated=int(r[8] or r[7]),
                 sla=_sla_dec.decode(r[9]) if r[9] else None, responded=bool(r[10]), number=int(r[11]))


def _sla_due(t: _View) -> int | None:
    """The ticket's next breach (ms): its SLA state's earliest due target not
    met, breached or paused (SQLite reads its breach timers)."""
    s = t.sla
    if s is None or s.paused_at is not None:
        return None
    dues = []
    for name, due in (("first_response", s.first_response_due), ("next_response", s.next_response_due),
                      ("resolution", s.resolution_due)):
        if due is None or name in s.breached:
            continue
        if name == "first_response" and t.responded:
            continue
        if name == "resolution" and t.status not in OPEN_STATUSES:
            continue
        dues.append(_ms(due))
    return min(dues) if dues else None


def _matches(t: _View, q: TicketQuery, contact: str | None) -> bool:
    if q.status and t.status not in q.status:
        return False
    if q.priority and t.priority not in q.priority:
        return False
    if q.team and t.team not in q.team:
        return False
    if q.assignee and t.assignee not in q.assignee:
        return False
    if q.unassigned and t.assignee is not None:
        return False
    if q.channel and q.channel not in t.channels:
        return False
    if q.tag and q.tag not in t.tags:
        return False
    if contact is not None and t.contact_id != contact:
        return False
    if q.created_after is not None and t.created < q.created_after:
        return False
    if q.created_before is not None and t.created >= q.created_before:
        return False
    if q.updated_after is not None and t.updated < q.updated_after:
        return False
    if q.updated_before is not None and t.updated >= q.updated_before:
        return False
    if q.sla_due_before is not None:
        due = _sla_due(t)
        if due is None or due > q.sla_due_before:
            return False
    if q.sla_breached is not None and bool(t.sla is not None and t.sla.breached) != q.sla_breached:
        return False
    if q.visible_teams is not None and not (
            (t.assignee is not None and t.assignee == (q.visible_agent or "")) or t.team in q.visible_teams):
        return False
    return True


def _sort_key(tid: str, t: _View, order: str) -> tuple:
    """The walk's key of a ticket: (score, id) in priority order, (-updated, -number) in update order."""
    if order == "u":
        return (-t.updated, -t.number)
    return (RANK.get(t.priority, 3) * RANK_SHIFT + t.created, tid)


def _start_key(after: list, order: str) -> tuple:
    if order == "u":
        return (-int(after[0]), -int(after[1]))
    return (int(after[0]) * RANK_SHIFT + int(after[1]), str(after[2]))


def _cursor_of(t: TicketRecord, order: str) -> list:
    if order == "u":
        return [_ms(t.updated_at or t.created_at), t.number]
    return [RANK.get(t.priority, 3), _ms(t.created_at), t.id]


async def _patch_step(step: Any, ticket_id: str, changes: dict[str, Any], expected: int | None, actor: str,
                      reason: str | None) -> dict[str, dict]:
    """The body of :meth:`ApiOps.ticket_patch` inside one assignment step (the
    port of ``sqlite_tickets._patch`` onto ``redis_assign._Step``)."""
    t = await step.ticket(ticket_id)
    if t is None:
        raise NotFound(f"ticket {ticket_id} not found")
    version = step._trow[ticket_id]["version"]
    if expected is not None and version != expected:
        raise VersionMismatch(version)
    raw_tags = await step._x(step.r.hget(step.k.ticket(ticket_id), "tags"))  # same version: the step's guard
    before = {"status": t.status, "priority": t.priority, "team": t.team, "assignee": t.assignee,
              "tags": _dec.decode(raw_tags) if raw_tags else []}
    done = {f: {"from": before[f], "to": v} for f, v in changes.items() if before[f] != v}
    if not done:
        return done
    moved, holder = done.get("team", {}).get("to"), before["assignee"]
    if "team" in done and "assignee" not in changes and holder is not None and (
            moved is None or holder not in step.members.get(moved, ())):
        done["assignee"] = {"from": holder, "to": None}  # not a member of the new team: it chooses again
    if "assignee" in done and done["assignee"]["to"] is not None and done["assignee"]["to"] not in step.fixed:
        raise NotFound(f"no agent {done['assignee']['to']}")
    columns: dict[str, Any] = {}
    for name in ("priority", "team"):
        if name in done:
            columns[name] = done[name]["to"]
    if "tags" in done:
        columns["tags"] = _j(done["tags"]["to"])
    if columns:
        step.touch_ticket(ticket_id, **columns)
    step.timeline(ticket_id, "update", change_sentence(done, actor, reason),
                  {"actor": actor, "reason": reason, "changes": done})
    if "assignee" in done:
        agent = done["assignee"]["to"]
        step.touch_ticket(ticket_id, assignee=agent)
        t = await step.ticket(ticket_id)
        if agent is not None and t.status in OPEN_STATUSES:  # a solved ticket names its agent, holds no capacity
            await step.pin(t, agent, f"assigned by {actor}" + (f": {reason}" if reason else ""))
        else:
            await step.release(ticket_id)
        step.outbox("ticket.assigned", ticket_id, {"ticket_id": ticket_id, "agent_id": agent,
                                                   "previous": done["assignee"]["from"], "reason": "manual",
                                                   "actor": actor})
    if "status" in done:
        await step.set_status(ticket_id, done["status"]["to"], actor)  # timeline, event, capacity, SLA
    else:
        t = await step.ticket(ticket_id)
        if "assignee" not in done or done["assignee"]["to"] is None:
            await step.ensure(t)  # a new team (or no assignee any more): choose again
        await step.sla_sync(await step.ticket(ticket_id))
    meta = step._trow[ticket_id]
    step.outbox("ticket.updated", ticket_id, {"ticket_id": ticket_id, "changes": done, "actor": actor,
                                              "reason": reason, "version": meta["version"] + meta["touched"]})
    return done


class ApiOps:
    """Mixed into RedisStore: the REST API's reads and changes (see the module docstring)."""

    # ------------------------------------------------------------ plumbing

    def _api_events(self: "RedisStore", tx: "Tx", events: list[tuple[str, str | None, dict]], now: int) -> None:
        """The one place the API's changes write their events (``ticket.updated``,
        ``ticket.assigned``, ``ticket.status_changed``, ``message.created``,
        ``note.mentioned``, ``contact.updated``), inside the change's own
        program: the webhook store adds its event rows here."""
        for topic, ticket_id, payload in events:
            self._add_outbox(tx, topic, ticket_id, payload, now)

    def _ticket_write(self: "RedisStore", tx: "Tx", ticket_id: str, fields: dict[str, Any], now: int,
                      drop: tuple[str, ...] = ()) -> None:
        """The one place the API changes a ticket's hash outside an assignment step
        (replies, notes): the fields, ``updated_at``, the version, the assignment
        sweep's changed set, and the list indexes (reindexed by the script after
        its writes). ``ticket_patch`` writes through the step's ``touch_ticket``."""
        key = self.k.ticket(ticket_id)
        tx.hset(key, {**fields, "updated_at": now})
        if drop:
            tx.op("HDEL", key, *drop)
        tx.op("HINCRBY", key, "version", 1)
        tx.op("ZADD", self.k.tickets_changed, now, ticket_id)  # the assignment sweep looks at it (redis_assign.py)
        tx.reindex(key, ticket_id, self.k.ticket_index_base)

    async def _records(self: "RedisStore", ids: list[str]) -> list[TicketRecord | None]:
        rs = _rs()
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=False)
        for tid in ids:
            pipe.hmget(self.k.ticket(tid), *rs._TICKET_FIELDS)
        out: list[TicketRecord | None] = []
        for tid, row in zip(ids, await self._call(pipe.execute())):
            t = rs.ticket_from_row(tid, row)
            out.append(None if t is None else TicketRecord(**msgspec.structs.asdict(t), version=int(row[-1])))
        return out

    # ------------------------------------------------------------ tickets

    async def ticket_record(self: "RedisStore", ticket_id: str | None = None, *,
                            number: int | None = None) -> TicketRecord | None:
        if ticket_id is None:
            tid = await self._call(self.r.hget(self.k.ticket_numbers, str(number)))
            if not tid:
                return None
            ticket_id = _s(tid)
        return (await self._records([ticket_id]))[0]

    async def ticket_counts(self: "RedisStore", dims: list[str]) -> dict[str, int]:
        """Tickets per index dim (``all``, ``s:open``, ``t:billing``, ``a:<agent>``, ``na``): one ``ZCARD`` each."""
        pipe = self.r.pipeline(transaction=False)
        for d in dims:
            pipe.zcard(self.k.ticket_index("p", d))
        return dict(zip(dims, (int(n) for n in await self._call(pipe.execute()))))

    async def _views(self: "RedisStore", ids: list[str]) -> list[_View | None]:
        pipe = self.r.pipeline(transaction=False)
        for tid in ids:
            pipe.hmget(self.k.ticket(tid), *_VIEW_FIELDS)
        return [_view(r) for r in await self._call(pipe.execute())] if ids else []

    async def tickets_list(self: "RedisStore", query: TicketQuery, *, after: list | None = None,
                           limit: int = 50) -> tuple[list[TicketRecord], list | None]:
        """One page and the sort key of its last row (None: no more). Cursors:
        ``[rank, created_at, id]`` (priority) or ``[updated_at, number]`` (updated).

        The walk goes over the smallest union of index sets the filters name
        (status, team, assignee, unassigned, tag, channel, an agent's view);
        each ticket walked is checked on a projection of its hash
        (``_VIEW_FIELDS``), and only the page is read whole."""
        q = query
        order = "u" if q.sort == "updated" else "p"
        start = _start_key(after, order) if after is not None else None
        contact = await self._resolve_merged(q.contact_id) if q.contact_id else None
        picked: list[str] = []
        if contact is not None:  # a contact's tickets: few, from its own set
            ids = [_s(i) for i in await self._call(self.r.zrange(self.k.contact_tickets(contact), 0, -1))]
            keyed = sorted((_sort_key(tid, v, order), tid) for tid, v in zip(ids, await self._views(ids))
                           if v is not None and _matches(v, q, contact))
            picked = [tid for sk, tid in keyed if start is None or sk > start][:limit + 1]
        else:
            choices: list[list[str]] = []
            if q.status:
                choices.append([f"s:{s}" for s in q.status])
            if q.team:
                choices.append([f"t:{t}" for t in q.team])
            if q.assignee:
                choices.append([f"a:{a}" for a in q.assignee])
            if q.unassigned:
                choices.append(["na"])
            if q.tag:
                choices.append([f"g:{q.tag}"])
            if q.channel:
                choices.append([f"c:{q.channel}"])
            if q.visible_teams is not None:
                choices.append([f"t:{t}" for t in q.visible_teams] + [f"a:{q.visible_agent or ''}"])
            dims = ["all"]
            if choices:
                counts = await self.ticket_counts(sorted({d for c in choices for d in c}))
                dims = min(choices, key=lambda c: sum(counts[d] for d in c))
            async for batch in self._walk([self.k.ticket_index(order, d) for d in dims], order, start):
                while batch and len(picked) <= limit:  # read views only as far as the page needs
                    cut = max(50, 2 * (limit + 1 - len(picked)))
                    part, batch = batch[:cut], batch[cut:]
                    for tid, v in zip(part, await self._views(part)):
                        if v is not None and (start is None or _sort_key(tid, v, order) > start) \
                                and _matches(v, q, None):
                            picked.append(tid)
                if len(picked) > limit:
                    break
        records = [t for t in await self._records(picked[:limit + 1]) if t is not None]
        return records[:limit], (_cursor_of(records[limit - 1], order) if len(records) > limit else None)

    async def _walk(self: "RedisStore", keys: list[str], order: str, start: tuple | None):
        """Batches of ticket ids of the union of ``keys`` in the list's order
        from the cursor's score on, read in growing chunks (one pipelined
        round trip per round): a batch holds what no source can still precede
        (a k-way merge)."""
        chunk = 50
        if start is None:
            bound = "-inf" if order == "p" else "+inf"
        else:
            bound = str(start[0] if order == "p" else -start[0])
        offsets = {k: 0 for k in keys}
        last: dict[str, tuple | None] = {k: None for k in keys}
        live = list(keys)
        pool: dict[str, tuple] = {}
        seen: set[str] = set()
        while live or pool:
            if live:
                pipe = self.r.pipeline(transaction=False)
                for key in live:
                    if order == "p":
                        pipe.zrangebyscore(key, bound, "+inf", start=offsets[key], num=chunk, withscores=True)
                    else:
                        pipe.zrevrangebyscore(key, bound, "-inf", start=offsets[key], num=chunk, withscores=True)
                for key, rows in zip(list(live), await self._call(pipe.execute())):
                    offsets[key] += len(rows)
                    for member, score in rows:
                        m = _s(member)
                        if order == "p":
                            tid, sk = m, (int(score), m)
                        else:
                            num, tid = m.split(":", 1)
                            sk = (-int(score), -int(num))
                        last[key] = sk
                        if tid not in seen:
                            pool[tid] = sk
                    if len(rows) < chunk:
                        live.remove(key)
                chunk = min(chunk * 2, 800)
            frontier = min((last[k] for k in live if last[k] is not None), default=None)
            ready = sorted((sk, tid) for tid, sk in pool.items() if frontier is None or sk <= frontier)
            if not ready:
                if not live:
                    break
                continue
            for _, tid in ready:
                pool.pop(tid)
                seen.add(tid)
            yield [tid for _, tid in ready]

    async def ticket_patch(self: "RedisStore", ticket_id: str, changes: dict[str, Any], *, now: datetime,
                           actor: str, reason: str | None = None, expected_version: int | None = None
                           ) -> dict[str, dict]:
        """Change status, priority, team, assignee, tags as one assignment step
        (``redis_assign._Step``, as SQLite's runs in one ``AssignTx``): the
        version check (``If-Match``: VersionMismatch), the changes, one
        ``update`` timeline entry with who and why, capacity held or freed,
        queues and SLA timers following the ticket, and the events
        ``ticket.updated``, ``ticket.assigned``, ``ticket.status_changed`` —
        one fenced APPLY program, which also moves the ticket in the list indexes."""
        return await self._step(now, _patch_step, ticket_id, changes, expected_version, actor, reason)

    # ------------------------------------------------------------ contacts

    async def contact_by_identity(self: "RedisStore", kind: str, value: str) -> Contact | None:
        owner = await self._call(self.r.hget(self.k.identity(kind, value), "contact"))
        if not owner:
            return None
        return await self.get_contact(await self._resolve_merged(_s(owner)))

    async def contacts_by_name(self: "RedisStore", name: str, *, after: str | None = None,
                               limit: int = 50) -> list[Contact]:
        """Contacts whose name contains ``name`` (case-insensitive for ASCII, as
        SQLite's LIKE), by id: the contacts' id set walked from ``after`` until
        the page is full — O(contacts scanned), as SQLite's ``LIKE '%…%'``."""
        needle = name.lower()
        found: list[str] = []
        out: list[Contact] = []
        lo = f"({after}" if after else "-"
        while True:
            found = [_s(c) for c in await self._call(self.r.zrangebylex(self.k.contacts_by_id, lo, "+", start=0,
                                                                        num=500))]
            if not found:
                return out
            lo = f"({found[-1]}"
            pipe = self.r.pipeline(transaction=False)
            for cid in found:
                pipe.hmget(self.k.contact(cid), "name", "merged_into")
            for cid, (n, merged) in zip(found, await self._call(pipe.execute())):
                if n is None or merged or needle not in _s(n).lower():
                    continue
                c = await self.get_contact(cid)
                if c is not None:
                    out.append(c)
                    if len(out) >= limit:
                        return out
            if len(found) < 500:
                return out

    async def contact_set_attributes(self: "RedisStore", contact_id: str, changes: dict[str, str | None], *,
                                     actor: str, now: datetime) -> Contact:
        await retry_conflicts(lambda: self._set_attributes(contact_id, changes, actor, _ms(now)), _RETRIES,
                              f"contact {contact_id}")
        contact = await self.get_contact(contact_id)
        assert contact is not None
        return contact

    async def _set_attributes(self: "RedisStore", contact_id: str, changes: dict[str, str | None], actor: str,
                              now: int) -> None:
        rs = _rs()
        ckey = self.k.contact(contact_id)
        version, raw, merged = await self._call(self.r.hmget(ckey, "version", "attributes", "merged_into"))
        if version is None:
            raise NotFound(f"contact {contact_id} not found")
        if merged:
            raise StoreError(f"contact {contact_id} is merged into {_s(merged)}: change that contact")
        attrs = _dec.decode(raw) if raw else {}
        done = {a: {"from": attrs.get(a), "to": v} for a, v in changes.items() if attrs.get(a) != v}
        if not done:
            return
        for a, v in changes.items():
            if v is None:
                attrs.pop(a, None)
            else:
                attrs[a] = v
        tx = rs.Tx()
        tx.hash_is(ckey, "version", _s(version))
        tx.hset(ckey, {"attributes": _j(attrs), "updated_at": now})
        tx.op("HINCRBY", ckey, "version", 1)
        data = {"contact": contact_id, "keys": sorted(done)}  # the keys changed, not their (sensitive) values
        await self._audit(tx, now, actor, "contact.attributes", contact_id, data)
        self._api_events(tx, [("contact.updated", None, {**data, "actor": actor})], now)
        await self._run(tx)

    async def _audit_contacts(self: "RedisStore", tx: "Tx", now: int, actor: str, action: str, subject: str,
                              data: dict) -> None:
        """A contact action's audit record on the list of each contact it names
        (subject, merge winner, unmerge source): ``contact_audit`` reads one list."""
        seq = int(await self._call(self.r.incr(self.k.audit_seq)))
        rec = _j({"seq": seq, "at": now, "actor": actor, "action": action, "subject": subject, "data": data})
        for cid in dict.fromkeys(c for c in (subject, data.get("winner"), data.get("from")) if c):
            tx.op("RPUSH", self.k.contact_audit(cid), rec)

    async def contact_audit(self: "RedisStore", contact_id: str, limit: int = 200) -> list[AuditRecord]:
        rows = await self._call(self.r.lrange(self.k.contact_audit(contact_id), 0, -1))
        recs = sorted((_dec.decode(r) for r in rows), key=lambda r: r["seq"])[:limit]
        return [AuditRecord(seq=r["seq"], at=_dt(r["at"]), actor=r["actor"], action=r["action"],
                            subject=r["subject"], data=r.get("data") or {}) for r in recs]

    # ------------------------------------------------------------ timeline

    async def timeline_rows(self: "RedisStore", *, contact_id: str | None = None, ticket_id: str | None = None,
                            kinds: list[str] | None = None, position: tuple[int, int] | None = None,
                            backward: bool = False, limit: int = 50) -> list[TimelineRow]:
        """Up to ``limit`` entries after (``backward``: before) ``position``
        (``(at, seq)``), ascending either way, with their ticket's number,
        status, team and assignee: ``ZRANGEBYSCORE`` (or ``ZREVRANGEBYSCORE``)
        on the contact's or ticket's set from the position's score, in chunks
        while ``kinds`` filters — O(log n + page ÷ the kinds' share)."""
        if contact_id is not None:
            key = self.k.contact_timeline(await self._resolve_merged(contact_id))
        else:
            key = self.k.ticket_timeline(ticket_id or "")
        want = set(kinds or ())
        out: list[tuple[TimelineEntry, int]] = []
        offset, chunk = 0, max(limit + 1, 64)
        while len(out) < limit:
            if backward:
                hi = "+inf" if position is None else position[0]
                rows = await self._call(self.r.zrevrangebyscore(key, hi, "-inf", start=offset, num=chunk,
                                                                withscores=True))
            else:
                lo = "-inf" if position is None else position[0]
                rows = await self._call(self.r.zrangebyscore(key, lo, "+inf", start=offset, num=chunk,
                                                             withscores=True))
            offset += len(rows)
            cands = []
            for member, score in rows:
                s, eid = _s(member).split(":", 1)
                if position is not None:
                    pos = (int(score), int(s))
                    if (pos >= tuple(position)) if backward else (pos <= tuple(position)):
                        continue
                cands.append((eid, int(s)))
            if cands:
                raws = await self._call(self.r.mget([self.k.timeline_entry(e) for e, _ in cands]))
                for (eid, s), raw in zip(cands, raws):
                    if raw is None:
                        continue
                    e = _entry_dec.decode(_j(_dec.decode(raw)["e"]))
                    if want and e.kind not in want:
                        continue
                    out.append((e, s))
                    if len(out) >= limit:
                        break
            if len(rows) < chunk:
                break
        if backward:
            out.reverse()
        tids = list(dict.fromkeys(e.ticket_id for e, _ in out if e.ticket_id))
        info: dict[str, tuple] = {}
        if tids:
            pipe = self.r.pipeline(transaction=False)
            for tid in tids:
                pipe.hmget(self.k.ticket(tid), "number", "status", "team", "assignee")
            for tid, r in zip(tids, await self._call(pipe.execute())):
                if r[0] is not None:
                    info[tid] = (int(r[0]), _s(r[1]), _s(r[2]), _s(r[3]))
        return [TimelineRow(entry=e, seq=s, ticket_number=info.get(e.ticket_id, (None,) * 4)[0],
                            ticket_status=info.get(e.ticket_id, (None,) * 4)[1],
                            ticket_team=info.get(e.ticket_id, (None,) * 4)[2],
                            ticket_assignee=info.get(e.ticket_id, (None,) * 4)[3]) for e, s in out]

    # ------------------------------------------------------------ replies, notes, mentions

    async def reply_create(self: "RedisStore", ticket_id: str, draft: ReplyDraft) -> TimelineEntry:
        entry, _ = await self._reply(ticket_id, draft, self.clock(), None, None, [])
        assert entry is not None
        return entry

    async def note_create(self: "RedisStore", ticket_id: str, draft: ReplyDraft, now: datetime,
                          mentions: list[str]) -> tuple[TimelineEntry, list[str]]:
        """A reply or note and, in the same program, its ``@agent`` mentions of
        known agents: a member of each agent's mentions set and a
        ``note.mentioned`` event each."""
        known = [a for a in dict.fromkeys(mentions) if await self.get_agent(a) is not None] if mentions else []
        entry, mentioned = await self._reply(ticket_id, draft, now, None, None, known)
        assert entry is not None
        return entry, mentioned

    async def auto_reply(self: "RedisStore", ticket_id: str, text: str, *, subject: str | None = None,
                         in_reply_to_auto: str | None = None, to: Identity | None = None,
                         limits: "AutoReplyLimits | None" = None, now: datetime | None = None) -> TimelineEntry | None:
        """What the rules engine sends on its own (see the SQLite twin). With
        ``limits`` the per-address window and the global hourly budget are
        guards of the reply's own program, shared by every instance: None when
        either is spent."""
        draft = ReplyDraft(text=text, subject=subject, auto=True, in_reply_to_auto=in_reply_to_auto)
        entry, _ = await self._reply(ticket_id, draft, now or self.clock(), to, limits, [])
        return entry

    async def _reply(self: "RedisStore", ticket_id: str, draft: ReplyDraft, now: datetime, to: Identity | None,
                     limits: "AutoReplyLimits | None", mentioned: list[str]
                     ) -> tuple[TimelineEntry | None, list[str]]:
        return await retry_conflicts(lambda: self._reply_once(ticket_id, draft, now, to, limits, mentioned),
                                     _RETRIES, f"ticket {ticket_id}")

    async def _reply_once(self: "RedisStore", ticket_id: str, draft: ReplyDraft, now_dt: datetime,
                          to: Identity | None, limits: "AutoReplyLimits | None", mentioned: list[str]
                          ) -> tuple[TimelineEntry | None, list[str]]:
        rs = _rs()
        k = self.k
        now = _ms(now_dt)
        t = (await self._records([ticket_id]))[0]
        if t is None:
            raise NotFound(f"ticket {ticket_id} not found")
        tx = rs.Tx()
        tkey = k.ticket(ticket_id)
        tx.hash_is(tkey, "version", str(t.version))
        if limits is not None and to is not None:
            address = to.key()
            window_from = now - int(limits.window_s * 1000)
            hour_from = now - 3_600_000
            last, spent = await self._call(asyncio_pair(
                self.r.hget(k.auto_reply_last, address),
                self.r.zcount(k.auto_reply_log, f"({hour_from}", "+inf")))
            if (last is not None and int(last) > window_from) or spent >= limits.global_per_hour:
                return None, []
            tx.guards.append(["n", tx.k(k.auto_reply_last), address, str(window_from)])
            tx.guards.append(["z", tx.k(k.auto_reply_log), f"({hour_from}", str(limits.global_per_hour)])
            tx.op("HSET", k.auto_reply_last, address, now)
            tx.op("ZADD", k.auto_reply_log, now, new_id())
            tx.op("ZREMRANGEBYSCORE", k.auto_reply_log, "-inf", f"({hour_from}")
        target, data = reply_target_and_data(t.number, t.reply_to, draft, to)
        if mentioned:
            data["mentions"] = mentioned
        entry = TimelineEntry(
            id=new_id(), contact_id=t.contact_id, kind="message_out" if draft.public else "note", at=now_dt,
            ticket_id=t.id, channel=target.channel if target else None, subject=draft.subject, text=draft.text,
            attachments=list(draft.attachments), data=data,
        )
        origin = _s(await self._call(self.r.hget(tkey, "origin_contact_id"))) or t.contact_id
        self._add_entry(tx, entry, None, origin)  # its seq drawn in the program
        if draft.public:
            assert target is not None
            outbound = draft.outbound(new_id(), t, target)
            okey = k.outbox_item(outbound.id)
            tx.hset(okey, {"topic": REPLY_TOPIC, "ticket_id": t.id, "timeline_id": entry.id, "payload": _j(outbound),
                           "created_at": now, "next_at": now, "attempts": 0, "status": "pending"})
            tx.op("ZADD", k.outbox_due(REPLY_TOPIC), now, outbound.id)
            tx.op("HINCRBY", k.counts, "outbox", 1)
        fields: dict[str, Any] = {}
        if draft.public and not draft.auto and t.status == "new":  # an agent answered: work has begun
            fields["status"] = "open"
        self._ticket_write(tx, t.id, fields, now)
        events: list[tuple[str, str | None, dict]] = [
            ("message.created", t.id, {"timeline_id": entry.id, "ticket_id": t.id, "contact_id": t.contact_id,
                                       "channel": entry.channel})]
        by = draft.author or "system"
        for agent in mentioned:
            tx.op("ZADD", k.mentions(agent), now, _j({"timeline_id": entry.id, "ticket_id": t.id, "by": by}))
            events.append(("note.mentioned", t.id, {"agent_id": agent, "by": by, "ticket_id": t.id,
                                                    "ticket_number": t.number, "timeline_id": entry.id}))
        self._api_events(tx, events, now)
        await self._run(tx)
        return entry, mentioned

    async def mentions_of(self: "RedisStore", agent_id: str, *, before: datetime | None = None,
                          limit: int = 50) -> list[Mention]:
        hi = f"({_ms(before)}" if before is not None else "+inf"
        rows = await self._call(self.r.zrevrangebyscore(self.k.mentions(agent_id), hi, "-inf", start=0, num=limit,
                                                        withscores=True))
        out = []
        for member, score in rows:
            m = _dec.decode(member)
            out.append(Mention(timeline_id=m["timeline_id"], agent_id=agent_id, ticket_id=m["ticket_id"], by=m["by"],
                               at=_dt(int(score))))
        return out

    async def reply_facts(self: "RedisStore", ticket_id: str, channel: str) -> dict[str, Any]:
        """The contact's last message on ``channel`` and the replies delivered
        since: the contact's timeline read backward to that message."""
        cid = await self._call(self.r.hget(self.k.ticket(ticket_id), "contact_id"))
        if cid is None:
            return {"last_inbound_at": None, "sent_since_inbound": 0}
        key = self.k.contact_timeline(_s(cid))
        sent, last = 0, None
        offset, chunk = 0, 200
        outs: list[tuple[int, dict]] = []
        while last is None:
            rows = await self._call(self.r.zrevrangebyscore(key, "+inf", "-inf", start=offset, num=chunk,
                                                            withscores=True))
            offset += len(rows)
            if rows:
                raws = await self._call(self.r.mget([self.k.timeline_entry(_s(m).split(":", 1)[1]) for m, _ in rows]))
                for (_, score), raw in zip(rows, raws):
                    if raw is None:
                        continue
                    e = _dec.decode(raw)["e"]
                    if e.get("channel") != channel:
                        continue
                    if e["kind"] == "message_in":
                        last = int(score)
                        break
                    if e["kind"] == "message_out":
                        outs.append((int(score), e.get("data") or {}))
            if len(rows) < chunk:
                break
        sent = sum(1 for at, d in outs if at >= (last or 0) and (d.get("delivery") or {}).get("status") == "sent")
        return {"last_inbound_at": _dt(last), "sent_since_inbound": sent}

    # ------------------------------------------------------------ tokens

    async def token_create(self: "RedisStore", agent_id: str, role: str, *, created_by: str, now: datetime,
                           expires_at: datetime | None = None, note: str | None = None) -> tuple[str, TokenInfo]:
        """A new token (shown once, never stored: its SHA-256 is) in one program with its audit record."""
        if role not in ROLES:
            raise StoreError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        rs = _rs()
        k = self.k
        token, token_id = new_token(), new_id()
        at = _ms(now)
        tx = rs.Tx()
        tx.absent(k.token_hash(hash_token(token)))
        tx.hset(k.token(token_id), {"prefix": token[:10], "agent_id": agent_id, "role": role,
                                    "created_by": created_by, "created_at": at, "note": note,
                                    "expires_at": _ms(expires_at) if expires_at else None})
        tx.op("SET", k.token_hash(hash_token(token)), token_id)
        tx.op("SADD", k.token_prefix(token[:10]), token_id)
        tx.op("ZADD", k.tokens, at, token_id)
        await self._audit(tx, at, created_by, "token.create", token_id,
                          {"agent_id": agent_id, "role": role, "expires_at": _ms(expires_at) if expires_at else None})
        await self._run(tx)
        info = await self._token_info(token_id)
        assert info is not None
        return token, info

    async def _token_info(self: "RedisStore", token_id: str) -> TokenInfo | None:
        return (await self._token_infos([token_id]))[0]

    async def _token_infos(self: "RedisStore", ids: list[str]) -> list[TokenInfo | None]:
        if not ids:
            return []
        fields = ("prefix", "agent_id", "role", "created_by", "created_at", "note", "expires_at", "revoked_at",
                  "last_used_at")
        pipe = self.r.pipeline(transaction=False)
        for tid in ids:
            pipe.hmget(self.k.token(tid), *fields)
        out: list[TokenInfo | None] = []
        for tid, r in zip(ids, await self._call(pipe.execute())):
            if r[0] is None:
                out.append(None)
                continue
            out.append(TokenInfo(id=tid, prefix=_s(r[0]), agent_id=_s(r[1]), role=_s(r[2]), created_by=_s(r[3]),
                                 created_at=_dt(r[4]), note=_s(r[5]), expires_at=_dt(r[6]), revoked_at=_dt(r[7]),
                                 last_used_at=_dt(r[8])))
        return out

    async def token_revoke(self: "RedisStore", token_id: str, *, actor: str, now: datetime) -> TokenInfo:
        """Revoke by id (or by the listed prefix); revoking twice keeps the first
        time. Moves the revocation epoch, so every instance drops its token cache."""
        rs = _rs()
        k = self.k
        ids = {token_id} if await self._call(self.r.exists(k.token(token_id))) else set()
        ids |= {_s(i) for i in await self._call(self.r.smembers(k.token_prefix(token_id)))}
        if not ids:
            raise NotFound(f"no token {token_id}")
        if len(ids) > 1:
            raise StoreError(f"{token_id} names more than one token: use its id")
        (tid,) = ids
        at = _ms(now)
        tx = rs.Tx()
        tx.op("HSETNX", k.token(tid), "revoked_at", at)
        tx.op("INCR", k.token_epoch)
        await self._audit(tx, at, actor, "token.revoke", tid, {})
        await self._run(tx)
        info = await self._token_info(tid)
        assert info is not None
        return info

    async def token_import(self: "RedisStore", info: TokenInfo, digest: str) -> None:
        """A token as another store holds it (its SHA-256, never the token):
        ``omnigate migrate`` moves tokens with this. Importing it twice changes nothing."""
        rs = _rs()
        k = self.k
        tx = rs.Tx()
        tx.op("SET", k.token_hash(digest), info.id)
        tx.hset(k.token(info.id), {"prefix": info.prefix, "agent_id": info.agent_id, "role": info.role,
                                   "created_by": info.created_by, "created_at": _ms(info.created_at),
                                   "note": info.note, "expires_at": _ms(info.expires_at) if info.expires_at else None,
                                   "revoked_at": _ms(info.revoked_at) if info.revoked_at else None,
                                   "last_used_at": _ms(info.last_used_at) if info.last_used_at else None})
        tx.op("SADD", k.token_prefix(info.prefix), info.id)
        tx.op("ZADD", k.tokens, _ms(info.created_at), info.id)
        await self._run(tx)

    async def api_reindex(self: "RedisStore", batch: int = 500) -> dict[str, int]:
        """Rebuild the list indexes of every ticket and the contact id set from
        the hashes (``SCAN``): for data written by something that did not keep
        them (an import, an older version). Idempotent; safe while serving."""
        rs = _rs()
        k = self.k
        out = {"tickets": 0, "contacts": 0}
        ticket_match = k.ticket("*")
        pending: list[str] = []

        async def flush() -> None:
            pipe = self.r.pipeline(transaction=False)
            for key in pending:
                tid = key[key.index("{t:") + 3:key.rindex("}:ticket")]
                tx = rs.Tx()
                tx.reindex(key, tid, k.ticket_index_base)
                await self._apply(keys=tx.keys, args=[tx.program()], client=pipe)
            await self._call(pipe.execute())
            out["tickets"] += len(pending)
            pending.clear()

        async for key in self.r.scan_iter(match=ticket_match, count=1000):
            pending.append(_s(key))
            if len(pending) >= batch:
                await flush()
        if pending:
            await flush()
        ids: list[str] = []
        async for key in self.r.scan_iter(match=k.contact("*"), count=1000):
            key = _s(key)
            ids.append(key[key.index("{c:") + 3:key.rindex("}:contact")])
        for i in range(0, len(ids), batch):
            await self._call(self.r.zadd(k.contacts_by_id, {cid: 0 for cid in ids[i:i + batch]}))
        out["contacts"] = len(ids)
        return out

    async def token_epoch(self: "RedisStore") -> int:
        """Moves on every revocation (any instance): ``gateway.auth`` drops its token cache when it does."""
        return int(await self._call(self.r.get(self.k.token_epoch)) or 0)

    async def token_lookup(self: "RedisStore", token: str) -> TokenInfo | None:
        tid = await self._call(self.r.get(self.k.token_hash(hash_token(token))))
        return await self._token_info(_s(tid)) if tid else None

    async def token_list(self: "RedisStore", agent_id: str | None = None, *,
                         include_revoked: bool = False) -> list[TokenInfo]:
        ids = [_s(i) for i in await self._call(self.r.zrange(self.k.tokens, 0, -1))]
        return [t for t in await self._token_infos(ids) if t is not None
                and (not agent_id or t.agent_id == agent_id) and (include_revoked or t.revoked_at is None)]

    async def token_touch(self: "RedisStore", token_id: str, at: datetime) -> None:
        """Record a use (callers throttle this); last_used_at only moves forward."""
        script = getattr(self, "_touch_script", None)
        if script is None:
            script = self._touch_script = self.r.register_script(TOUCH_LUA)
        await self._call(script(keys=[self.k.token(token_id)], args=[_ms(at)]))


async def asyncio_pair(a: Any, b: Any) -> tuple:
    import asyncio

    return tuple(await asyncio.gather(a, b))

