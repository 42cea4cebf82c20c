"""The console's live chats (``/console/chats``): the webchat visitors an
agent may see (``gateway.live.may_see``: their team's sites; admins all),
each with the visitor's name, current page, online state, the conversation
so far, a live typing preview and a reply box.

- ``GET /console/chats`` — the page (``templates/chats.html``); the script
  ``static/chats.js`` fills and updates it from the socket below.
- ``GET /console/chats/socket`` — a websocket authenticated by the console
  session cookie (same-origin only: the upgrade's ``Origin`` must be this
  host, so another site cannot ride the cookie). It sends
  ``{"type": "snapshot", "chats": [chat + "messages": [message…]]}`` and then
  the hub's events the agent may see (``connectors/webchat/hub.py``); the
  page sends ``{"type": "typing", "conversation", "on"}`` and
  ``{"type": "read", "conversation", "seq"}`` exactly as on
  ``/api/v1/live/webchat`` (answered ``ok``/``error``).
- ``POST /console/chats/reply`` (form: ``csrf``, ``conversation``, ``text``)
  — the reply goes into the chat's ticket exactly as the ticket page's
  composer does (``note_create``, then the outbox), and the webchat
  connector pushes it to the visitor's socket as soon as it is journaled;
  it comes back to every watching agent as a ``message`` event. Answers
  JSON ``{"ok": true}`` or ``{"ok": false, "reason"}`` with 4xx.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from gateway import keys
from gateway import live as webchat_live
from gateway.auth import can_read_ticket
from gateway.console import views
from gateway.outbox import DISPATCHER
from gateway.store.base import NoReplyTarget, NotFound, ReplyDraft

log = structlog.get_logger(__name__)
HISTORY = 100  # messages of each chat in the snapshot


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/console/chats", chats_page)
    r.add_get("/console/chats/socket", chats_socket)
    r.add_post("/console/chats/reply", chats_reply)


def _conn(app: web.Application) -> Any:
    return app[keys.CONNECTORS].get("webchat")


async def chats_page(request: web.Request) -> web.Response:
    ctx = await views.principal(request)
    return views.render(request, "chats.html", ctx, configured=_conn(request.app) is not None,
                        presence=await views._presence(request, ctx.p))


async def snapshot(p: Any, conn: Any) -> list[dict]:
    """The chats ``p`` may see, each with its last :data:`HISTORY` messages."""
    out = []
    for chat in conn.hub.chats():
        conv = chat["conversation"]
        if not webchat_live.may_see(p, conn, conv):
            continue
        chat["messages"] = [f.public(conv) for f in await conn.transcript.history(conv, limit=HISTORY)]
        if not chat.get("ticket_id"):
            chat["ticket_id"] = (await conn.transcript.conversation(conv) or {}).get("ticket_id")
        out.append(chat)
    return out


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc == request.host


async def chats_socket(request: web.Request) -> web.StreamResponse:
    ctx = await views.principal(request)
    if not _same_origin(request):
        raise web.HTTPForbidden(text="cross-origin upgrade refused")
    conn = _conn(request.app)
    if conn is None:
        raise web.HTTPNotFound(text="the webchat channel is not configured")
    p = ctx.p
    ws = web.WebSocketResponse(heartbeat=25, max_msg_size=64 * 1024)
    await ws.prepare(request)
    await webchat_live.agent_session(ws, p, conn, await snapshot(p, conn))
    return ws


def _answer(status: int, reason: str | None = None) -> web.Response:
    body = {"ok": True} if reason is None else {"ok": False, "reason": reason}
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


async def chats_reply(request: web.Request) -> web.Response:
    ctx = await views.principal(request)
    form = await views.checked_form(request, ctx)
    app = request.app
    conn = _conn(app)
    conv, text = str(form.get("conversation", "")), str(form.get("text", ""))
    if conn is None:
        return _answer(404, "the webchat channel is not configured")
    if not webchat_live.may_see(ctx.p, conn, conv):
        return _answer(403, "not a chat of your team's sites")
    if not text.strip():
        return _answer(400, "empty reply")
    live = conn.hub.live.get(conv) or {}
    ticket_id = live.get("ticket_id") or (await conn.transcript.conversation(conv) or {}).get("ticket_id")
    if not ticket_id:
        return _answer(409, "this chat has no ticket yet")
    store = app[keys.STORE]
    record = await store.ticket_record(ticket_id)
    if record is None or not can_read_ticket(ctx.p, record):
        return _answer(403, "you may not open this chat's ticket")
    from gateway.api_types import ReplyBody
    from gateway.http_util import Problem
    from gateway.replies import _check_sendable

    try:
        await _check_sendable(app, record, ReplyBody(text=text))
        entry, _ = await store.note_create(ticket_id, ReplyDraft(text=text, author=ctx.p.agent_id, internal=False),
                                           views._now(request), [])
    except Problem as exc:
        return _answer(409, exc.detail or exc.title)
    except (NoReplyTarget, NotFound) as exc:
        return _answer(409, str(exc))
    app[DISPATCHER].wake()
    app[views.CONSOLE].bus.nudge()
    log.info("console.chat_reply", ticket_id=ticket_id, timeline_id=entry.id, author=ctx.p.agent_id)
    return _answer(200)
