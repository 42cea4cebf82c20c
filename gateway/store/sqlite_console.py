"""SQLite operations of the agent console (``gateway/console/``): sign-in
sessions, canned replies, and the timeline tail the live view follows.

Sessions: the cookie holds 256 random bits; the store keeps their SHA-256,
the agent, the role, and the API token the agent signed in with (or, for the
bootstrap ``OMNIGATE_API_TOKEN``, a digest of it). A session is valid while
it has not expired or been ended, *and* its token is not revoked or expired
(checked on every request with one join), *and* — for the bootstrap token —
the daemon's configured token is still the one signed in with.

The live view's cursor is the timeline's ``seq`` (a rowid: only grows, rows
are never deleted), so "what did I miss since N" is one indexed range read.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import msgspec

from gateway.store.base import NotFound, StoreError
from gateway.store.sqlite_tickets import TimelineRow
from routing.model import new_id

if TYPE_CHECKING:
    from gateway.store.sqlite import SQLiteStore

#: Schema migration 10: console sessions and canned replies.
MIGRATION = """
    CREATE TABLE console_sessions (
        hash        TEXT PRIMARY KEY,       -- sha256 hex of the cookie value
        agent_id    TEXT NOT NULL,
        role        TEXT NOT NULL,
        token_id    TEXT,                   -- api_tokens.id; NULL: the bootstrap token
        bootstrap   TEXT,                   -- sha256 of the bootstrap token signed in with
        csrf        TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        ended_at    INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX console_sessions_agent ON console_sessions (agent_id);

    CREATE TABLE canned_replies (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        text        TEXT NOT NULL,
        language    TEXT,
        created_by  TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
"""


def _ms(d: datetime) -> int:
    return int(d.timestamp() * 1000)


def _dt(v: int | None) -> datetime | None:
    return None if v is None else datetime.fromtimestamp(v / 1000, timezone.utc)


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class ConsoleSession(msgspec.Struct):
    agent_id: str
    role: str
    token_id: str | None
    bootstrap: str | None
    csrf: str
    expires_at: datetime


class CannedReply(msgspec.Struct, omit_defaults=True):
    """A saved answer; ``text`` uses the rules' template syntax (``{contact_name}``, ``{ticket_number}``…)."""

    id: str
    name: str
    text: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    language: str | None = None


class ConsoleOps:
    """Mixed into :class:`gateway.store.sqlite.SQLiteStore`."""

    async def session_create(self: "SQLiteStore", agent_id: str, role: str, token_id: str | None,
                             bootstrap: str | None, now: datetime, expires_at: datetime) -> tuple[str, str]:
        """A new session: ``(cookie value, csrf token)``."""
        value, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO console_sessions (hash, agent_id, role, token_id, bootstrap, csrf, created_at, "
                         "expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (digest(value), agent_id, role, token_id, bootstrap, csrf, _ms(now), _ms(expires_at)))

        await self._write(write, savepoint=False)
        return value, csrf

    async def session_get(self: "SQLiteStore", value: str, now: datetime) -> ConsoleSession | None:
        """The live session of this cookie value, or None (unknown, ended, expired, or its token revoked/expired)."""

        def read(conn: sqlite3.Connection) -> ConsoleSession | None:
            r = conn.execute(
                "SELECT s.agent_id, s.role, s.token_id, s.bootstrap, s.csrf, s.expires_at, t.revoked_at, t.expires_at, "
                "t.id FROM console_sessions s LEFT JOIN api_tokens t ON t.id = s.token_id "
                "WHERE s.hash = ? AND s.ended_at IS NULL AND s.expires_at > ?", (digest(value), _ms(now))).fetchone()
            if r is None:
                return None
            if r[2] is not None and (r[8] is None or r[6] is not None or (r[7] is not None and r[7] <= _ms(now))):
                return None
            return ConsoleSession(agent_id=r[0], role=r[1], token_id=r[2], bootstrap=r[3], csrf=r[4],
                                  expires_at=_dt(r[5]))

        return await self._read(read)

    async def session_end(self: "SQLiteStore", value: str, now: datetime) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE console_sessions SET ended_at = ? WHERE hash = ? AND ended_at IS NULL",
                         (_ms(now), digest(value)))

        await self._write(write, savepoint=False)

    # ------------------------------------------------------------ canned replies

    async def canned_list(self: "SQLiteStore", q: str | None = None, limit: int = 50) -> list[CannedReply]:
        def read(conn: sqlite3.Connection) -> list[CannedReply]:
            sql, args = "SELECT id, name, text, language, created_by, created_at, updated_at FROM canned_replies", []
            if q:
                like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
                sql += " WHERE name LIKE ? ESCAPE '\\' OR text LIKE ? ESCAPE '\\'"
                args = [like, like]
            rows = conn.execute(sql + " ORDER BY name LIMIT ?", (*args, limit)).fetchall()
            return [_canned(r) for r in rows]

        return await self._read(read)

    async def canned_get(self: "SQLiteStore", canned_id: str) -> CannedReply | None:
        def read(conn: sqlite3.Connection) -> CannedReply | None:
            r = conn.execute("SELECT id, name, text, language, created_by, created_at, updated_at FROM canned_replies "
                             "WHERE id = ?", (canned_id,)).fetchone()
            return _canned(r) if r else None

        return await self._read(read)

    async def canned_put(self: "SQLiteStore", name: str, text: str, language: str | None, actor: str, now: datetime,
                         canned_id: str | None = None, *, keep_existing: bool = False) -> CannedReply | None:
        """Create (``canned_id`` None) or replace one; a name already taken by another is a StoreError.
        ``keep_existing``: a seed — an existing name is left as it is (returns None)."""

        def write(conn: sqlite3.Connection) -> CannedReply | None:
            other = conn.execute("SELECT id FROM canned_replies WHERE name = ?", (name,)).fetchone()
            if other is not None and other[0] != canned_id:
                if keep_existing:
                    return None
                raise StoreError(f"a canned reply named {name!r} exists")
            if canned_id is None:
                cid = new_id()
                conn.execute("INSERT INTO canned_replies (id, name, text, language, created_by, created_at, "
                             "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)", (cid, name, text, language, actor,
                                                                         _ms(now), _ms(now)))
            else:
                cid = canned_id
                n = conn.execute("UPDATE canned_replies SET name = ?, text = ?, language = ?, updated_at = ? "
                                 "WHERE id = ?", (name, text, language, _ms(now), cid)).rowcount
                if not n:
                    raise NotFound(f"no canned reply {cid}")
            conn.execute("INSERT INTO audit (at, actor, action, subject, data) VALUES (?, ?, ?, ?, ?)",
                         (_ms(now), actor, "canned_reply.put", cid, None))
            r = conn.execute("SELECT id, name, text, language, created_by, created_at, updated_at FROM canned_replies "
                             "WHERE id = ?", (cid,)).fetchone()
            return _canned(r)

        return await self._write(write)

    async def canned_delete(self: "SQLiteStore", canned_id: str, actor: str, now: datetime) -> None:
        def write(conn: sqlite3.Connection) -> None:
            if not conn.execute("DELETE FROM canned_replies WHERE id = ?", (canned_id,)).rowcount:
                raise NotFound(f"no canned reply {canned_id}")
            conn.execute("INSERT INTO audit (at, actor, action, subject, data) VALUES (?, ?, ?, ?, ?)",
                         (_ms(now), actor, "canned_reply.delete", canned_id, None))

        await self._write(write)

    async def sla_warned(self: "SQLiteStore", ticket_ids: list[str]) -> dict[str, set[str]]:
        """Per ticket, the SLA targets (``first_response``…) whose current warning has fired: a warning
        event for the target and no warning timer still pending for it (a new cycle, e.g. the next
        response after the customer wrote again, schedules a new warning timer)."""

        def read(conn: sqlite3.Connection) -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            for i in range(0, len(ticket_ids), 500):
                part = ticket_ids[i:i + 500]
                marks = ",".join("?" * len(part))
                for tid, target in conn.execute(
                        f"SELECT DISTINCT e.ticket_id, e.target FROM sla_events e WHERE e.kind = 'warning' "
                        f"AND e.ticket_id IN ({marks}) AND NOT EXISTS (SELECT 1 FROM sla_timers s WHERE "
                        f"s.ticket_id = e.ticket_id AND s.kind = 'warning' AND s.target = e.target)", part):
                    out.setdefault(tid, set()).add(target)
            return out

        return await self._read(read) if ticket_ids else {}

    # ------------------------------------------------------------ the live view's tail

    async def timeline_tail(self: "SQLiteStore", after_seq: int, limit: int = 500) -> list[TimelineRow]:
        """Timeline entries with ``seq > after_seq`` in ``seq`` order, with their ticket's facts."""
        return await self._read(_tail, after_seq, limit)

    async def timeline_last_seq(self: "SQLiteStore") -> int:
        return await self._read(lambda conn: conn.execute("SELECT coalesce(max(seq), 0) FROM timeline").fetchone()[0])


def _canned(r: tuple) -> CannedReply:
    return CannedReply(id=r[0], name=r[1], text=r[2], language=r[3], created_by=r[4], created_at=_dt(r[5]),
                       updated_at=_dt(r[6]))


def _tail(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[TimelineRow]:
    from gateway.store.sqlite_tickets import _dec
    from routing.model import TimelineEntry

    rows = conn.execute(
        "SELECT tl.id, tl.contact_id, tl.kind, tl.at, tl.ticket_id, tl.channel, tl.text, tl.data, tl.seq, "
        "t.number, t.status, t.team, t.assignee FROM timeline tl LEFT JOIN tickets t ON t.id = tl.ticket_id "
        "WHERE tl.seq > ? ORDER BY tl.seq LIMIT ?", (after_seq, limit)).fetchall()
    return [TimelineRow(entry=TimelineEntry(id=r[0], contact_id=r[1], kind=r[2], at=_dt(r[3]), ticket_id=r[4],
                                            channel=r[5], text=r[6], data=_dec.decode(r[7]) if r[7] else {}),
                        seq=r[8], ticket_number=r[9], ticket_status=r[10], ticket_team=r[11], ticket_assignee=r[12])
            for r in rows]
