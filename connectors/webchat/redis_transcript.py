"""The webchat's durable state in Redis: every instance sees every conversation.

With ``redis_url`` a visitor's socket may land on any instance (a load
balancer without stickiness, a restart, a fail-over): the instance it lands on
must resume the conversation with its history, accept the token the visitor
got from another instance, and serve the files of the conversation. This is
:class:`connectors.webchat.transcript.TranscriptStore` over the store's Redis
connection (same prefix, key names in ``gateway/store/redis_keys.py``,
section "webchat transcripts"); files go to the shared attachment store
(gateway/store/redis_attachments.py).

Keys, one hash tag per conversation (``{wc:<conv>}``):

- ``…:c`` hash — the conversation (site, visitor, name, email, last_seq,
  last_activity_ms, visitor_read_seq, agent_read_seq, ended_seq, ticket_id);
- ``…:f`` hash — seq → the frame (JSON); ``…:r`` hash — ref → seq (a resend,
  or a reply dispatched again after a crash, is the same frame);
- ``…:files`` set — the sha256 of its files (who may download what).

Two indexes cross conversations: ``wc:active`` (conversation → last activity,
while it has frames since it last ended: the inactivity sweep) and
``wc:unmailed`` (agent frames not mailed yet: the e-mail fallback). Each
step is one Lua script over the conversation's keys and those indexes, so
it is atomic on one Redis primary; under Cluster the indexes would move to a
per-slot shard (the scripts name every key in KEYS, as Cluster requires).
Numbering (``seq``) is drawn inside the append script, so two instances
appending to one conversation at once get 1, 2 — never the same number.

The sweep (idle conversations ended, unseen replies mailed) runs on one
instance at a time under the store's lease ``webchat-sweep``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from connectors.webchat.transcript import Frame, Unavailable

ADD_LUA = """
-- KEYS: conv hash, frames, refs, files, active, unmailed
-- ARGV: conv, ref, sender, at_ms, frame json, n shas, shas...
local seq = redis.call('HGET', KEYS[3], ARGV[2])
if seq then return {0, tonumber(seq), redis.call('HGET', KEYS[2], seq)} end
seq = redis.call('HINCRBY', KEYS[1], 'last_seq', 1)
redis.call('HSET', KEYS[1], 'last_activity_ms', ARGV[4])
redis.call('HSET', KEYS[3], ARGV[2], seq)
redis.call('HSET', KEYS[2], seq, ARGV[5])
for i = 1, tonumber(ARGV[6]) do redis.call('SADD', KEYS[4], ARGV[6 + i]) end
redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1])
if ARGV[3] == 'agent' then redis.call('ZADD', KEYS[6], ARGV[4], ARGV[1] .. '\\n' .. seq) end
return {1, seq, ARGV[5]}
"""

TOUCH_LUA = """
-- KEYS: conv hash; ARGV: site, visitor, now_ms, name, email ('' = none)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'site', ARGV[1], 'last_seq', 0, 'last_activity_ms', ARGV[3],
             'visitor_read_seq', 0, 'agent_read_seq', 0, 'ended_seq', 0)
end
redis.call('HSET', KEYS[1], 'visitor', ARGV[2])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'name', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'email', ARGV[5]) end
return 1
"""

MARK_LUA = """
-- KEYS: conv hash; ARGV: column, seq — raise a read mark, never lower it, never past last_seq
local seq = tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
local last = tonumber(redis.call('HGET', KEYS[1], 'last_seq') or '-1')
if cur < 0 or cur >= seq or last < seq then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], seq)
return 1
"""

SET_IF_EXISTS_LUA = """
-- KEYS: conv hash; ARGV: field, value
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

ENDED_LUA = """
-- KEYS: conv hash, active; ARGV: conv, seq
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ended = math.max(tonumber(redis.call('HGET', KEYS[1], 'ended_seq') or '0'), tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'ended_seq', ended)
if ended >= tonumber(redis.call('HGET', KEYS[1], 'last_seq') or '0') then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 1
"""

def _guarded(fn: Any) -> Any:
    """Redis down or unreachable: :class:`Unavailable` (the visitor's transport is closed with
    "try again", the widget reconnects and resends; a download answers 503)."""
    @functools.wraps(fn)
    async def call(*a: Any, **kw: Any) -> Any:
        try:
            return await fn(*a, **kw)
        except Unavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - redis.exceptions.* and OS errors alike
            if type(exc).__module__.startswith("redis") or isinstance(exc, OSError):
                raise Unavailable(f"redis unavailable: {type(exc).__name__}: {exc}") from None
            raise
    return call


_INTS = ("last_seq", "last_activity_ms", "visitor_read_seq", "agent_read_seq", "ended_seq")
_FIELDS = ("site", "visitor", "name", "email", *_INTS, "ticket_id")


class RedisTranscript:
    """:class:`~connectors.webchat.transcript.TranscriptStore` in Redis (``r``: the
    store's asyncio client, ``k``: its :class:`~gateway.store.redis_keys.Keys`)."""

    shared = True

    def __init__(self, r: Any, k: Any):
        self.r, self.k = r, k
        self._add = r.register_script(ADD_LUA)
        self._touch = r.register_script(TOUCH_LUA)
        self._mark = r.register_script(MARK_LUA)
        self._set = r.register_script(SET_IF_EXISTS_LUA)
        self._ended = r.register_script(ENDED_LUA)

    def _c(self, conv: str, part: str = "c") -> str:
        return self.k.webchat_conv(conv, part)

    @_guarded
    async def visitor_key(self) -> bytes:
        await self.r.set(self.k.webchat_key, os.urandom(32), nx=True)
        return bytes(await self.r.get(self.k.webchat_key))

    @_guarded
    async def touch(self, conv: str, site: str, visitor: str, now_ms: int, *, name: str | None = None,
                    email: str | None = None) -> None:
        await self._touch(keys=[self._c(conv)], args=[site, visitor, now_ms, name or "", email or ""])

    @_guarded
    async def add(self, conv: str, ref: str, sender: str, text: str, at_ms: int, *, author: str | None = None,
                  files: list | None = None, journal_id: str | None = None) -> tuple[Frame, bool]:
        body = json.dumps({"ref": ref, "sender": sender, "text": text, "at_ms": at_ms, "author": author,
                           "files": files or [], "journal_id": journal_id}, ensure_ascii=False)
        shas = [f["sha256"] for f in files or () if f.get("sha256")]
        created, seq, raw = await self._add(
            keys=[self._c(conv), self._c(conv, "f"), self._c(conv, "r"), self._c(conv, "files"),
                  self.k.webchat_active, self.k.webchat_unmailed],
            args=[conv, ref, sender, at_ms, body, len(shas), *shas])
        return _frame(int(seq), raw), bool(created)

    @_guarded
    async def history(self, conv: str, after: int = 0, limit: int = 200) -> list[Frame]:
        last = int(await self.r.hget(self._c(conv), "last_seq") or 0)
        seqs = list(range(max(after + 1, last - limit + 1), last + 1))
        if not seqs:
            return []
        raws = await self.r.hmget(self._c(conv, "f"), seqs)
        return [_frame(s, raw) for s, raw in zip(seqs, raws) if raw is not None]

    @_guarded
    async def has_file(self, conv: str, sha: str) -> bool:
        return bool(await self.r.sismember(self._c(conv, "files"), sha))

    @_guarded
    async def conversation(self, conv: str) -> dict[str, Any] | None:
        raw = await self.r.hgetall(self._c(conv))
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        out: dict[str, Any] = {f: d.get(f) for f in _FIELDS}
        for f in _INTS:
            out[f] = int(out[f] or 0)
        return out

    @_guarded
    async def mark(self, conv: str, column: str, seq: int) -> bool:
        assert column in ("visitor_read_seq", "agent_read_seq")
        return bool(await self._mark(keys=[self._c(conv)], args=[column, seq]))

    @_guarded
    async def set_ticket(self, conv: str, ticket_id: str) -> None:
        await self._set(keys=[self._c(conv)], args=["ticket_id", ticket_id])

    @_guarded
    async def idle(self, before_ms: int) -> list[tuple[str, str, str, int]]:
        out = []
        for conv in await self.r.zrangebyscore(self.k.webchat_active, "-inf", f"({before_ms}"):
            conv = conv.decode()
            site, visitor, last_seq, ended_seq = await self.r.hmget(self._c(conv), "site", "visitor", "last_seq",
                                                                    "ended_seq")
            if site is None or int(last_seq or 0) <= int(ended_seq or 0):
                await self.r.zrem(self.k.webchat_active, conv)
                continue
            out.append((conv, site.decode(), (visitor or b"").decode(), int(last_seq)))
        return out

    @_guarded
    async def ended(self, conv: str, seq: int) -> None:
        await self._ended(keys=[self._c(conv), self.k.webchat_active], args=[conv, seq])

    @_guarded
    async def unseen_agent_frames(self, before_ms: int) -> list[tuple[str, str, Frame]]:
        """Agent frames older than ``before_ms``, not mailed, not read, of conversations that left an
        email. Frames the visitor has read are dropped from the index (they will never be mailed)."""
        by_conv: dict[str, list[int]] = {}
        for member in await self.r.zrangebyscore(self.k.webchat_unmailed, "-inf", f"({before_ms}"):
            conv, _, seq = member.decode().rpartition("\n")
            by_conv.setdefault(conv, []).append(int(seq))
        out = []
        for conv, seqs in sorted(by_conv.items()):
            email, read = await self.r.hmget(self._c(conv), "email", "visitor_read_seq")
            seen = [s for s in seqs if s <= int(read or 0)]
            if seen:
                await self.r.zrem(self.k.webchat_unmailed, *(f"{conv}\n{s}" for s in seen))
            todo = sorted(s for s in seqs if s > int(read or 0))
            if email is None or not todo:
                continue
            raws = await self.r.hmget(self._c(conv, "f"), todo)
            out += [(conv, email.decode(), _frame(s, raw)) for s, raw in zip(todo, raws) if raw is not None]
        return out

    @_guarded
    async def emailed(self, conv: str, seqs: list[int]) -> None:
        if seqs:
            await self.r.zrem(self.k.webchat_unmailed, *(f"{conv}\n{s}" for s in seqs))

    async def close(self) -> None:
        """Nothing of its own: the connection is the store's."""


def _frame(seq: int, raw: Any) -> Frame:
    d = json.loads(raw)
    return Frame(seq, d["ref"], d["sender"], d["text"], int(d["at_ms"]), d.get("author"), d.get("files") or None,
                 d.get("journal_id"))


async def import_local(data_dir: Any, r: Any, k: Any, attachments: Any) -> int:
    """``omnigate migrate``: a single node's webchat state (``webchat.db``,
    ``webchat.key``, ``webchat-files/``) into Redis, written as it is (numbers,
    read marks, mailed flags kept), so visitors' tokens and histories survive the
    move. Idempotent (the same values written again). Returns the conversations moved."""
    import asyncio
    import sqlite3
    from pathlib import Path

    data_dir = Path(data_dir)
    key = data_dir / "webchat.key"
    if key.is_file():
        await r.set(k.webchat_key, key.read_bytes())
    files = data_dir / "webchat-files"
    if files.is_dir():
        for path in sorted(files.glob("??/*")):
            if "." not in path.name:  # not a temporary file of a crashed write
                await attachments.aput(await asyncio.to_thread(path.read_bytes))
    path = data_dir / "webchat.db"
    if not path.is_file():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        convs = db.execute("SELECT conv, site, visitor, name, email, last_seq, last_activity_ms, visitor_read_seq, "
                           "agent_read_seq, ended_seq, ticket_id FROM conversations").fetchall()
        for row in convs:
            conv = row[0]
            c = dict(zip(_FIELDS, row[1:]))
            c = {f: v for f, v in c.items() if v is not None}
            async with r.pipeline(transaction=False) as pipe:
                pipe.hset(k.webchat_conv(conv, "c"), mapping=c)
                if c["last_seq"] > c["ended_seq"]:
                    pipe.zadd(k.webchat_active, {conv: c["last_activity_ms"]})
                for seq, ref, sender, author, text, fl, at_ms, journal_id, emailed in db.execute(
                        "SELECT seq, ref, sender, author, text, files, at_ms, journal_id, emailed FROM frames "
                        "WHERE conv=?", (conv,)):
                    listed = json.loads(fl or "[]")
                    pipe.hset(k.webchat_conv(conv, "f"), seq, json.dumps(
                        {"ref": ref, "sender": sender, "text": text, "at_ms": at_ms, "author": author,
                         "files": listed, "journal_id": journal_id}, ensure_ascii=False))
                    pipe.hset(k.webchat_conv(conv, "r"), ref, seq)
                    shas = [f["sha256"] for f in listed if f.get("sha256")]
                    if shas:
                        pipe.sadd(k.webchat_conv(conv, "files"), *shas)
                    if sender == "agent" and not emailed and seq > c["visitor_read_seq"]:
                        pipe.zadd(k.webchat_unmailed, {f"{conv}\n{seq}": at_ms})
                await pipe.execute()
        return len(convs)
    finally:
        db.close()
