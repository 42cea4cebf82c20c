"""``POST /api/v1/tickets/{id}/replies``: an agent's reply or internal note.

The handler checks the body, puts attachments into the attachment store,
and asks the store for one ``reply_create`` transaction (timeline entry,
outbox row, ticket update); the dispatcher (gateway/outbox.py) sends it
afterwards. A reply answers ``202`` (queued; the entry's
``data.delivery.status`` follows its fate), a note ``201`` (nothing to send).
"""

from __future__ import annotations

import asyncio
from typing import Any

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
from routing.model import Attachment, Template, utcnow

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


class _TemplateBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    language: str
    parameters: list[str] = msgspec.field(default_factory=list)


class _ReplyBody(msgspec.Struct, forbid_unknown_fields=True):
    text: str = ""
    subject: str | None = None
    html: str | None = None
    author: str | None = None
    internal: bool = False
    attachments: list[Upload] = msgspec.field(default_factory=list)
    #: an approved template (channels whose connector ``supports_templates``: WhatsApp)
    template: _TemplateBody | None = None


@routes.post("/api/v1/tickets/{id}/replies")
async def reply_create(request: web.Request) -> web.Response:
    app = request.app
    check_bearer(request, app[keys.CONFIG].api_token)
    body: _ReplyBody = await read_body(request, _ReplyBody)
    if not body.text.strip() and body.template is None:
        raise Problem(400, "Invalid request body", "text must not be empty", field="$.text")
    ticket = await ticket_or_404(request)
    template = await _check_channel(app, ticket, body)
    attachments = await _store_uploads(app[DISPATCHER].attachments, body.attachments)
    # a reply posted without an author comes from whoever holds the API token
    # (a help desk integration relaying an agent's answer): it is an agent reply
    author = body.author or request.headers.get("X-Omnigate-Actor") or "api"
    text = body.text if body.text.strip() or template is None else _template_text(template)
    draft = ReplyDraft(text=text, subject=body.subject, html=body.html, author=author,
                       internal=body.internal, attachments=attachments, template=template)
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


async def _check_channel(app: web.Application, ticket: Any, body: _ReplyBody) -> Template | None:
    """What the ticket's channel allows, checked at POST time: a template only
    where the connector ``supports_templates``; free text only inside the
    channel's reply window (WhatsApp: 24 hours since the customer last wrote),
    else 409 with the connector's reason."""
    target = ticket.reply_to
    connector = app[keys.CONNECTORS].get(target.channel) if target is not None else None
    if body.internal or target is None:
        if body.template is not None:
            raise Problem(400, "Invalid request body", "a note cannot be a template", field="$.template")
        return None
    if body.template is not None:
        if not getattr(connector, "supports_templates", False):
            raise Problem(400, "Invalid request body", f"channel {target.channel} has no message templates",
                          field="$.template")
        if body.attachments:
            raise Problem(400, "Invalid request body", "a template reply carries no attachments",
                          field="$.attachments")
        t = body.template
        return Template(name=t.name, language=t.language, parameters=list(t.parameters))
    window = getattr(connector, "window_refusal", None)
    if window is not None:
        last = await app[keys.STORE].last_inbound_at(ticket.contact_id, target.channel)
        reason = window(last, app.get(keys.CLOCK, utcnow)())
        if reason is not None:
            raise Problem(409, "Reply window closed", f"{reason}; send a template (field template)",
                          field="$.template")
    return None


def _template_text(t: Template) -> str:
    params = f": {' | '.join(t.parameters)}" if t.parameters else ""
    return f"[template {t.name} ({t.language})]{params}"


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