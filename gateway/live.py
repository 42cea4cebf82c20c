"""The agent side of live chat: the webchat hub, reached from ``/api/v1``.

The webchat connector owns the hub (connectors/webchat/hub.py); this module
wires it into the daemon and gives agents (the console, or any API client):

- ``GET /api/v1/live/webchat`` — a websocket. Authenticate with
  ``Authorization: Bearer <token>`` on the upgrade request, or (browsers
  cannot set headers on a websocket) with a first frame
  ``{"type": "auth", "token": "<token>"}`` within 10 s (answered
  ``{"type": "error", "code": "unauthorized"}`` and close 4401 when wrong). The server sends
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

Authorisation is the REST API's (gateway/auth.py): a per-agent token
(any role) or the bootstrap ``api_token`` (admin; the acting agent is
``X-Omnigate-Actor``). Agents and leads see the chats of the sites whose
``team`` is one of theirs (a site without a team: everyone's); admins all;
their typing and read marks are signed with their agent id.

After each committed webchat message the pipeline hook publishes a
``ticket`` event and tells the connector the conversation's ticket.
Presence: the widget's "agents online" comes from the store's agents
(``presence == "online"`` in the site's team). Unseen agent replies are
mailed through the email connector (``webchat.email_account``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import msgspec
import structlog
from aiohttp import WSMsgType, web

from multidict import CIMultiDict

from gateway import auth as rest_auth
from gateway import keys
from gateway.http_util import Problem, json_response
from routing.model import Identity, Outbound, new_id
from gateway.tasks import cancel_and_wait

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
        await conn.ticket_committed(conv, result.ticket_id)
        conn.hub.publish({"type": "ticket", "conversation": conv, "ticket_id": result.ticket_id,
                          "contact_id": result.contact_id, "journal_id": inbound.raw_ref})

    async def mailer(conv: str, email: str, frames: list) -> bool:
        """Mail agent replies the visitor has not seen (webchat.email_after)."""
        email_conn = app[keys.CONNECTORS].get("email")
        info = await conn.transcript.conversation(conv) or {}
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


class LiveTyping(msgspec.Struct, forbid_unknown_fields=True):
    """Show (``on``) or stop showing "agent is typing" to the visitor."""

    conversation: str
    on: bool = True


#: a message's place in its conversation: what the store's 64-bit integers hold
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class LiveRead(msgspec.Struct, forbid_unknown_fields=True):
    """The agent has read the visitor's messages up to ``seq``."""

    conversation: str
    seq: Seq


class LiveChats(msgspec.Struct):
    """The live chats the caller may see (each a ``chat`` event: ``conversation``, ``site``,
    ``visitor``, ``name``, ``online``, ``page``, ``ticket_id``)."""

    chats: list[dict[str, Any]]


class LiveOk(msgspec.Struct):
    ok: bool


class _WithToken:
    """The upgrade request, with the token of the socket's first frame as its bearer."""

    def __init__(self, request: web.Request, token: str):
        self.app = request.app
        self.headers = CIMultiDict(request.headers)
        self.headers["Authorization"] = f"Bearer {token}"


def may_see(p: rest_auth.Principal, conn: Any, conversation: str) -> bool:
    """Admins: every chat; others: chats of sites whose team is theirs (or that have no team)."""
    if p.is_admin:
        return True
    parts = conversation.split(":", 2)
    site = conn.settings.sites.get(parts[1]) if len(parts) == 3 else None
    return site is not None and (site.team is None or site.team in p.teams)


def _visible(p: rest_auth.Principal, conn: Any) -> list[dict]:
    return [c for c in conn.hub.chats() if may_see(p, conn, c["conversation"])]


async def _signal(request: web.Request, body: Any) -> web.Response:
    p = await rest_auth.require(request, "agent")
    conn = webchat(request.app)
    if not may_see(p, conn, body.conversation):
        raise rest_auth.forbid(f"{p.agent_id} is not in the team of this chat's site")
    if isinstance(body, LiveTyping):
        ok = await conn.hub.agent_typing(body.conversation, p.agent_id, body.on)
    else:
        ok = await conn.hub.agent_read(body.conversation, p.agent_id, body.seq)
    if not ok:
        raise Problem(404, "Not found", f"no webchat conversation {body.conversation!r}", field="$.conversation")
    return json_response(LiveOk(True))


@routes.get("/api/v1/live/webchat/chats")
async def chats(request: web.Request) -> web.Response:
    p = await rest_auth.require(request, "agent")
    return json_response(LiveChats(_visible(p, webchat(request.app))))


@routes.post("/api/v1/live/webchat/typing")
async def typing(request: web.Request) -> web.Response:
    from gateway.api import read_body

    return await _signal(request, await read_body(request, LiveTyping))


@routes.post("/api/v1/live/webchat/read")
async def read(request: web.Request) -> web.Response:
    from gateway.api import read_body

    return await _signal(request, await read_body(request, LiveRead))


@routes.get("/api/v1/live/webchat")
async def live_socket(request: web.Request) -> web.StreamResponse:
    p = None
    if request.headers.get("Authorization"):
        p = await rest_auth.require(request, "agent")  # a wrong header: 401 before the upgrade
    conn = webchat(request.app)
    ws = web.WebSocketResponse(heartbeat=25, max_msg_size=64 * 1024)
    await ws.prepare(request)
    if p is None:
        try:
            msg = await ws.receive(timeout=AUTH_TIMEOUT_S)
            frame = json.loads(msg.data) if msg.type == WSMsgType.TEXT else {}
        except (TimeoutError, ValueError, RecursionError):  # RecursionError: [[[[…]]]] thousands deep
            frame = {}
        given = frame.get("token") if isinstance(frame, dict) and frame.get("type") == "auth" else None
        reason = "missing token: send {\"type\": \"auth\", \"token\": …} first"
        if isinstance(given, str):
            try:
                p = await rest_auth.require(_WithToken(request, given), "agent")  # type: ignore[arg-type]
            except Problem as exc:
                reason = exc.detail or exc.title
        if p is None:
            await ws.send_json({"type": "error", "code": "unauthorized", "reason": reason})
            await ws.close(code=4401, message=b"unauthorized")
            return ws
    await agent_session(ws, p, conn, _visible(p, conn))
    return ws


async def agent_session(ws: web.WebSocketResponse, p: rest_auth.Principal, conn: Any, chats: list[dict]) -> None:
    """An agent's live socket once they are known: the ``snapshot`` of
    ``chats``, then the hub's events they may see, while their own frames
    (typing, read marks) go to the hub. Shared by the API's socket and the
    console's Live chats page."""
    sub = conn.hub.subscribe()
    await ws.send_json({"type": "snapshot", "chats": chats})

    async def pump() -> None:
        async for event in sub:
            if may_see(p, conn, event.get("conversation", "")):
                await ws.send_str(json.dumps(event, ensure_ascii=False))
        if sub.overflowed and not ws.closed:
            await ws.close(code=4429, message=b"too slow: reconnect for a fresh snapshot")

    task = asyncio.create_task(pump())
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                break
            await ws.send_json(await _agent_frame(conn, p, msg.data))
    finally:
        sub.close()
        await cancel_and_wait(task)


async def _agent_frame(conn: Any, p: rest_auth.Principal, text: str) -> dict:
    try:
        f = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: [[[[…]]]] thousands deep
        return {"type": "error", "code": "bad_frame", "reason": "not JSON"}
    if not isinstance(f, dict):
        return {"type": "error", "code": "bad_frame", "reason": "a frame is an object"}
    kind, conv = f.get("type"), f.get("conversation")
    if kind not in ("typing", "read") or not isinstance(conv, str):
        return {"type": "error", "code": "bad_frame", "reason": "typing or read frames with a conversation"}
    if not may_see(p, conn, conv):
        return {"type": "error", "code": "forbidden", "conversation": conv}
    who = p.agent_id
    if kind == "typing":
        ok = await conn.hub.agent_typing(conv, who, bool(f.get("on", True)))
    else:
        seq = f.get("seq")
        # past 64 bits the store raised OverflowError; true is an int to Python, not to Redis (DataError)
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
            return {"type": "error", "code": "bad_frame", "reason": "read needs an integer seq"}
        ok = await conn.hub.agent_read(conv, who, seq)
    if not ok:
        return {"type": "error", "code": "unknown_conversation", "conversation": conv}
    return {"type": "ok", "of": kind, "conversation": conv}
