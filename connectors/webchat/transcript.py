"""What the widget shows again after a reload, a second tab or a restart.

The journal (and, after the pipeline, the store's timeline) is the record;
this is the widget's *view* of one conversation, kept beside it in
``<data_dir>/webchat.db`` so the connector needs nothing of the gateway:
each visitor message (written after its journal append, before its ack)
and each agent reply (written by ``send``, i.e. once the reply is
journaled in the store's outbox), numbered per conversation (``seq``), plus
the read marks both ways and each conversation's last activity.

Idempotent: a frame is keyed by its ``ref`` (the visitor's client message
id, or the outbox's reply id), so a resend or a re-dispatched reply after a
crash is the same row. WAL with ``synchronous=NORMAL``: a process crash loses
nothing committed; what the power could take from the tail is rebuilt from
the journal's resend (visitor side) or does not matter (an agent reply the
widget never showed is re-sent only if the outbox had not settled it).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: ``PRAGMA user_version`` of ``webchat.db`` (its own file, not the store's migrations)
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
  conv TEXT PRIMARY KEY,            -- "webchat:<site>:<visitor>" or "external:<site>:<user>"
  site TEXT NOT NULL,
  visitor TEXT NOT NULL,            -- the latest visitor id seen on it
  name TEXT, email TEXT,            -- what the visitor left (email: where unseen replies are mailed)
  last_seq INTEGER NOT NULL DEFAULT 0,
  last_activity_ms INTEGER NOT NULL DEFAULT 0,
  visitor_read_seq INTEGER NOT NULL DEFAULT 0,   -- the visitor has seen agent frames up to here
  agent_read_seq INTEGER NOT NULL DEFAULT 0,     -- an agent has read visitor frames up to here
  ended_seq INTEGER NOT NULL DEFAULT 0,          -- last_seq when the conversation was ended
  ticket_id TEXT
);
CREATE TABLE IF NOT EXISTS frames (
  conv TEXT NOT NULL,
  seq INTEGER NOT NULL,
  ref TEXT NOT NULL,                -- client message id (visitor) or reply id (agent)
  sender TEXT NOT NULL,             -- "visitor" | "agent" | "system"
  author TEXT,
  text TEXT NOT NULL,
  files TEXT NOT NULL DEFAULT '[]',
  at_ms INTEGER NOT NULL,
  journal_id TEXT,
  emailed INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (conv, seq),
  UNIQUE (conv, ref)
);
CREATE INDEX IF NOT EXISTS frames_unseen ON frames (sender, emailed, at_ms);
"""


@dataclass
class Frame:
    seq: int
    ref: str
    sender: str
    text: str
    at_ms: int
    author: str | None = None
    files: list | None = None
    journal_id: str | None = None

    def public(self, conv: str) -> dict[str, Any]:
        """The ``message`` frame the widget and the agents get."""
        d: dict[str, Any] = {"type": "message", "conversation": conv, "seq": self.seq, "from": self.sender,
                             "text": self.text, "at": self.at_ms}
        if self.sender == "visitor":
            d["cid"] = self.ref
        if self.author:
            d["author"] = self.author
        if self.files:
            d["files"] = self.files
        if self.journal_id:
            d["journal_id"] = self.journal_id
        return d


class Transcript:
    """One SQLite file; every call is short and runs on the caller's thread."""

    def __init__(self, path: str | Path):
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} has webchat schema {version}, newer than this omnigate's {SCHEMA_VERSION}")
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def touch(self, conv: str, site: str, visitor: str, now_ms: int, *, name: str | None = None,
              email: str | None = None) -> None:
        with self._lock:
            self.db.execute(
                "INSERT INTO conversations (conv, site, visitor, name, email, last_activity_ms) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT (conv) DO UPDATE SET visitor=excluded.visitor, name=coalesce(excluded.name, name), "
                "email=coalesce(excluded.email, email)",
                (conv, site, visitor, name, email, now_ms))

    def add(self, conv: str, ref: str, sender: str, text: str, at_ms: int, *, author: str | None = None,
            files: list | None = None, journal_id: str | None = None) -> tuple[Frame, bool]:
        """Append a frame (or find the one with this ref): ``(frame, created)``."""
        with self._lock:
            row = self.db.execute("SELECT seq, ref, sender, text, at_ms, author, files, journal_id FROM frames "
                                  "WHERE conv=? AND ref=?", (conv, ref)).fetchone()
            if row is not None:
                return _frame(row), False
            self.db.execute("BEGIN IMMEDIATE")
            try:
                cur = self.db.execute("SELECT last_seq FROM conversations WHERE conv=?", (conv,)).fetchone()
                seq = (cur[0] if cur else 0) + 1
                self.db.execute("INSERT INTO frames (conv, seq, ref, sender, author, text, files, at_ms, journal_id) "
                                "VALUES (?,?,?,?,?,?,?,?,?)",
                                (conv, seq, ref, sender, author, text, json.dumps(files or []), at_ms, journal_id))
                self.db.execute("UPDATE conversations SET last_seq=?, last_activity_ms=? WHERE conv=?",
                                (seq, at_ms, conv))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return Frame(seq, ref, sender, text, at_ms, author, files, journal_id), True

    def history(self, conv: str, after: int = 0, limit: int = 200) -> list[Frame]:
        with self._lock:
            rows = self.db.execute(
                "SELECT seq, ref, sender, text, at_ms, author, files, journal_id FROM frames WHERE conv=? AND seq>? "
                "ORDER BY seq DESC LIMIT ?", (conv, after, limit)).fetchall()
        return [_frame(r) for r in reversed(rows)]

    def has_file(self, conv: str, sha: str) -> bool:
        with self._lock:
            return self.db.execute("SELECT 1 FROM frames WHERE conv=? AND files LIKE ? LIMIT 1",
                                   (conv, f'%"sha256": "{sha}"%')).fetchone() is not None

    def conversation(self, conv: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute(
                "SELECT site, visitor, name, email, last_seq, last_activity_ms, visitor_read_seq, agent_read_seq, "
                "ended_seq, ticket_id FROM conversations WHERE conv=?", (conv,)).fetchone()
        if row is None:
            return None
        keys = ("site", "visitor", "name", "email", "last_seq", "last_activity_ms", "visitor_read_seq",
                "agent_read_seq", "ended_seq", "ticket_id")
        return dict(zip(keys, row))

    def mark(self, conv: str, column: str, seq: int) -> bool:
        """Raise a read mark (never lower it); True when it moved."""
        assert column in ("visitor_read_seq", "agent_read_seq")
        with self._lock:
            cur = self.db.execute(f"UPDATE conversations SET {column}=? WHERE conv=? AND {column}<? AND last_seq>=?",
                                  (seq, conv, seq, seq))
        return cur.rowcount > 0

    def set_ticket(self, conv: str, ticket_id: str) -> None:
        with self._lock:
            self.db.execute("UPDATE conversations SET ticket_id=? WHERE conv=?", (ticket_id, conv))

    def idle(self, before_ms: int) -> list[tuple[str, str, str, int]]:
        """Conversations with frames since they last ended and no activity since ``before_ms``."""
        with self._lock:
            return self.db.execute(
                "SELECT conv, site, visitor, last_seq FROM conversations WHERE last_seq > ended_seq "
                "AND last_activity_ms < ?", (before_ms,)).fetchall()

    def ended(self, conv: str, seq: int) -> None:
        with self._lock:
            self.db.execute("UPDATE conversations SET ended_seq=max(ended_seq, ?) WHERE conv=?", (seq, conv))

    def unseen_agent_frames(self, before_ms: int) -> list[tuple[str, str, Frame]]:
        """Agent frames not read by the visitor and not mailed, older than
        ``before_ms``, of conversations that left an email: ``(conv, email, frame)``."""
        with self._lock:
            rows = self.db.execute(
                "SELECT f.conv, c.email, f.seq, f.ref, f.sender, f.text, f.at_ms, f.author, f.files, f.journal_id "
                "FROM frames f JOIN conversations c ON c.conv=f.conv WHERE f.sender='agent' AND f.emailed=0 "
                "AND f.at_ms < ? AND f.seq > c.visitor_read_seq AND c.email IS NOT NULL ORDER BY f.conv, f.seq",
                (before_ms,)).fetchall()
        return [(r[0], r[1], _frame(r[2:])) for r in rows]

    def emailed(self, conv: str, seqs: list[int]) -> None:
        with self._lock:
            self.db.executemany("UPDATE frames SET emailed=1 WHERE conv=? AND seq=?", [(conv, s) for s in seqs])


def _frame(row: tuple) -> Frame:
    seq, ref, sender, text, at_ms, author, files, journal_id = row
    return Frame(seq, ref, sender, text, at_ms, author, json.loads(files) if files else None, journal_id)


class Unavailable(Exception):
    """The shared state cannot be reached now (Redis down): try again later."""


class TranscriptStore(Protocol):
    """What the connector needs of its durable state, whichever backend keeps it:
    :class:`LocalTranscript` (``webchat.db`` beside one instance) or
    :class:`connectors.webchat.redis_transcript.RedisTranscript` (with
    ``redis_url``: every instance sees every conversation). Same meanings as
    :class:`Transcript`'s methods; ``visitor_key`` is the key visitor tokens
    are signed with (one per installation, so a token from instance A opens
    the conversation on B)."""

    shared: bool

    async def visitor_key(self) -> bytes: ...
    async def touch(self, conv: str, site: str, visitor: str, now_ms: int, *, name: str | None = None,
                    email: str | None = None) -> None: ...
    async def add(self, conv: str, ref: str, sender: str, text: str, at_ms: int, *, author: str | None = None,
                  files: list | None = None, journal_id: str | None = None) -> tuple[Frame, bool]: ...
    async def history(self, conv: str, after: int = 0, limit: int = 200) -> list[Frame]: ...
    async def has_file(self, conv: str, sha: str) -> bool: ...
    async def conversation(self, conv: str) -> dict[str, Any] | None: ...
    async def mark(self, conv: str, column: str, seq: int) -> bool: ...
    async def set_ticket(self, conv: str, ticket_id: str) -> None: ...
    async def idle(self, before_ms: int) -> list[tuple[str, str, str, int]]: ...
    async def ended(self, conv: str, seq: int) -> None: ...
    async def unseen_agent_frames(self, before_ms: int) -> list[tuple[str, str, Frame]]: ...
    async def emailed(self, conv: str, seqs: list[int]) -> None: ...
    async def close(self) -> None: ...


class LocalTranscript:
    """The single-node :class:`TranscriptStore`: :class:`Transcript` (``webchat.db``)
    and the key file ``webchat.key`` in the instance's data folder. Each call is
    one short SQLite statement, run on the loop's thread as before."""

    shared = False

    def __init__(self, data_dir: Path):
        self.db = Transcript(data_dir / "webchat.db")
        self._key_path = data_dir / "webchat.key"

    async def visitor_key(self) -> bytes:
        return _key_file(self._key_path)

    async def touch(self, *a: Any, **kw: Any) -> None:
        self.db.touch(*a, **kw)

    async def add(self, *a: Any, **kw: Any) -> tuple[Frame, bool]:
        return self.db.add(*a, **kw)

    async def history(self, conv: str, after: int = 0, limit: int = 200) -> list[Frame]:
        return self.db.history(conv, after, limit)

    async def has_file(self, conv: str, sha: str) -> bool:
        return self.db.has_file(conv, sha)

    async def conversation(self, conv: str) -> dict[str, Any] | None:
        return self.db.conversation(conv)

    async def mark(self, conv: str, column: str, seq: int) -> bool:
        return self.db.mark(conv, column, seq)

    async def set_ticket(self, conv: str, ticket_id: str) -> None:
        self.db.set_ticket(conv, ticket_id)

    async def idle(self, before_ms: int) -> list[tuple[str, str, str, int]]:
        return self.db.idle(before_ms)

    async def ended(self, conv: str, seq: int) -> None:
        self.db.ended(conv, seq)

    async def unseen_agent_frames(self, before_ms: int) -> list[tuple[str, str, Frame]]:
        return self.db.unseen_agent_frames(before_ms)

    async def emailed(self, conv: str, seqs: list[int]) -> None:
        self.db.emailed(conv, seqs)

    async def close(self) -> None:
        self.db.close()


def _key_file(path: Path) -> bytes:
    """The server's key for visitor tokens (made once, kept in the data folder)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        key = os.urandom(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_bytes()
        with os.fdopen(fd, "wb") as fh:
            fh.write(key)
        return key
