"""``POST /api/v1/tickets/{id}/replies``: an agent's reply or internal note.

The handler checks the body, puts attachments into the attachment store,
and asks the store for one ``reply_create`` transaction (timeline entry,
outbox row, ticket update); the dispatcher (gateway/outbox.py) sends it
afterwards. A reply the channel will certainly refuse answers ``409`` with
the reason before anything is queued (a channel without a sending
connector; the connector's ``can_send`` verdict, e.g. WeChat's 48-hour
window); a subject or author with a line break ``422``. A reply answers ``202`` (queued; the entry's
``data.delivery.status`` follows its fate), a note ``201`` (nothing to send).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import msgspec
import structlog
from aiohttp import web

from gateway import keys
from connectors.api.parse import InvalidMessage, Upload, decode_uploads
from gateway.api import read_body, ticket_or_404
from gateway.attachments import AttachmentStore
from gateway.http_util import Problem, check_bearer, json_response
from gateway.outbox import DISPATCHER
from gateway.store.base import NoReplyTarget, NotFound, ReplyDraft
from routing.model import Attachment

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


class _ReplyBody(msgspec.Struct, forbid_unknown_fields=True):
    text: str
    subject: str | None = None
    html: str | None = None
    author: str | None = None
    internal: bool = False
    attachments: list[Upload] = msgspec.field(default_factory=list)


@routes.post("/api/v1/tickets/{id}/replies")
async def reply_create(request: web.Request) -> web.Response:
    app = request.app
    check_bearer(request, app[keys.CONFIG].api_token)
    body: _ReplyBody = await read_body(request, _ReplyBody)
    if not body.text.strip():
        raise Problem(400, "Invalid request body", "text must not be empty", field="$.text")
    for name in ("subject", "author"):  # header material: a line break would inject headers, and never sends
        value = getattr(body, name)
        if value is not None and ("\r" in value or "\n" in value):
            raise Problem(422, "Invalid request body", f"{name} must not contain a line break (CR or LF)",
                          field=f"$.{name}")
    ticket = await ticket_or_404(request)
    if not body.internal:
        await _check_sendable(app, ticket, body)
    attachments = await _store_uploads(app[DISPATCHER].attachments, body.attachments)
    # a reply posted without an author comes from whoever holds the API token
    # (a help desk integration relaying an agent's answer): it is an agent reply
    author = body.author or request.headers.get("X-Omnigate-Actor") or "api"
    draft = ReplyDraft(text=body.text, subject=body.subject, html=body.html, author=author,
                       internal=body.internal, attachments=attachments)
    try:
        entry = await app[keys.STORE].reply_create(ticket.id, draft)
    except NoReplyTarget as exc:
        raise Problem(409, "Cannot reply", str(exc)) from None
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    if draft.public:
        app[DISPATCHER].wake()
    log.info("reply.created", ticket_id=ticket.id, timeline_id=entry.id, kind=entry.kind, author=entry.data["author"])
    return json_response(entry, status=202 if draft.public else 201)


def _now(app: web.Application) -> datetime:
    return app[keys.CLOCK]()


async def _check_sendable(app: web.Application, ticket, body: _ReplyBody) -> None:
    """409 now, with the reason, for a reply the channel will certainly refuse
    (rather than 202 and a failure later): a channel that cannot send, or the
    connector's own ``can_send`` verdict on what the store knows."""
    target = ticket.reply_to
    if target is None:
        return  # reply_create answers this one (NoReplyTarget)
    connector = app[DISPATCHER].connectors.get(target.channel)  # the connectors, and the api channel's webhook sender
    if connector is None or not hasattr(connector, "send"):
        raise Problem(409, "Cannot reply", f"the {target.channel} channel cannot send replies (no running "
                      "connector sends on it); add an internal note instead", field="channel")
    can_send = getattr(connector, "can_send", None)
    if can_send is None:
        return
    draft = ReplyDraft(text=body.text, subject=body.subject, html=body.html, author=body.author or "api")
    facts = {**await app[keys.STORE].reply_facts(ticket.id, target.channel), "now": _now(app)}
    reason = can_send(draft.outbound("check", ticket, target), facts)
    if reason:
        raise Problem(409, "Cannot reply", reason, field="channel")


async def _store_uploads(store: AttachmentStore, uploads: list[Upload]) -> list[Attachment]:
    """Decode every upload first (400 naming the one that is not base64),
    then store them; the store's ref is the content's sha256."""
    try:
        decoded = decode_uploads(uploads)
    except InvalidMessage as exc:
        raise Problem(400, "Invalid request body", str(exc), field=exc.field) from None
    for a in decoded:
        a.storage_ref = await asyncio.to_thread(store.put, a.data)
        a.data = None
    return decoded