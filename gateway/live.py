"""The agent side of live chat: the webchat hub, reached from ``/api/v1``.

The webchat connector owns the hub (connectors/webchat/hub.py); this module
wires it into the daemon and gives agents (the console, or any API client):

- ``GET /api/v1/live/webchat`` — a websocket. Authenticate with
  ``Authorization: Bearer <token>`` on the upgrade request, or (browsers
  cannot set headers on a websocket) with a first frame
  ``{"type": "auth", "token": "<token>"}`` within 10 s. The server sends
  ``{"type": "snapshot", "chats": [chat…]}`` and then every hub event
  (hub.py lists them: ``chat``, ``message``, ``ticket``, ``typing``,
  ``read``, ``ended``). The agent sends ``{"type": "typing", "conversation",
  "on": bool}`` and ``{"type": "read", "conversation", "seq": int}``; each is
  answered ``{"type": "ok"|"error", …}``. Replies are *not* sent here: POST
  them to ``/api/v1/tickets/{ticket_id}/replies`` (the ``ticket`` and
  ``chat`` events carry the ticket id); they come back on this socket as
  ``message`` events with ``from: "agent"`` once the outbox delivered them.
- ``GET /api/v1/live/webchat/chats`` — the same snapshot as JSON.
- ``POST /api/v1/live/webchat/typing`` ``{"conversation", "on"}`` and
  ``POST /api/v1/live/webchat/read`` ``{"conversation", "seq"}`` — the same
  signals without a socket.

Authorisation is the API bearer token for now (``api_token``); it must move
to the REST API's per-agent tokens and role checks (gateway/auth.py) when
they land. ``agent`` in the signals is the ``X-Omnigate-Actor`` header or
the ``agent`` field, ``"api"`` by default.

After each committed webchat message the pipeline hook publishes a
``ticket`` event and tells the connector the conversation's ticket.
Presence: the widget's "agents online" comes from the store's agents
(``presence == "online"`` in the site's team). Unseen agent replies are
mailed through the email connector (``webchat.email_account``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from typing import Any

import msgspec
import structlog
from aiohttp import WSMsgType, web

from gateway import keys
from gateway.http_util import Problem, check_bearer, json_response
from routing.model import Identity, Outbound, new_id

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()
AUTH_TIMEOUT_S = 10.0


def webchat(app: web.Application) -> Any:
    conn = app[keys.CONNECTORS].get("webchat")
    if conn is None:
        raise Problem(404, "Not found", "the webchat channel is not configured (webchat.sites)")
    return conn


def setup(app: web.Application, pipeline: Any) -> None:
    """Connect the webchat connector's hub to the store and the pipeline."""
    conn = app[keys.CONNECTORS].get("webchat")
    if conn is None:
        return
    store = app[keys.STORE]

    async def agents_online(team: str | None) -> bool:
        for a in await store.list_agents():
            if a.presence == "online" and (team is None or team in a.teams):
                return True
        return False

    async def committed(inbound: Any, result: Any) -> None:
        if inbound.channel != "webchat" or not result.ticket_id:
            return
        conv = f"{inbound.sender.kind}:{inbound.sender.value}"
        conn.ticket_committed(conv, result.ticket_id)
        conn.hub.publish({"type": "ticket", "conversation": conv, "ticket_id": result.ticket_id,
                          "contact_id": result.contact_id, "journal_id": inbound.raw_ref})

    async def mailer(conv: str, email: str, frames: list) -> bool:
        """Mail agent replies the visitor has not seen (webchat.email_after)."""
        email_conn = app[keys.CONNECTORS].get("email")
        info = conn.transcript.conversation(conv) or {}
        if email_conn is None or not info.get("ticket_id"):
            return False
        text = "\n\n".join(f"{f.author or 'Agent'}: {f.text}" for f in frames)
        out = Outbound(id=new_id(), ticket_id=info["ticket_id"], channel="email", account=conn.settings.email_account,
                       to=Identity("email", email.strip().lower()), subject="Reply to your chat", text=text)
        await email_conn.send(out)
        log.info("webchat.mailed", conversation=conv, replies=len(frames))
        return True

    conn.hub.agents_online = agents_online
    conn.mailer = mailer
    pipeline.after_commit.append(committed)


def _actor(request: web.Request, given: Any = None) -> str:
    return str(given or request.headers.get("X-Omnigate-Actor") or "api")[:100]


class _Typing(msgspec.Struct, forbid_unknown_fields=True):
    conversation: str
    on: bool = True
    agent: str | None = None


class _Read(msgspec.Struct, forbid_unknown_fields=True):
    conversation: str
    seq: int
    agent: str | None = None


@routes.get("/api/v1/live/webchat/chats")
async def chats(request: web.Request) -> web.Response:
    check_bearer(request, request.app[keys.CONFIG].api_token)
    return json_response({"chats": webchat(request.app).hub.chats()})


@routes.post("/api/v1/live/webchat/typing")
async def typing(request: web.Request) -> web.Response:
    from gateway.api import read_body

    check_bearer(request, request.app[keys.CONFIG].api_token)
    body: _Typing = await read_body(request, _Typing)
    if not await webchat(request.app).hub.agent_typing(body.conversation, _actor(request, body.agent), body.on):
        raise Problem(404, "Not found", f"no webchat conversation {body.conversation!r}", field="$.conversation")
    return json_response({"ok": True})


@routes.post("/api/v1/live/webchat/read")
async def read(request: web.Request) -> web.Response:
    from gateway.api import read_body

    check_bearer(request, request.app[keys.CONFIG].api_token)
    body: _Read = await read_body(request, _Read)
    if not await webchat(request.app).hub.agent_read(body.conversation, _actor(request, body.agent), body.seq):
        raise Problem(404, "Not found", f"no webchat conversation {body.conversation!r}", field="$.conversation")
    return json_response({"ok": True})


@routes.get("/api/v1/live/webchat")
async def live_socket(request: web.Request) -> web.StreamResponse:
    app = request.app
    token = app[keys.CONFIG].api_token
    conn = webchat(app)
    header_ok = False
    if request.headers.get("Authorization"):
        check_bearer(request, token)  # a wrong header: 401 before the upgrade
        header_ok = True
    elif not token:
        check_bearer(request, token)
    ws = web.WebSocketResponse(heartbeat=25, max_msg_size=64 * 1024)
    await ws.prepare(request)
    if not header_ok:
        try:
            msg = await ws.receive(timeout=AUTH_TIMEOUT_S)
            frame = json.loads(msg.data) if msg.type == WSMsgType.TEXT else {}
        except (TimeoutError, ValueError):
            frame = {}
        given = frame.get("token") if isinstance(frame, dict) and frame.get("type") == "auth" else None
        if not (isinstance(given, str) and hmac.compare_digest(given.encode(), token.encode())):
            await ws.send_json({"type": "error", "code": "unauthorized", "reason": "missing or wrong token"})
            await ws.close(code=4401, message=b"unauthorized")
            return ws
    agent = _actor(request)
    sub = conn.hub.subscribe()
    await ws.send_json({"type": "snapshot", "chats": conn.hub.chats()})

    async def pump() -> None:
        async for event in sub:
            await ws.send_str(json.dumps(event, ensure_ascii=False))
        if sub.overflowed and not ws.closed:
            await ws.close(code=4429, message=b"too slow: reconnect for a fresh snapshot")

    task = asyncio.create_task(pump())
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            await ws.send_json(await _agent_frame(conn, agent, msg.data))
    finally:
        sub.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return ws


async def _agent_frame(conn: Any, agent: str, text: str) -> dict:
    try:
        f = json.loads(text)
    except ValueError:
        return {"type": "error", "code": "bad_frame", "reason": "not JSON"}
    if not isinstance(f, dict):
        return {"type": "error", "code": "bad_frame", "reason": "a frame is an object"}
    kind, conv = f.get("type"), f.get("conversation")
    if kind not in ("typing", "read") or not isinstance(conv, str):
        return {"type": "error", "code": "bad_frame", "reason": "typing or read frames with a conversation"}
    who = str(f.get("agent") or agent)[:100]
    if kind == "typing":
        ok = await conn.hub.agent_typing(conv, who, bool(f.get("on", True)))
    else:
        seq = f.get("seq")
        if not isinstance(seq, int):
            return {"type": "error", "code": "bad_frame", "reason": "read needs an integer seq"}
        ok = await conn.hub.agent_read(conv, who, seq)
    if not ok:
        return {"type": "error", "code": "unknown_conversation", "conversation": conv}
    return {"type": "ok", "of": kind, "conversation": conv}
