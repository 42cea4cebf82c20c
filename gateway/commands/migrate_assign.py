"""``omnigate migrate`` steps for agents, presence, assignment queues, SLA
clocks and timers, and the assignment stats (the tables of
``gateway/store/sqlite_assign.py`` and ``sqlite_sla.py``), written with the
Redis backend's own layout (``gateway/store/redis_assign.py``, the
"assignment, presence, SLA" section of ``redis_keys.Keys``).

Like every step of :mod:`gateway.commands.migrate` each one *sets* what the
SQLite rows say (``DEL`` then ``HSET``/``SET``/``ZADD``, counters set, never
incremented), so a run that stopped half-way is simply run again. They run
after the ``tickets`` step (which rewrites each ticket's hash): the stats
step puts back the per-ticket fields ``st_fr``/``st_res`` the Redis stats
keep.

Mapping (SQLite → Redis):

- ``agents`` → ``agents`` (id → JSON of the fixed fields), ``agents:presence``,
  ``agents:presence_at``, ``agents:last``; ``agents:ver`` is set to a digest of
  the agents moved (every instance builds its agent cache afresh).
  ``agent_teams`` is derived from ``agents.teams`` (the Redis backend derives
  the members itself): no step.
- ``assignments`` → per ticket ``{t:<id>}:asg`` (its last assignment, held or
  released); held ones also ``{t:<id>}:held`` (``<agent> <class>``), the
  agent's ``{a:<id>}:tickets`` (scored by assigned_at) and its load
  ``{a:<id>}:load`` (class → tickets held, counted from the held rows).
- ``assign_queue`` → ``aq:items`` (JSON of the demand), ``aq`` (scored rank ×
  10^13 + queued_at: priority, then age) and ``aq:overflow`` (next overflow
  step due).
- ``sla_clocks`` → ``{t:<id>}:slaclock``; ``sla_timers`` → ``{t:<id>}:slatimers``
  and ``sla:due`` (each ticket's earliest timer): a timer due while the
  daemons were stopped fires once, on the first instance whose scheduler
  takes it; ``sla_events`` → ``sla:events`` (the fired counts by kind,
  policy, target).
- stats: ``asg:stats`` (first response and resolution count/sum/max) and the
  tickets' ``st_fr``/``st_res``, computed from the tickets as the SQLite
  backend computes its stats.
- tickets changed after the scheduler's sweep cursor → ``tchanged`` (the
  first sweep on Redis syncs them, as the next sweep on SQLite would have).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


def _j(value: Any) -> str:
    return _enc.encode(value).decode()


def _load(raw: str | None, default: Any) -> Any:
    return _dec.decode(raw) if raw else default


async def agents(c: Any) -> int:
    k, n, digest = c.k, 0, hashlib.sha256()
    for batch in c.rows("SELECT id, name, login, roles, teams, skills, capacity, presence, presence_at, "
                        "last_assigned_at, updated_at, source FROM agents ORDER BY id"):
        pipe = c.r.pipeline(transaction=False)
        for aid, name, login, roles, teams, skills, capacity, presence, presence_at, last, updated, source in batch:
            fields = _j({"name": name, "login": login, "roles": _load(roles, []), "teams": _load(teams, []),
                         "skills": _load(skills, {}), "capacity": _load(capacity, {}), "updated_at": updated,
                         "source": source})
            digest.update(f"{aid}\0{fields}\0".encode())
            pipe.hset(k.agents, aid, fields)
            pipe.hset(k.agent_presence, aid, presence)
            if presence_at is not None:
                pipe.hset(k.agent_presence_at, aid, presence_at)
            if last is not None:
                pipe.hset(k.agent_last, aid, last)
        await pipe.execute()
        n += len(batch)
    if n:
        await c.r.set(k.agents_version, f"migrated-{digest.hexdigest()[:24]}")
    return n


async def assignments(c: Any) -> int:
    k, n = c.k, 0
    loads: dict[str, dict[str, int]] = {}
    for batch in c.rows("SELECT ticket_id, agent_id, class, team, skills, assigned_at, released_at "
                        "FROM assignments ORDER BY ticket_id"):
        pipe = c.r.pipeline(transaction=False)
        for tid, agent, cls, team, skills, assigned_at, released_at in batch:
            fields = {"agent": agent, "class": cls, "team": team or "", "skills": skills or "{}",
                      "assigned_at": assigned_at}
            if released_at is not None:
                fields["released_at"] = released_at
            pipe.delete(k.ticket_assignment(tid))
            pipe.hset(k.ticket_assignment(tid), mapping=fields)
            if released_at is None:
                pipe.set(k.ticket_held(tid), f"{agent} {cls}")
                pipe.zadd(k.agent_tickets(agent), {tid: assigned_at})
                held = loads.setdefault(agent, {})
                held[cls] = held.get(cls, 0) + 1
            else:
                pipe.delete(k.ticket_held(tid))
                pipe.zrem(k.agent_tickets(agent), tid)
        await pipe.execute()
        n += len(batch)
    # each agent's load, counted from the held rows (set, not added: a re-run writes the same)
    pipe = c.r.pipeline(transaction=False)
    for (aid,) in c.db.execute("SELECT id FROM agents UNION SELECT agent_id FROM assignments"):
        pipe.delete(k.agent_load(aid))
        if loads.get(aid):
            pipe.hset(k.agent_load(aid), mapping=loads[aid])
    await pipe.execute()
    return n


async def queue(c: Any) -> int:
    from gateway.store.redis_assign import _queue_score

    k, n = c.k, 0
    for batch in c.rows("SELECT ticket_id, team, base_skills, also_teams, skills, priority, rank, class, last_agent, "
                        "queued_at, overflow_done, overflow_at, reason FROM assign_queue ORDER BY rank, queued_at, "
                        "ticket_id"):
        pipe = c.r.pipeline(transaction=False)
        for (tid, team, base, also, skills, priority, rank, cls, last_agent, queued_at, done, overflow_at,
             reason) in batch:
            item = {"team": team, "base_skills": _load(base, {}), "also_teams": _load(also, []),
                    "skills": _load(skills, {}), "priority": priority, "rank": rank, "class": cls,
                    "last_agent": last_agent, "queued_at": queued_at, "overflow_done": done,
                    "overflow_at": overflow_at, "reason": reason}
            pipe.hset(k.assign_queue_items, tid, _j(item))
            pipe.zadd(k.assign_queue, {tid: _queue_score(rank, queued_at)})
            if overflow_at is None:
                pipe.zrem(k.assign_overflow, tid)
            else:
                pipe.zadd(k.assign_overflow, {tid: overflow_at})
        await pipe.execute()
        n += len(batch)
    return n


async def sla_clocks(c: Any) -> int:
    n = 0
    for batch in c.rows("SELECT ticket_id, clock FROM sla_clocks"):
        pipe = c.r.pipeline(transaction=False)
        for tid, clock in batch:
            pipe.set(c.k.sla_clock(tid), clock)
        await pipe.execute()
        n += len(batch)
    return n


async def sla_timers(c: Any) -> int:
    k, n = c.k, 0
    timers: dict[str, dict[str, str]] = {}
    due: dict[str, int] = {}
    for batch in c.rows("SELECT ticket_id, key, kind, target, policy, since, due_at FROM sla_timers "
                        "ORDER BY ticket_id, key"):
        for tid, key, kind, target, policy, since, due_at in batch:
            timers.setdefault(tid, {})[key] = _j([kind, target, policy, since, due_at])
            due[tid] = min(due_at, due.get(tid, due_at))
            n += 1
    items = list(timers.items())
    for i in range(0, len(items), 500):
        pipe = c.r.pipeline(transaction=False)
        for tid, fields in items[i:i + 500]:
            pipe.delete(k.sla_timers(tid))
            pipe.hset(k.sla_timers(tid), mapping=fields)
            pipe.zadd(k.sla_due, {tid: due[tid]})
        await pipe.execute()
    return n


async def sla_events(c: Any) -> int:
    k, n = c.k, 0
    counts = c.db.execute("SELECT kind, policy, target, count(*) FROM sla_events GROUP BY kind, policy, target "
                          "ORDER BY kind, policy, target").fetchall()
    if counts:
        await c.r.hset(k.sla_events, mapping={_j([kind, policy, target]): m for kind, policy, target, m in counts})
        n = sum(m for *_, m in counts)
    return n


async def stats(c: Any) -> int:
    """First response and resolution of every ticket counted once, as the Redis
    backend's ``reconcile_stats`` keeps them (``asg:stats`` and the ticket's
    ``st_fr``/``st_res``); returns the tickets that counted."""
    k, n = c.k, 0
    total = {"fr": [0, 0, 0], "res": [0, 0, 0]}  # count, sum, max (ms)
    for batch in c.rows("SELECT id, created_at, first_response_at, solved_at FROM tickets "
                        "WHERE first_response_at IS NOT NULL OR solved_at IS NOT NULL"):
        pipe = c.r.pipeline(transaction=False)
        for tid, created, fr, solved in batch:
            for name, at in (("fr", fr), ("res", solved)):
                if at is None:
                    pipe.hdel(k.ticket(tid), f"st_{name}")
                    continue
                took = max(0, int(at) - int(created))
                t = total[name]
                t[0], t[1], t[2] = t[0] + 1, t[1] + took, max(t[2], took)
                pipe.hset(k.ticket(tid), f"st_{name}", took)
        await pipe.execute()
        n += len(batch)
    await c.r.delete(k.assign_stats)
    await c.r.hset(k.assign_stats, mapping={f"{name}_{what}": v for name, t in total.items()
                                            for what, v in zip(("count", "sum", "max"), t)})
    return n


async def changed(c: Any) -> int:
    """Tickets changed after the scheduler's sweep cursor (state ``assignment.sweep_cursor``,
    moved by the state step) join ``tchanged``, the Redis backend's sweep list: what
    the single node had still to sync is synced by the first sweep on Redis."""
    from gateway.assignment import _SWEEP_KEY

    row = c.db.execute("SELECT value FROM state WHERE key = ?", (_SWEEP_KEY,)).fetchone()
    at, _, last_id = (row[0] if row else "0:").partition(":")
    n = 0
    for batch in c.rows("SELECT id, updated_at FROM tickets WHERE updated_at > ? OR (updated_at = ? AND id > ?)",
                        (int(at or 0), int(at or 0), last_id)):
        await c.r.zadd(c.k.tickets_changed, {tid: updated for tid, updated in batch})
        n += len(batch)
    return n
