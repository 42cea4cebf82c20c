"""SQLite operations of the REST API: ticket lists and changes, contact
search and attributes, timeline pages both ways, mentions.

- :meth:`TicketsOps.tickets_list` is a keyset page over indexes made for it
  (migration 4): sort by priority then age, or by last update; the cursor is
  the last row's sort key, so rows inserted meanwhile neither repeat nor
  vanish from the next page.
- :meth:`TicketsOps.ticket_patch` is one assignment transaction (it goes
  through ``AssignTx`` so load, queues and SLA timers follow the ticket): the
  version check (``If-Match``), the changes, one ``update`` timeline entry
  with who and why, and the outbox events ``ticket.updated``,
  ``ticket.assigned`` and (through ``set_status``) ``ticket.status_changed``.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.store.base import NotFound, StoreError
from gateway.store.sqlite_webhooks import insert_events
from routing.model import OPEN_STATUSES, Contact, Ticket, TimelineEntry, new_id

if TYPE_CHECKING:
    from gateway.store.base import ReplyDraft
    from gateway.store.sqlite import SQLiteStore

#: ``priority`` as its sort rank; the same expression is in the indexes below
#: (SQLite uses an index on an expression only when the query repeats it).
RANK_SQL = "(CASE priority WHEN 'urgent' THEN 0 WHEN 'high' THEN 1 WHEN 'normal' THEN 2 ELSE 3 END)"

#: Schema migration 4: what ``GET /api/v1/tickets`` needs at 100k tickets, mentions, API tokens.
MIGRATION = f"""
    CREATE INDEX tickets_queue ON tickets (status, {RANK_SQL}, created_at, id);
    CREATE INDEX tickets_team_queue ON tickets (team, status, {RANK_SQL}, created_at, id);
    CREATE INDEX tickets_rank ON tickets ({RANK_SQL}, created_at, id);
    CREATE INDEX tickets_status_updated ON tickets (status, updated_at);
    CREATE INDEX tickets_assignee ON tickets (assignee, status, updated_at) WHERE assignee IS NOT NULL;

    CREATE TABLE mentions (
        timeline_id TEXT NOT NULL,
        agent_id    TEXT NOT NULL,
        ticket_id   TEXT NOT NULL,
        by          TEXT NOT NULL,
        at          INTEGER NOT NULL,
        PRIMARY KEY (timeline_id, agent_id)
    ) WITHOUT ROWID;
    CREATE INDEX mentions_agent ON mentions (agent_id, at);
    CREATE INDEX audit_subject ON audit (subject, seq);
"""

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()


class VersionMismatch(StoreError):
    """``If-Match`` named another version than the ticket has now."""

    def __init__(self, current: int):
        super().__init__(f"the ticket is at version {current}")
        self.current = current


class TicketRecord(Ticket, omit_defaults=True):
    """A ticket with its version (the ``ETag``)."""

    version: int = 1


class TicketQuery(msgspec.Struct, omit_defaults=True):
    """A ticket list's filters (all ANDed; a list means any of)."""

    status: list[str] = []
    priority: list[str] = []
    team: list[str] = []
    assignee: list[str] = []
    unassigned: bool = False
    channel: str | None = None
    tag: str | None = None
    contact_id: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    updated_after: int | None = None
    updated_before: int | None = None
    #: a breach timer due before this time (ms)
    sla_due_before: int | None = None
    sla_breached: bool | None = None
    #: an agent's or lead's view: tickets of these teams or assigned to ``visible_agent``
    visible_teams: list[str] | None = None
    visible_agent: str | None = None
    sort: str = "priority"  # priority | updated


class TimelineRow(msgspec.Struct):
    entry: TimelineEntry
    seq: int
    ticket_number: int | None
    ticket_status: str | None
    ticket_team: str | None
    ticket_assignee: str | None


class AuditRecord(msgspec.Struct, omit_defaults=True):
    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    data: dict[str, Any] = {}


class Mention(msgspec.Struct, omit_defaults=True):
    timeline_id: str
    agent_id: str
    ticket_id: str
    by: str
    at: datetime


def _dt(v: int | None) -> datetime | None:
    return None if v is None else datetime.fromtimestamp(v / 1000, tz=timezone.utc)


def _ms(d: datetime) -> int:
    return int(d.timestamp() * 1000)


def _core() -> Any:
    from gateway.store import sqlite

    return sqlite


def _record_cols() -> str:
    return _core()._TICKET_COLS + ", version"


def _record(r: tuple) -> TicketRecord:
    t = _core()._ticket(r[:-1])
    return TicketRecord(**msgspec.structs.asdict(t), version=r[-1])


# ---------------------------------------------------------------- tickets


def _ticket_get(conn: sqlite3.Connection, ticket_id: str | None, number: int | None) -> TicketRecord | None:
    where, arg = ("id = ?", ticket_id) if ticket_id is not None else ("number = ?", number)
    r = conn.execute(f"SELECT {_record_cols()} FROM tickets WHERE {where}", (arg,)).fetchone()
    return _record(r) if r else None


def _in(column: str, values: list, where: list[str], args: list) -> None:
    if len(values) == 1:
        where.append(f"{column} = ?")
    else:
        where.append(f"{column} IN ({','.join('?' * len(values))})")
    args.extend(values)


def _tickets_list(conn: sqlite3.Connection, q: TicketQuery, after: list | None, limit: int
                  ) -> tuple[list[TicketRecord], list | None]:
    where: list[str] = []
    args: list[Any] = []
    if q.status:
        _in("status", q.status, where, args)
    if q.priority:
        _in("priority", q.priority, where, args)
    if q.team:
        _in("team", q.team, where, args)
    if q.assignee:
        _in("assignee", q.assignee, where, args)
    if q.unassigned:
        where.append("assignee IS NULL")
    if q.channel:
        where.append("instr(channels, ?) > 0 AND EXISTS (SELECT 1 FROM json_each(tickets.channels) WHERE value = ?)")
        args.extend([_enc.encode(q.channel).decode(), q.channel])
    if q.tag:  # a substring test first: json_each only on the rows that may hold the tag
        where.append("instr(tags, ?) > 0 AND EXISTS (SELECT 1 FROM json_each(tickets.tags) WHERE value = ?)")
        args.extend([_enc.encode(q.tag).decode(), q.tag])
    if q.contact_id:
        where.append("contact_id = ?")
        args.append(_core()._resolve_merged(conn, q.contact_id))
    for col, op, value in (("created_at", ">=", q.created_after), ("created_at", "<", q.created_before),
                           ("updated_at", ">=", q.updated_after), ("updated_at", "<", q.updated_before)):
        if value is not None:
            where.append(f"{col} {op} ?")
            args.append(value)
    if q.sla_due_before is not None:
        where.append("EXISTS (SELECT 1 FROM sla_timers s WHERE s.ticket_id = tickets.id AND s.kind = 'breach' "
                     "AND s.due_at <= ?)")
        args.append(q.sla_due_before)
    if q.sla_breached is not None:
        cond = "coalesce(json_array_length(sla, '$.breached'), 0) > 0"
        where.append(cond if q.sla_breached else f"NOT {cond}")
    if q.visible_teams is not None:
        vis = ["assignee = ?"]
        vargs: list[Any] = [q.visible_agent or ""]
        if q.visible_teams:
            vis.append(f"team IN ({','.join('?' * len(q.visible_teams))})")
            vargs.extend(q.visible_teams)
        where.append("(" + " OR ".join(vis) + ")")
        args.extend(vargs)
    if q.sort == "updated":
        # rowid, not id, breaks ties: every index on updated_at carries it (no sort step)
        key_sql, order = "updated_at, rowid", "updated_at DESC, rowid DESC"
        if after is not None:
            where.append("(updated_at, rowid) < (?, ?)")
            args.extend(after)
    else:
        key_sql, order = f"{RANK_SQL}, created_at, id", f"{RANK_SQL}, created_at, id"
        if after is not None:
            where.append(f"({RANK_SQL}, created_at, id) > (?, ?, ?)")
            args.extend(after)
    sql = (f"SELECT {_record_cols()}, {key_sql} FROM tickets" + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY {order} LIMIT ?")
    rows = conn.execute(sql, (*args, limit + 1)).fetchall()
    nkey = 2 if q.sort == "updated" else 3
    items = [_record(r[:-nkey]) for r in rows[:limit]]
    nxt = list(rows[limit - 1][-nkey:]) if len(rows) > limit else None
    return items, nxt


def _agent_exists(conn: sqlite3.Connection, agent_id: str) -> bool:
    return conn.execute("SELECT 1 FROM agents WHERE id = ?", (agent_id,)).fetchone() is not None


def _patch(tx: Any, ticket_id: str, changes: dict[str, Any], expected: int | None, actor: str,
           reason: str | None) -> dict[str, dict]:
    """The body of :meth:`TicketsOps.ticket_patch` inside one ``AssignTx``; returns the changes made."""
    conn = tx.conn
    r = conn.execute("SELECT version, status, priority, team, assignee, tags FROM tickets WHERE id = ?",
                     (ticket_id,)).fetchone()
    if r is None:
        raise NotFound(f"ticket {ticket_id} not found")
    if expected is not None and r[0] != expected:
        raise VersionMismatch(r[0])
    before = {"status": r[1], "priority": r[2], "team": r[3], "assignee": r[4], "tags": _dec.decode(r[5])}
    done = {k: {"from": before[k], "to": v} for k, v in changes.items() if before[k] != v}
    if not done:
        return done
    moved, holder = done.get("team", {}).get("to"), before["assignee"]
    if "team" in done and "assignee" not in changes and holder is not None and (moved is None or conn.execute(
            "SELECT 1 FROM agent_teams WHERE team = ? AND agent_id = ?", (moved, holder)).fetchone() is None):
        done["assignee"] = {"from": holder, "to": None}  # not a member of the new team: it chooses again
    if "assignee" in done and done["assignee"]["to"] is not None and not _agent_exists(conn, done["assignee"]["to"]):
        raise NotFound(f"no agent {done['assignee']['to']}")
    columns: dict[str, Any] = {}
    for name in ("priority", "team"):
        if name in done:
            columns[name] = done[name]["to"]
    if "tags" in done:
        columns["tags"] = _enc.encode(done["tags"]["to"]).decode()
    if columns:
        tx.touch_ticket(ticket_id, **columns)
    tx.timeline(ticket_id, "update", change_sentence(done, actor, reason),
                {"actor": actor, "reason": reason, "changes": done})
    if "assignee" in done:
        agent = done["assignee"]["to"]
        tx.touch_ticket(ticket_id, assignee=agent)
        t = tx.ticket(ticket_id)
        if agent is not None and t.status in OPEN_STATUSES:  # a solved ticket names its agent, holds no capacity
            tx.pin(t, agent, f"assigned by {actor}" + (f": {reason}" if reason else ""))
        else:
            tx.release(ticket_id)
        tx.outbox("ticket.assigned", ticket_id, {"ticket_id": ticket_id, "agent_id": agent,
                                                 "previous": done["assignee"]["from"], "reason": "manual",
                                                 "actor": actor})
    if "status" in done:
        tx.set_status(ticket_id, done["status"]["to"], actor)  # timeline, ticket.status_changed, capacity, SLA
    else:
        t = tx.ticket(ticket_id)
        if "assignee" not in done or done["assignee"]["to"] is None:
            tx.ensure(t)  # a new team (or no assignee any more): choose again
        tx.sla_sync(tx.ticket(ticket_id))
    version = conn.execute("SELECT version FROM tickets WHERE id = ?", (ticket_id,)).fetchone()[0]
    tx.outbox("ticket.updated", ticket_id, {"ticket_id": ticket_id, "changes": done, "actor": actor,
                                            "reason": reason, "version": version})
    return done


def change_sentence(done: dict[str, dict], actor: str, reason: str | None) -> str:
    """The timeline's sentence for a ticket's changed fields (both backends)."""
    why = f"by {actor}" + (f": {reason}" if reason else "")
    return "; ".join(f"{k}: {_show(v['from'])} → {_show(v['to'])}" for k, v in done.items()) + f" ({why})"


def _show(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


# ---------------------------------------------------------------- contacts


def _contact_by_identity(conn: sqlite3.Connection, kind: str, value: str) -> Contact | None:
    r = conn.execute("SELECT contact_id FROM identities WHERE kind = ? AND value = ?", (kind, value)).fetchone()
    if r is None:
        return None
    return _core()._contact_select(conn, _core()._resolve_merged(conn, r[0]))


def _contacts_by_name(conn: sqlite3.Connection, name: str, after: str | None, limit: int) -> list[Contact]:
    pattern = "%" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    rows = conn.execute("SELECT id FROM contacts WHERE merged_into IS NULL AND name LIKE ? ESCAPE '\\' AND id > ? "
                        "ORDER BY id LIMIT ?", (pattern, after or "", limit)).fetchall()
    return [c for (cid,) in rows if (c := _core()._contact_select(conn, cid)) is not None]


def _set_attributes(conn: sqlite3.Connection, contact_id: str, changes: dict[str, str | None], actor: str,
                    now: int) -> None:
    r = conn.execute("SELECT attributes, merged_into FROM contacts WHERE id = ?", (contact_id,)).fetchone()
    if r is None:
        raise NotFound(f"contact {contact_id} not found")
    if r[1]:
        raise StoreError(f"contact {contact_id} is merged into {r[1]}: change that contact")
    attrs = _dec.decode(r[0])
    done = {k: {"from": attrs.get(k), "to": v} for k, v in changes.items() if attrs.get(k) != v}
    if not done:
        return
    for k, v in changes.items():
        if v is None:
            attrs.pop(k, None)
        else:
            attrs[k] = v
    conn.execute("UPDATE contacts SET attributes = ?, version = version + 1, updated_at = ? WHERE id = ?",
                 (_enc.encode(attrs).decode(), now, contact_id))
    # the audit and event name the keys changed, not their values (they may be sensitive)
    data = {"contact": contact_id, "keys": sorted(done)}
    conn.execute("INSERT INTO audit (at, actor, action, subject, data) VALUES (?,?,?,?,?)",
                 (now, actor, "contact.attributes", contact_id, _enc.encode(data).decode()))
    insert_events(conn, [("contact.updated", None, {**data, "actor": actor})], now)


def _audit_of(conn: sqlite3.Connection, contact_id: str, limit: int) -> list[AuditRecord]:
    rows = conn.execute(
        "SELECT seq, at, actor, action, subject, data FROM audit WHERE subject = ? UNION "
        "SELECT seq, at, actor, action, subject, data FROM audit WHERE action LIKE 'contact.%' AND "
        "(json_extract(data, '$.winner') = ? OR json_extract(data, '$.from') = ?) ORDER BY seq LIMIT ?",
        (contact_id, contact_id, contact_id, limit)).fetchall()
    return [AuditRecord(seq=r[0], at=_dt(r[1]), actor=r[2], action=r[3], subject=r[4],
                        data=_dec.decode(r[5]) if r[5] else {}) for r in rows]


# ---------------------------------------------------------------- timeline


def _timeline_rows(conn: sqlite3.Connection, contact_id: str | None, ticket_id: str | None, kinds: list[str],
                   position: tuple[int, int] | None, backward: bool, limit: int) -> list[TimelineRow]:
    """Up to ``limit`` entries after (or, ``backward``, before) ``position``
    (``(at, seq)``; None: from the start, or from the end backward), in
    ascending order either way, with their ticket's number, status, team, assignee."""
    if contact_id is not None:
        where, args = ["tl.contact_id = ?"], [_core()._resolve_merged(conn, contact_id)]
    else:
        where, args = ["tl.ticket_id = ?"], [ticket_id]
    if kinds:
        where.append(f"tl.kind IN ({','.join('?' * len(kinds))})")
        args.extend(kinds)
    if position is not None:
        where.append("(tl.at, tl.seq) < (?, ?)" if backward else "(tl.at, tl.seq) > (?, ?)")
        args.extend(position)
    order = "DESC" if backward else "ASC"
    rows = conn.execute(
        "SELECT tl.id, tl.contact_id, tl.kind, tl.at, tl.ticket_id, tl.channel, tl.journal_id, tl.external_id, "
        "tl.subject, tl.text, tl.attachments, tl.data, tl.linked_to, tl.edited_at, tl.seq, "
        "t.number, t.status, t.team, t.assignee FROM timeline tl LEFT JOIN tickets t ON t.id = tl.ticket_id "
        f"WHERE {' AND '.join(where)} ORDER BY tl.at {order}, tl.seq {order} LIMIT ?", (*args, limit)).fetchall()
    if backward:
        rows.reverse()
    att = _core()._att_dec
    return [TimelineRow(entry=TimelineEntry(
        id=r[0], contact_id=r[1], kind=r[2], at=_dt(r[3]), ticket_id=r[4], channel=r[5], journal_id=r[6],
        external_id=r[7], subject=r[8], text=r[9], attachments=att.decode(r[10]) if r[10] else [],
        data=_dec.decode(r[11]) if r[11] else {}, linked_to=r[12], edited_at=_dt(r[13]),
    ), seq=r[14], ticket_number=r[15], ticket_status=r[16], ticket_team=r[17], ticket_assignee=r[18]) for r in rows]


# ---------------------------------------------------------------- notes with mentions


def _note_with_mentions(conn: sqlite3.Connection, ticket_id: str, draft: ReplyDraft, entry_id: str, now: datetime,
                        wanted: list[str]) -> tuple[TimelineEntry, list[str]]:
    from gateway.store.sqlite_replies import _reply_create

    entry = _reply_create(conn, ticket_id, draft, entry_id, now)
    if not wanted:
        return entry, []
    marks = ",".join("?" * len(wanted))
    known = {r[0] for r in conn.execute(f"SELECT id FROM agents WHERE id IN ({marks})", wanted)}
    mentioned = [a for a in wanted if a in known]
    if not mentioned:
        return entry, []
    at = _ms(now)
    by = draft.author or "system"
    entry.data["mentions"] = mentioned
    conn.execute("UPDATE timeline SET data = ? WHERE id = ?", (_enc.encode(entry.data).decode(), entry.id))
    number = conn.execute("SELECT number FROM tickets WHERE id = ?", (ticket_id,)).fetchone()[0]
    for agent in mentioned:
        conn.execute("INSERT OR IGNORE INTO mentions (timeline_id, agent_id, ticket_id, by, at) VALUES (?,?,?,?,?)",
                     (entry.id, agent, ticket_id, by, at))
        payload = {"agent_id": agent, "by": by, "ticket_id": ticket_id, "ticket_number": number,
                   "timeline_id": entry.id}
        insert_events(conn, [("note.mentioned", ticket_id, payload)], at)
    return entry, mentioned


def _mentions_of(conn: sqlite3.Connection, agent_id: str, before: int | None, limit: int) -> list[Mention]:
    rows = conn.execute("SELECT timeline_id, agent_id, ticket_id, by, at FROM mentions WHERE agent_id = ? AND at < ? "
                        "ORDER BY at DESC LIMIT ?", (agent_id, before if before is not None else 1 << 62, limit))
    return [Mention(timeline_id=r[0], agent_id=r[1], ticket_id=r[2], by=r[3], at=_dt(r[4])) for r in rows]


class TicketsOps:
    """Mixed into SQLiteStore: the REST API's reads and changes (see the module docstring)."""

    async def ticket_record(self: "SQLiteStore", ticket_id: str | None = None, *,
                            number: int | None = None) -> TicketRecord | None:
        return await self._read(_ticket_get, ticket_id, number)

    async def tickets_list(self: "SQLiteStore", query: TicketQuery, *, after: list | None = None,
                           limit: int = 50) -> tuple[list[TicketRecord], list | None]:
        """One page and the sort key of its last row (None: no more)."""
        return await self._read(_tickets_list, query, after, limit)

    async def ticket_patch(self: "SQLiteStore", ticket_id: str, changes: dict[str, Any], *, now: datetime,
                           actor: str, reason: str | None = None, expected_version: int | None = None
                           ) -> dict[str, dict]:
        """Change status, priority, team, assignee, tags in one transaction;
        raises VersionMismatch (stale ``If-Match``), NotFound, InvalidTransition."""
        return await self._tx(now, _patch, ticket_id, changes, expected_version, actor, reason)

    async def contact_by_identity(self: "SQLiteStore", kind: str, value: str) -> Contact | None:
        """The contact holding an identity (already normalized), followed through merges."""
        return await self._read(_contact_by_identity, kind, value)

    async def contacts_by_name(self: "SQLiteStore", name: str, *, after: str | None = None,
                               limit: int = 50) -> list[Contact]:
        return await self._read(_contacts_by_name, name, after, limit)

    async def contact_set_attributes(self: "SQLiteStore", contact_id: str, changes: dict[str, str | None], *,
                                     actor: str, now: datetime) -> Contact:
        await self._write(_set_attributes, contact_id, changes, actor, _ms(now))
        contact = await self.get_contact(contact_id)
        assert contact is not None
        return contact

    async def contact_audit(self: "SQLiteStore", contact_id: str, limit: int = 200) -> list[AuditRecord]:
        return await self._read(_audit_of, contact_id, limit)

    async def timeline_rows(self: "SQLiteStore", *, contact_id: str | None = None, ticket_id: str | None = None,
                            kinds: list[str] | None = None, position: tuple[int, int] | None = None,
                            backward: bool = False, limit: int = 50) -> list[TimelineRow]:
        return await self._read(_timeline_rows, contact_id, ticket_id, kinds or [], position, backward, limit)

    async def note_create(self: "SQLiteStore", ticket_id: str, draft: ReplyDraft, now: datetime,
                          mentions: list[str]) -> tuple[TimelineEntry, list[str]]:
        """A reply or note, and (in the same transaction) its ``@agent`` mentions
        of known agents: a ``mentions`` row and a ``note.mentioned`` event each."""
        return await self._write(_note_with_mentions, ticket_id, draft, new_id(), now, mentions)

    async def mentions_of(self: "SQLiteStore", agent_id: str, *, before: datetime | None = None,
                          limit: int = 50) -> list[Mention]:
        return await self._read(_mentions_of, agent_id, None if before is None else _ms(before), limit)
