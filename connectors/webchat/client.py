"""The webchat connector: the widget, the visitors' sockets, and ``send``.

Routes (under ``/channels/webchat/``):

- ``GET widget.js?site=S``: the widget (``widget.js`` beside this file, no
  build step), with the site's colour, greeting and options inlined;
- ``GET ws?site=S``: a visitor's websocket (Origin checked against the
  site's ``origins`` before the upgrade);
- ``POST poll?site=S``: the long-polling fallback, the same frames in a JSON
  body ``{"frames": [...], "wait": seconds}`` answered ``{"frames": [...]}``.

Every visitor message is journaled (durable) before its ``ack`` goes back,
keyed by the conversation and the widget's client message id (``cid``), so
a resend after a reconnect answers the same entry; then it is written to the
transcript (transcript.py) and published on the live hub (hub.py). An agent
reply reaches :meth:`WebchatConnector.send` from the outbox once it is
journaled: it is written to the transcript and pushed to every open socket
of the conversation; a visitor who is away gets it in the ``welcome`` of
their next connection (and by mail after ``email_after``, see ``run``).

The frame protocol is in the README ("Webchat frame protocol").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import WSMsgType, web

from connectors.base import Fatal, SendError, SendResult
from connectors.http import client_ip, problem, read_body
from connectors.webchat.hub import LiveHub
from connectors.webchat.parse import ID_RE, MAX_FILES, Profile, User, sniff, verify_user
from connectors.webchat.transcript import LocalTranscript, TranscriptStore, Unavailable
from routing.model import Outbound, utcnow

log = structlog.get_logger(__name__)

_HERE = Path(__file__).parent
_COLOR = re.compile(r"#(?:[0-9a-fA-F]{3}){1,2}\Z")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
POLL_MAX_WAIT_S = 25.0
#: polling requests per client IP (bursts of POLLS_BURST), whatever the visitor
POLLS_PER_SECOND = 10.0
POLLS_BURST = 40
#: a polling widget not heard from for this long has left (agents see it offline)
POLL_GONE_S = 60.0
#: frames of any type one transport may send (messages have their own, stricter limit)
FRAMES_PER_SECOND = 20.0
FRAMES_BURST = 60


def _seconds(value: Any, name: str) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    total, pos, s = 0.0, 0, str(value).strip().lower()
    for m in _DURATION.finditer(s):
        if s[pos:m.start()].strip():
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or s[pos:].strip():
        raise Fatal(f"webchat.{name}: {value!r} is not a duration like 90s, 30m or 1h")
    return total


@dataclass
class Site:
    name: str
    origins: frozenset[str]
    secret: str | None = None
    team: str | None = None
    greeting: dict[str, str] = field(default_factory=dict)
    color: str = "#2563eb"
    prechat: bool = False

    def widget_config(self) -> dict[str, Any]:
        return {"site": self.name, "color": self.color, "greeting": self.greeting, "prechat": self.prechat}


@dataclass
class Settings:
    sites: dict[str, Site]
    inactivity_s: float = 1800.0
    email_after_s: float = 600.0
    email_account: str | None = None
    max_text_chars: int = 4000
    max_file_bytes: int = 5 * 1024 * 1024
    messages_per_second: float = 2.0
    burst: int = 10
    connections_per_ip: int = 20
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: dict, trusted_proxies: tuple[str, ...] = ()) -> "Settings":
        sites = {}
        for name, s in (cfg.get("sites") or {}).items():
            if not ID_RE.match(str(name)) or not isinstance(s, dict):
                raise Fatal(f"webchat.sites.{name}: a site name must match [A-Za-z0-9_-]{{1,64}} and hold a mapping")
            origins = s.get("origins") or []
            if isinstance(origins, str):
                origins = [o.strip() for o in origins.split(",") if o.strip()]
            for o in origins:
                if not re.match(r"https?://[^/\s]+\Z", o):
                    raise Fatal(f"webchat.sites.{name}.origins: {o!r} is not an origin like https://shop.example.com")
            greeting = s.get("greeting") or {}
            if isinstance(greeting, str):
                greeting = {"en": greeting, "zh-CN": greeting}
            color = str(s.get("color") or "#2563eb")
            if not _COLOR.match(color):
                raise Fatal(f"webchat.sites.{name}.color: {color!r} is not #rgb or #rrggbb")
            sites[name] = Site(name, frozenset(o.rstrip("/").lower() for o in origins), s.get("secret") or None,
                               s.get("team"), {str(k): str(v) for k, v in greeting.items()}, color,
                               str(s.get("prechat", "false")).lower() in ("1", "true", "yes"))
        return cls(
            sites=sites,
            inactivity_s=_seconds(cfg.get("inactivity", "30m"), "inactivity"),
            email_after_s=_seconds(cfg.get("email_after", "10m"), "email_after"),
            email_account=cfg.get("email_account"),
            max_text_chars=int(cfg.get("max_text_chars", 4000)),
            max_file_bytes=int(cfg.get("max_file_bytes", 5 * 1024 * 1024)),
            messages_per_second=float(cfg.get("messages_per_second", 2)),
            connections_per_ip=int(cfg.get("connections_per_ip", 20)),
            trusted_proxies=tuple(trusted_proxies),
        )


class Closed(Exception):
    """Close the visitor's transport: ``code`` (websocket) / ``status`` (polling), ``reason``."""

    def __init__(self, code: int, status: int, reason: str):
        super().__init__(reason)
        self.code, self.status, self.reason = code, status, reason


class Session:
    """One open transport of a visitor (a websocket, or a waiting poll)."""

    def __init__(self, site: Site, ip: str):
        self.site = site
        self.ip = ip
        self.conv: str | None = None
        self.visitor: str | None = None
        self.user: dict | None = None  # window.omnigateUser as given, re-checked by the parser
        self.profile: dict | None = None
        self.page: dict | None = None
        self.lang: str | None = None
        #: every frame of this transport, whatever its type (typing, page, read…): a flood is closed
        self.frames = Bucket(FRAMES_PER_SECOND, FRAMES_BURST)

    async def push(self, frame: dict) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class WsSession(Session):
    def __init__(self, site: Site, ip: str, ws: web.WebSocketResponse):
        super().__init__(site, ip)
        self.ws = ws

    async def push(self, frame: dict) -> None:
        if not self.ws.closed:
            try:
                await self.ws.send_str(json.dumps(frame, ensure_ascii=False))
            except (ConnectionError, RuntimeError):
                pass


class PollSession(Session):
    def __init__(self, site: Site, ip: str):
        super().__init__(site, ip)
        self.out: list[dict] = []
        self.ready = asyncio.Event()

    async def push(self, frame: dict) -> None:
        self.out.append(frame)
        self.ready.set()


class Bucket:
    """A token bucket: ``rate`` per second, ``burst`` at most."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class Buckets:
    """Token buckets by key in this process (one instance). The gateway's
    context may give a shared limiter instead (``ctx.limiter(name, rate,
    burst)``: one budget across instances on Redis); both answer
    ``await take(key)`` with 0 (allowed) or the seconds to wait."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.buckets: dict[str, Bucket] = {}

    async def take(self, key: str) -> float:
        return 0.0 if self.buckets.setdefault(key, Bucket(self.rate, self.burst)).take() else 1 / self.rate

    def forget_full(self) -> None:
        """Drop the buckets that are (about) full again: nobody is being limited there."""
        for key in [k for k, b in self.buckets.items() if b.tokens >= b.burst - 1]:
            del self.buckets[key]


class WebchatConnector:
    channel = "webchat"

    def __init__(self, ctx: Any):
        self.ctx = ctx
        self.settings = Settings.from_config(dict(ctx.config), tuple(getattr(ctx, "trusted_proxies", ()) or ()))
        self.clock = getattr(ctx, "clock", None) or utcnow
        data = Path(ctx.data_dir)
        data.mkdir(parents=True, exist_ok=True)
        shared = getattr(ctx, "redis_store", None)
        #: the durable state: ``webchat.db`` here, or with ``redis_url`` Redis and the shared
        #: attachment store, so any instance resumes any conversation (redis_transcript.py)
        self.transcript: TranscriptStore
        if shared is not None:
            from connectors.webchat.redis_transcript import RedisTranscript

            self.transcript = RedisTranscript(shared.r, shared.k)
            self.files: Any = ctx.attachments
        else:
            self.transcript = LocalTranscript(data)
            self.files = FileStore(data / "webchat-files")
        self._key: bytes | None = None  # the visitor tokens' key, read once (_keyed)
        self._holder = secrets.token_hex(8)  # this instance's name for the sweep's lease
        self.hub = LiveHub()
        self.hub.on_agent_typing = self._agent_typing
        self.hub.on_agent_read = self._agent_read
        #: set by the gateway: mail unseen agent replies ``(site, conv, email, frames) -> bool``
        self.mailer: Any = None
        self.sessions: dict[str, set[Session]] = {}
        self.per_ip: dict[str, int] = {}
        limiter = getattr(ctx, "limiter", None)  # shared by instances on Redis (gateway/shared.py)
        #: a conversation's messages (per second, burst), whichever instance its sockets are on
        self.message_limit: Any = limiter("webchat:messages", self.settings.messages_per_second,
                                          self.settings.burst) if limiter else \
            Buckets(self.settings.messages_per_second, self.settings.burst)
        #: client IP → its polling requests (a poll is a hello: no free loop of them)
        self.poll_limit: Any = limiter("webchat:polls", POLLS_PER_SECOND, POLLS_BURST) if limiter else \
            Buckets(POLLS_PER_SECOND, POLLS_BURST)
        self._typing_at: dict[str, float] = {}
        #: conversation → when a polling widget last asked (no socket says when it leaves)
        self.polled: dict[str, float] = {}
        self._widget = (_HERE / "widget.js").read_text(encoding="utf-8")

    # ------------------------------------------------------------ lifecycle

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/channels/webchat/widget.js", self.widget_js),
            web.get("/channels/webchat/ws", self.websocket),
            web.post("/channels/webchat/poll", self.poll),
            web.get("/channels/webchat/files/{sha256}", self.file),
        ]

    async def run(self) -> None:
        """End idle conversations and mail unseen replies, until cancelled."""
        period = max(1.0, min(30.0, self.settings.inactivity_s / 4))
        while True:
            await asyncio.sleep(period)
            try:
                await self.sweep()
            except Exception:  # noqa: BLE001 - next round
                log.exception("webchat.sweep_failed")

    async def sweep(self) -> dict[str, int]:
        """One round of the background work (tests call it on a fake clock)."""
        now_ms = _ms(self.clock())
        ended = 0
        if self.transcript.shared and not await self._sweep_lease():
            return {"ended": 0, "mailed": 0}  # another instance sweeps
        for conv, site, visitor, last_seq in await self.transcript.idle(
                now_ms - int(self.settings.inactivity_s * 1000)):
            env = {"v": 1, "type": "end", "site": site, "visitor": visitor, "cid": str(last_seq),
                   "received_at": self.clock().isoformat(), **self._identity_of(conv)}
            await self.ctx.ingest(site, f"{conv}:end:{last_seq}", json.dumps(env).encode(), {})
            await self.transcript.ended(conv, last_seq)
            for s in list(self.sessions.get(conv, ())):
                await s.push({"type": "ended", "conversation": conv})
            if conv in self.hub.live or not self.transcript.shared:
                self.hub.drop_chat(conv)
            else:  # the visitor's socket may be on another instance: tell it
                self.hub.publish({"type": "ended", "conversation": conv})
            ended += 1
            log.info("webchat.conversation_ended", site=site, conversation=conv)
        for conv in [c for c in self._typing_at if c not in self.sessions]:  # forget who left
            self._typing_at.pop(conv, None)
        self.message_limit.forget_full()
        self.poll_limit.forget_full()
        gone = time.monotonic() - POLL_GONE_S
        for conv, at in list(self.polled.items()):
            if at < gone:
                del self.polled[conv]
                if not self.sessions.get(conv) and conv in self.hub.live:
                    self.hub.update_chat(conv, online=False)
        mailed = 0
        if self.mailer is not None and self.settings.email_account:
            pending: dict[str, tuple[str, list]] = {}
            for conv, email, frame in await self.transcript.unseen_agent_frames(
                    now_ms - int(self.settings.email_after_s * 1000)):
                pending.setdefault(conv, (email, []))[1].append(frame)
            for conv, (email, frames) in pending.items():
                try:
                    ok = await self.mailer(conv, email, frames)
                except Exception:  # noqa: BLE001 - tried again next round
                    log.exception("webchat.mail_failed", conversation=conv)
                    continue
                if ok:
                    await self.transcript.emailed(conv, [f.seq for f in frames])
                    mailed += 1
        return {"ended": ended, "mailed": mailed}

    async def _sweep_lease(self) -> bool:
        """With shared state one instance sweeps at a time (no conversation ended twice, no reply
        mailed twice): the store's lease, held for a few rounds and taken over when its holder dies."""
        store = self.ctx.redis_store
        period = max(1.0, min(30.0, self.settings.inactivity_s / 4))
        try:
            return await store.lease_acquire("webchat-sweep", self._holder, period * 3)
        except Exception:  # noqa: BLE001 - Redis down: nobody sweeps this round
            return False

    def _identity_of(self, conv: str) -> dict:
        """An ``end`` envelope names its conversation (so a signed user's, whose
        sender is ``external``, ends on the right contact); only the server
        writes ``end`` envelopes."""
        return {"conversation": conv}

    async def close(self) -> None:
        for sessions in list(self.sessions.values()):
            for s in list(sessions):
                if isinstance(s, WsSession):
                    await s.ws.close(code=1012, message=b"server restarting")
        await self.transcript.close()

    # ------------------------------------------------------------ widget.js

    async def widget_js(self, request: web.Request) -> web.StreamResponse:
        site = self.settings.sites.get(request.query.get("site", ""))
        if site is None:
            return problem(404, f"no webchat site {request.query.get('site', '')!r} is configured")
        cfg = json.dumps({**site.widget_config(), "max_file_bytes": self.settings.max_file_bytes}, ensure_ascii=True).replace("</", "<\\/")
        body = self._widget.replace("/*OMNIGATE_CONFIG*/null", cfg, 1)
        return web.Response(text=body, content_type="application/javascript", charset="utf-8",
                            headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})

    async def file(self, request: web.Request) -> web.StreamResponse:
        """A file of the visitor's conversation: ``?site=&visitor=&token=``
        (the welcome's), and the file must be in that conversation. A signed
        user's conversation needs ``user`` and ``signature`` too (the same
        ``window.omnigateUser``); images inline, anything else as a download."""
        try:
            return await self._file(request)
        except Exception as exc:  # noqa: BLE001 - the state or the attachment store unreachable (Redis down)
            log.warning("webchat.state_unavailable", error=f"{type(exc).__name__}: {str(exc)[:200]}")
            return problem(503, "the file cannot be read right now; try again")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        sha = request.match_info["sha256"]
        site = self.settings.sites.get(q.get("site", ""))
        await self._keyed()
        visitor, token = q.get("visitor", ""), q.get("token", "")
        if site is None or not ID_RE.match(visitor) or not hmac.compare_digest(
                token.encode(), self.visitor_token(site.name, visitor).encode()):
            return problem(403, "the visitor and token of the welcome frame are needed")
        conv = f"webchat:{site.name}:{visitor}"
        if q.get("user"):
            u = User(id=q["user"], expires=q.get("expires", ""), signature=q.get("signature", ""),
                     email=q.get("email") or None, phone=q.get("phone") or None)
            if verify_user(u, site.secret, self.clock())[0] == "none":
                return problem(403, "the signed user does not verify")
            conv = f"external:{site.name}:{u.id}"
        if not re.fullmatch(r"[0-9a-f]{64}", sha) or not await self.transcript.has_file(conv, sha):
            return problem(404, "no such file in this conversation")
        data = await self.files.aget(sha)
        if data is None:
            return problem(404, "the file is gone")
        ctype = sniff(data) or "application/octet-stream"
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=86400",
                   "Content-Security-Policy": "default-src 'none'; sandbox"}
        if not ctype.startswith("image/"):
            headers["Content-Disposition"] = "attachment"
        return web.Response(body=data, content_type=ctype, headers=headers)

    # ------------------------------------------------------------ transports

    def _admit(self, request: web.Request) -> tuple[Site, str]:
        """The site, its Origin check and the per-IP limit, before anything else."""
        site = self.settings.sites.get(request.query.get("site", ""))
        if site is None:
            raise _refusal(404, "no such webchat site (the ?site= parameter)", self.ctx, "unknown_site")
        origin = (request.headers.get("Origin") or "").rstrip("/").lower()
        if origin not in site.origins:
            raise _refusal(403, f"origin {origin or '(none)'!r} is not allowed for site {site.name!r} "
                           "(webchat.sites.<site>.origins)", self.ctx, "origin")
        ip = client_ip(request, self.settings.trusted_proxies)
        if self.per_ip.get(ip, 0) >= self.settings.connections_per_ip:
            raise _refusal(429, f"too many connections from this address (at most "
                           f"{self.settings.connections_per_ip})", self.ctx, "connections_per_ip")
        return site, ip

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        try:
            site, ip = self._admit(request)
        except _Refused as r:
            return r.response
        max_msg = int(self.settings.max_file_bytes * 1.4) + 64 * 1024
        ws = web.WebSocketResponse(heartbeat=25, max_msg_size=max_msg)
        await ws.prepare(request)
        session = WsSession(site, ip, ws)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.BINARY:
                        await ws.close(code=1003, message=b"text frames only")
                    break
                try:
                    for out in await self.handle(session, msg.data):
                        await session.push(out)
                except Closed as c:
                    await session.push({"type": "error", "code": "closed", "reason": c.reason})
                    await ws.close(code=c.code, message=c.reason.encode()[:120])
                    break
        finally:
            self._forget(session, ip)
        return ws

    async def poll(self, request: web.Request) -> web.StreamResponse:
        try:
            site, ip = self._admit(request)
        except _Refused as r:
            return r.response
        if await self.poll_limit.take(ip) > 0:
            if hasattr(self.ctx, "rejected"):
                self.ctx.rejected("poll_rate")
            return problem(429, f"too many polls from this address (at most {POLLS_PER_SECOND:g} per second)")
        limit = int(self.settings.max_file_bytes * 1.4) + 64 * 1024
        raw = await read_body(request, limit)
        try:
            body = json.loads(raw)
            frames = body["frames"]
            wait = min(POLL_MAX_WAIT_S, max(0.0, float(body.get("wait", 0))))
            if not isinstance(frames, list) or not frames:
                raise ValueError
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: [[[[…]]]] thousands deep
            return problem(400, "the body must be {\"frames\": [hello, …], \"wait\": seconds} (frames[0] a hello)",
                           field="body")
        session = PollSession(site, ip)
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        try:
            out: list[dict] = []
            for n, f in enumerate(frames):
                if n == 0 and not (isinstance(f, dict) and f.get("type") == "hello"):
                    return problem(400, "frames[0] must be a hello frame", field="frames[0]")
                try:
                    out += await self.handle(session, json.dumps(f) if not isinstance(f, str) else f)
                except Closed as c:
                    return problem(c.status, c.reason)
            welcome = out[0] if out and out[0].get("type") == "welcome" else None
            if wait and welcome is not None and not welcome["history"] and len(out) == 1:
                try:
                    await asyncio.wait_for(session.ready.wait(), wait)
                except TimeoutError:
                    pass
            out += session.out
            if session.conv:
                self.polled[session.conv] = time.monotonic()
            return web.json_response({"frames": out}, dumps=lambda d: json.dumps(d, ensure_ascii=False),
                                     headers={"Access-Control-Allow-Origin": request.headers["Origin"],
                                              "Vary": "Origin"})
        finally:
            self._forget(session, ip)

    def _forget(self, session: Session, ip: str) -> None:
        n = self.per_ip.get(ip, 1) - 1
        if n <= 0:
            self.per_ip.pop(ip, None)
        else:
            self.per_ip[ip] = n
        conv = session.conv
        if conv is None:
            return
        sessions = self.sessions.get(conv)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self.sessions[conv]
                if isinstance(session, WsSession) and conv in self.hub.live:
                    self.hub.update_chat(conv, online=False)

    # ------------------------------------------------------------ frames

    async def handle(self, s: Session, text: str) -> list[dict]:
        """One client frame → the frames to answer this transport with."""
        try:
            f = json.loads(text)
        except (ValueError, RecursionError):
            return [{"type": "error", "code": "bad_frame", "reason": "not JSON"}]
        try:
            return await self._handle(s, f)
        except Unavailable as exc:
            log.warning("webchat.state_unavailable", error=str(exc)[:200])
            raise Closed(1011, 503, "the chat is unavailable for a moment; the widget will reconnect") from None
        except (Closed, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - hostile frames must not kill the socket with a 500
            log.warning("webchat.bad_frame", error=f"{type(exc).__name__}: {exc}")
            return [{"type": "error", "code": "bad_frame", "reason": "a field has the wrong type"}]

    async def _handle(self, s: Session, f: Any) -> list[dict]:
        if not s.frames.take():
            if hasattr(self.ctx, "rejected"):
                self.ctx.rejected("frame_flood")
            raise Closed(1008, 429, f"too many frames (at most {FRAMES_PER_SECOND:g} per second)")
        if not isinstance(f, dict) or not isinstance(f.get("type"), str):
            return [{"type": "error", "code": "bad_frame", "reason": "a frame is an object with a type"}]
        kind = f["type"]
        if kind == "hello":
            return [await self._hello(s, f)]
        if s.conv is None:
            return [{"type": "error", "code": "no_hello", "reason": "say hello first"}]
        if kind == "message":
            return [await self._message(s, f)]
        if kind == "typing":
            self._visitor_typing(s, f)
        elif kind == "read":
            await self._visitor_read(s, f)
        elif kind == "page":
            s.page = _page(f)
            self.hub.update_chat(s.conv, page=s.page)
        elif kind == "profile":
            s.profile = _profile(f)
            await self.transcript.touch(s.conv, s.site.name, s.visitor or "", _ms(self.clock()),
                                  name=s.profile.get("name"), email=s.profile.get("email"))
            self.hub.update_chat(s.conv, name=s.profile.get("name"))
            return [{"type": "profile_ok"}]
        elif kind == "ping":
            return [{"type": "pong"}]
        else:
            return [{"type": "error", "code": "unknown_type", "reason": f"unknown frame type {kind[:40]!r}"}]
        return []

    async def _keyed(self) -> None:
        if self._key is None:
            self._key = await self.transcript.visitor_key()

    def visitor_token(self, site: str, visitor: str) -> str:
        """The visitor's token (after :meth:`_keyed`): the same on every instance sharing the state."""
        assert self._key is not None
        return hmac.new(self._key, f"{site}:{visitor}".encode(), hashlib.sha256).hexdigest()[:32]

    async def _hello(self, s: Session, f: dict) -> dict:
        site = s.site
        await self._keyed()
        visitor, token = f.get("visitor"), f.get("token")
        if not (isinstance(visitor, str) and ID_RE.match(visitor) and isinstance(token, str)
                and hmac.compare_digest(token.encode(), self.visitor_token(site.name, visitor).encode())):
            visitor = "v" + secrets.token_urlsafe(16).replace("-", "x").replace("_", "y")
        s.visitor = visitor
        s.lang = str(f.get("lang") or "")[:20] or None
        s.page = _page(f.get("page") or {})
        notices = []
        conv = f"webchat:{site.name}:{visitor}"
        user = f.get("user")
        email = None
        s.user = None
        if isinstance(user, dict):
            try:
                u = User(id=str(user["id"]), expires=user["expires"], signature=str(user["signature"]),
                         name=_str(user.get("name")), email=_str(user.get("email")), phone=_str(user.get("phone")))
                trust, why = verify_user(u, site.secret, self.clock())
            except (KeyError, TypeError, ValueError):
                trust, why, u = "none", "window.omnigateUser needs id, expires and signature", None
            if trust == "none" or u is None:
                notices.append({"code": "user_not_verified", "reason": why})
            else:
                s.user = {k: v for k, v in user.items() if k in ("id", "expires", "signature", "name", "email",
                                                                  "phone")}
                conv = f"external:{site.name}:{u.id}"
                email = u.email if trust == "full" else None
        if isinstance(f.get("profile"), dict):
            s.profile = _profile(f["profile"])
        email = email or (s.profile or {}).get("email")
        name = (s.user or {}).get("name") or (s.profile or {}).get("name")
        if s.conv is not None and s.conv != conv:
            self._forget_conv(s)
        s.conv = conv
        self.sessions.setdefault(conv, set()).add(s)
        await self.transcript.touch(conv, site.name, visitor, _ms(self.clock()), name=name, email=email)
        info = await self.transcript.conversation(conv) or {}
        after = f.get("after")
        # a seq the store holds: true is an int to Python but not to Redis (a DataError taken for "Redis down"),
        # past 64 bits SQLite overflows (the hello was a bad_frame, no welcome)
        after = after if isinstance(after, int) and not isinstance(after, bool) and 0 <= after < 2**63 else 0
        history = [fr.public(conv) for fr in await self.transcript.history(conv, after)]
        online = True
        if self.hub.agents_online is not None:
            try:
                online = await self.hub.agents_online(site.team)
            except Exception:  # noqa: BLE001 - say online rather than hide the chat
                online = True
        self.hub.update_chat(conv, site=site.name, visitor=visitor, name=name, online=True, page=s.page,
                             ticket_id=info.get("ticket_id"))
        return {"type": "welcome", "visitor": visitor, "token": self.visitor_token(site.name, visitor),
                "conversation": conv, "history": history, "last_seq": info.get("last_seq", 0),
                "agent_read_seq": info.get("agent_read_seq", 0), "visitor_read_seq": info.get("visitor_read_seq", 0),
                "agents_online": online, "notices": notices}

    def _forget_conv(self, s: Session) -> None:
        sessions = self.sessions.get(s.conv or "")
        if sessions is not None:
            sessions.discard(s)

    async def _message(self, s: Session, f: dict) -> dict:
        cid = f.get("cid")
        if not (isinstance(cid, str) and ID_RE.match(cid)):
            return {"type": "error", "code": "bad_cid", "reason": "cid must match [A-Za-z0-9_-]{1,64}"}
        assert s.conv is not None
        if await self.message_limit.take(s.conv) > 0:
            if hasattr(self.ctx, "rejected"):
                self.ctx.rejected("rate_limited")
            raise Closed(1008, 429, f"too many messages (at most {self.settings.messages_per_second:g} per second)")
        text = f.get("text") if isinstance(f.get("text"), str) else ""
        if len(text) > self.settings.max_text_chars:
            return {"type": "error", "cid": cid, "code": "too_long",
                    "reason": f"a message has at most {self.settings.max_text_chars} characters"}
        files, shown = [], []
        raw_files = f.get("files") or []
        if not isinstance(raw_files, list) or len(raw_files) > MAX_FILES:
            return {"type": "error", "cid": cid, "code": "file_refused", "reason": f"at most {MAX_FILES} files"}
        blobs = []
        for up in raw_files:
            try:
                if not isinstance(up, dict):
                    raise TypeError
                data = base64.b64decode(up["data_base64"], validate=True)
                name = str(up.get("name") or "file")[:200]
            except (KeyError, TypeError, binascii.Error, ValueError):
                return {"type": "error", "cid": cid, "code": "file_refused", "reason": "a file is not base64"}
            if len(data) > self.settings.max_file_bytes:
                return {"type": "error", "cid": cid, "code": "file_too_large",
                        "reason": f"a file has at most {self.settings.max_file_bytes} bytes"}
            ctype = sniff(data)
            if ctype is None:
                return {"type": "error", "cid": cid, "code": "file_type",
                        "reason": "only PNG, JPEG, GIF, WebP images and PDF files"}
            files.append({"name": name, "content_type": ctype, "data_base64": up["data_base64"]})
            sha = hashlib.sha256(data).hexdigest()
            shown.append({"name": name, "content_type": ctype, "size": len(data), "sha256": sha})
            blobs.append((sha, data))
        if not text.strip() and not files:
            return {"type": "error", "cid": cid, "code": "empty", "reason": "an empty message"}
        now = self.clock()
        env: dict[str, Any] = {"v": 1, "type": "message", "site": s.site.name, "visitor": s.visitor, "cid": cid,
                               "text": text, "received_at": now.isoformat()}
        if files:
            env["files"] = files
        for k in ("user", "profile", "page", "lang"):
            if getattr(s, k):
                env[k] = getattr(s, k)
        if f.get("form") == "offline":
            env["form"] = "offline"
        try:
            result = await self.ctx.ingest(s.site.name, f"{s.conv}:{cid}",
                                           json.dumps(env, ensure_ascii=False).encode(), {})
        except Exception as exc:  # no ack: the widget keeps the message and resends it after reconnecting
            log.warning("webchat.journal_failed", site=s.site.name, error=f"{type(exc).__name__}: {exc}")
            raise Closed(1011, 503, "the message could not be stored; the widget will send it again") from None
        for _sha, data in blobs:  # after the journal: the widget shows them from here
            await self.files.aput(data)
        frame, created = await self.transcript.add(s.conv, cid, "visitor", text, _ms(now), files=shown or None,
                                             journal_id=result.journal_id)
        if created:
            public = frame.public(s.conv)
            for other in list(self.sessions.get(s.conv, ())):
                if other is not s:
                    await other.push(public)
            self.hub.publish({**public, "site": s.site.name, "visitor": s.visitor})
            self.hub.update_chat(s.conv, typing=None)
        ack = {"type": "ack", "cid": cid, "seq": frame.seq, "journal_id": result.journal_id, "at": frame.at_ms}
        if frame.files:
            ack["files"] = frame.files
        return ack

    def _visitor_typing(self, s: Session, f: dict) -> None:
        now = time.monotonic()
        assert s.conv is not None
        if now - self._typing_at.get(s.conv, 0.0) < 0.2 and f.get("on", True):
            return  # at most five previews a second
        self._typing_at[s.conv] = now
        preview = f.get("text") if isinstance(f.get("text"), str) else ""
        self.hub.publish({"type": "typing", "conversation": s.conv, "from": "visitor", "on": bool(f.get("on", True)),
                          "text": preview[:200]})

    async def _visitor_read(self, s: Session, f: dict) -> None:
        seq = f.get("seq")
        # a seq the store holds: true is an int to Python but not to Redis (a DataError taken for "Redis down": 503)
        if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq < 2**63 and s.conv \
                and await self.transcript.mark(s.conv, "visitor_read_seq", seq):
            self.hub.publish({"type": "read", "conversation": s.conv, "from": "visitor", "seq": seq})

    # ------------------------------------------------------------ agent side

    async def _agent_typing(self, conv: str, agent: str, on: bool) -> bool:
        if not self.sessions.get(conv) and await self.transcript.conversation(conv) is None:
            return False
        for s in list(self.sessions.get(conv, ())):
            await s.push({"type": "typing", "from": "agent", "on": on})
        return True

    async def _agent_read(self, conv: str, agent: str, seq: int) -> bool:
        if await self.transcript.conversation(conv) is None:
            return False
        if await self.transcript.mark(conv, "agent_read_seq", seq):
            for s in list(self.sessions.get(conv, ())):
                await s.push({"type": "read", "from": "agent", "seq": seq})
        return True

    async def ticket_committed(self, conv: str, ticket_id: str | None, *, store: bool = True) -> None:
        """The pipeline committed this conversation's message (the gateway calls this; with
        ``store=False`` another instance's commit already wrote the shared transcript)."""
        if ticket_id:
            if store:
                await self.transcript.set_ticket(conv, ticket_id)
            if conv in self.hub.live and self.hub.live[conv].get("ticket_id") != ticket_id:
                self.hub.update_chat(conv, ticket_id=ticket_id)

    async def send(self, outbound: Outbound) -> SendResult:
        to = outbound.to
        if to.kind not in ("webchat", "external"):
            raise SendError(f"a webchat reply goes to a webchat or external identity, not {to.kind!r}")
        site = to.value.partition(":")[0]
        if site not in self.settings.sites:
            raise SendError(f"no webchat site {site!r} is configured")
        conv = f"{to.kind}:{to.value}"
        files = []
        for a in outbound.attachments:
            if a.data is not None and not self.transcript.shared:  # loaded from the gateway's attachment
                await self.files.aput(a.data)  # store; shared, the file is there already
            files.append({"name": a.name, "content_type": a.content_type, "size": a.size, "sha256": a.sha256})
        frame, created = await self.transcript.add(conv, outbound.id, "agent", outbound.text, _ms(self.clock()),
                                             author=outbound.author, files=files or None)
        if created:
            public = frame.public(conv)
            for s in list(self.sessions.get(conv, ())):
                await s.push(public)
            self.hub.publish(public)
        return SendResult(external_id=f"{conv}#{frame.seq}")

    async def deliver_remote(self, event: dict) -> None:
        """Another instance's hub event (gateway/fanout.py): what the visitor's sockets here must
        see — a message (the agent's reply sent there, or the visitor's own from another tab
        connected there), the agent typing or reading, the conversation ended."""
        conv = event.get("conversation")
        sessions = list(self.sessions.get(conv, ())) if isinstance(conv, str) else []
        if not sessions:
            return
        kind, who = event.get("type"), event.get("from")
        if kind == "message":
            frame = {k: v for k, v in event.items() if k not in ("site", "visitor")}
        elif kind == "typing" and who == "agent":
            frame = {"type": "typing", "from": "agent", "on": bool(event.get("on"))}
        elif kind == "read" and who == "agent":
            frame = {"type": "read", "from": "agent", "seq": event.get("seq")}
        elif kind == "ended":
            frame = {"type": "ended", "conversation": conv}
        else:
            return
        for s in sessions:
            await s.push(frame)


class FileStore:
    """Content-addressed files of the conversations (``<sha256>``, written once)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def put(self, sha: str, data: bytes) -> None:
        path = self.root / sha[:2] / sha
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get(self, sha: str) -> bytes | None:
        try:
            return (self.root / sha[:2] / sha).read_bytes()
        except OSError:
            return None

    async def aput(self, data: bytes) -> str:
        """The same ``aput``/``aget`` as the gateway's attachment stores (the shared one with Redis)."""
        sha = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(self.put, sha, data)
        return sha

    async def aget(self, sha: str) -> bytes | None:
        return await asyncio.to_thread(self.get, sha)


class _Refused(Exception):
    def __init__(self, response: web.Response):
        self.response = response


def _refusal(status: int, detail: str, ctx: Any, reason: str) -> _Refused:
    rejected = getattr(ctx, "rejected", None)
    if rejected is not None:
        rejected(reason)
    return _Refused(problem(status, detail))


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _str(v: Any) -> str | None:
    return str(v)[:320] if v not in (None, "") else None


def _page(f: Any) -> dict:
    if not isinstance(f, dict):
        return {"url": "", "title": ""}
    return {"url": str(f.get("url") or "")[:2000], "title": str(f.get("title") or "")[:300]}


def _profile(f: Any) -> dict:
    if not isinstance(f, dict):
        return {}
    p = Profile(name=_str(f.get("name")), email=_str(f.get("email")), phone=_str(f.get("phone")))
    return {k: v for k, v in (("name", p.name), ("email", p.email), ("phone", p.phone)) if v}
