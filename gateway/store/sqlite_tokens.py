"""SQLite operations for per-agent API tokens (``gateway/auth.py`` uses them).

A token is ``og_`` + ``secrets.token_urlsafe(32)`` (256 random bits); the
store keeps only its SHA-256 (a slow password hash per request would cap the
API at tens of requests per second; 256 random bits need no stretching) and
its first characters, so a list can name it without revealing it.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import msgspec

from gateway.store.base import NotFound, StoreError
from routing.model import new_id

if TYPE_CHECKING:
    from gateway.store.sqlite import SQLiteStore

#: Part of schema migration 4 (see ``sqlite_tickets.MIGRATION``).
MIGRATION = """
    CREATE TABLE api_tokens (
        id           TEXT PRIMARY KEY,
        hash         TEXT NOT NULL UNIQUE,   -- sha256 hex of the whole token
        prefix       TEXT NOT NULL,          -- its first 10 characters, to recognise it in a list
        agent_id     TEXT NOT NULL,
        role         TEXT NOT NULL,          -- agent | lead | admin
        note         TEXT,
        created_by   TEXT NOT NULL,
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER,
        revoked_at   INTEGER,
        last_used_at INTEGER
    );
    CREATE INDEX api_tokens_agent ON api_tokens (agent_id);
"""

TOKEN_PREFIX = "og_"
ROLES = ("agent", "lead", "admin")


class TokenInfo(msgspec.Struct, omit_defaults=True):
    """A token as listed: never the token itself."""

    id: str
    prefix: str
    agent_id: str
    role: str
    created_by: str
    created_at: datetime
    note: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _ms(d: datetime | None) -> int | None:
    return None if d is None else int(d.timestamp() * 1000)


def _dt(v: int | None) -> datetime | None:
    return None if v is None else datetime.fromtimestamp(v / 1000, tz=timezone.utc)


_COLS = "id, prefix, agent_id, role, created_by, created_at, note, expires_at, revoked_at, last_used_at"


def _info(r: tuple) -> TokenInfo:
    return TokenInfo(id=r[0], prefix=r[1], agent_id=r[2], role=r[3], created_by=r[4], created_at=_dt(r[5]),
                     note=r[6], expires_at=_dt(r[7]), revoked_at=_dt(r[8]), last_used_at=_dt(r[9]))


def _create(conn: sqlite3.Connection, token_id: str, token: str, agent_id: str, role: str, created_by: str,
            now: int, expires_at: int | None, note: str | None) -> TokenInfo:
    if role not in ROLES:
        raise StoreError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    conn.execute(f"INSERT INTO api_tokens ({_COLS}, hash) VALUES (?,?,?,?,?,?,?,?,NULL,NULL,?)",
                 (token_id, token[:10], agent_id, role, created_by, now, note, expires_at, hash_token(token)))
    conn.execute("INSERT INTO audit (at, actor, action, subject, data) VALUES (?,?,?,?,?)",
                 (now, created_by, "token.create", token_id,
                  msgspec.json.encode({"agent_id": agent_id, "role": role, "expires_at": expires_at}).decode()))
    return _info(conn.execute(f"SELECT {_COLS} FROM api_tokens WHERE id = ?", (token_id,)).fetchone())


def _revoke(conn: sqlite3.Connection, token_id: str, actor: str, now: int) -> TokenInfo:
    r = conn.execute("SELECT revoked_at FROM api_tokens WHERE id = ? OR prefix = ?", (token_id, token_id)).fetchall()
    if not r:
        raise NotFound(f"no token {token_id}")
    if len(r) > 1:
        raise StoreError(f"{token_id} names more than one token: use its id")
    conn.execute("UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ? OR prefix = ?",
                 (now, token_id, token_id))
    row = conn.execute(f"SELECT {_COLS} FROM api_tokens WHERE id = ? OR prefix = ?", (token_id, token_id)).fetchone()
    conn.execute("INSERT INTO audit (at, actor, action, subject, data) VALUES (?,?,?,?,?)",
                 (now, actor, "token.revoke", row[0], "{}"))
    return _info(row)


def _lookup(conn: sqlite3.Connection, digest: str) -> TokenInfo | None:
    r = conn.execute(f"SELECT {_COLS} FROM api_tokens WHERE hash = ?", (digest,)).fetchone()
    return _info(r) if r else None


def _list(conn: sqlite3.Connection, agent_id: str | None, include_revoked: bool) -> list[TokenInfo]:
    where, args = [], []
    if agent_id:
        where.append("agent_id = ?")
        args.append(agent_id)
    if not include_revoked:
        where.append("revoked_at IS NULL")
    sql = f"SELECT {_COLS} FROM api_tokens" + (" WHERE " + " AND ".join(where) if where else "")
    return [_info(r) for r in conn.execute(sql + " ORDER BY created_at, id", args)]


def _touch(conn: sqlite3.Connection, token_id: str, at: int) -> None:
    conn.execute("UPDATE api_tokens SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?",
                 (at, token_id))


class TokensOps:
    """Mixed into SQLiteStore: API tokens."""

    async def token_create(self: "SQLiteStore", agent_id: str, role: str, *, created_by: str, now: datetime,
                           expires_at: datetime | None = None, note: str | None = None) -> tuple[str, TokenInfo]:
        """A new token for ``agent_id``: (the token — shown once, never stored —, its info)."""
        token = new_token()
        info = await self._write(_create, new_id(), token, agent_id, role, created_by, _ms(now), _ms(expires_at),
                                 note)
        return token, info

    async def token_revoke(self: "SQLiteStore", token_id: str, *, actor: str, now: datetime) -> TokenInfo:
        """Revoke by id (or by the listed prefix); revoking twice keeps the first time."""
        return await self._write(_revoke, token_id, actor, _ms(now))

    async def token_lookup(self: "SQLiteStore", token: str) -> TokenInfo | None:
        return await self._read(_lookup, hash_token(token))

    async def token_list(self: "SQLiteStore", agent_id: str | None = None, *,
                         include_revoked: bool = False) -> list[TokenInfo]:
        return await self._read(_list, agent_id, include_revoked)

    async def token_touch(self: "SQLiteStore", token_id: str, at: datetime) -> None:
        """Record a use (callers throttle this: see ``gateway/auth.py``)."""
        await self._write(_touch, token_id, _ms(at), savepoint=False)
