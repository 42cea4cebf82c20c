"""``POST /api/v1/tickets/{id}/replies``: an agent's reply or internal note.

The handler checks the body, puts attachments into the attachment store,
and asks the store for one ``reply_create`` transaction (timeline entry,
outbox row, ticket update); the dispatcher (gateway/outbox.py) sends it
afterwards. A reply the channel will certainly refuse answers ``409`` with
the reason before anything is queued (a channel without a sending
connector; the connector's ``can_send`` verdict, e.g. WeChat's 48-hour
window or WhatsApp's 24-hour one); a ``template`` (name, language,
parameters) where the connector ``supports_templates`` (WhatsApp), ``400``
elsewhere; a subject or author with a line break ``422``. A reply answers
``202`` (queued; the entry's ``data.delivery.status`` follows its fate), a
note ``201`` (nothing to send). ``@agent-id`` mentions in a note are
recorded with it, in the same transaction, each with a ``note.mentioned``
outbox event.
"""

from __future__ import annotations

import re
from datetime import datetime

import structlog
from aiohttp import web

from gateway import keys
from connectors.api.parse import InvalidMessage, Upload, decode_uploads
from gateway.api import read_body, ticket_or_404
from gateway.api_types import ReplyBody
from gateway.attachments import AttachmentStore
from gateway.auth import authenticate, forbid, visible_ticket
from gateway.http_util import Problem, json_response
from gateway.outbox import DISPATCHER
from gateway.store.base import NoReplyTarget, NotFound, ReplyDraft
from routing.model import Attachment, Template

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


#: ``@agent-id`` in a note's text: not inside an email address or a word.
MENTION = re.compile(r"(?<![\w.@+-])@([A-Za-z0-9][A-Za-z0-9_.-]{0,99})")


def mentions_in(text: str) -> list[str]:
    """The agent ids a note mentions, in order, once each (trailing dots and dashes are punctuation)."""
    return list(dict.fromkeys(m.rstrip(".-") for m in MENTION.findall(text)))


@routes.post("/api/v1/tickets/{id}/replies")
async def reply_create(request: web.Request) -> web.Response:
    app = request.app
    p = await authenticate(request)
    body: ReplyBody = await read_body(request, ReplyBody)
    if not body.text.strip() and body.template is None:
        raise Problem(400, "Invalid request body", "text must not be empty", field="$.text")
    for name in ("subject", "author"):  # header material: a line break would inject headers, and never sends
        value = getattr(body, name)
        if value is not None and ("\r" in value or "\n" in value):
            raise Problem(422, "Invalid request body", f"{name} must not contain a line break (CR or LF)",
                          field=f"$.{name}")
    ticket = await ticket_or_404(request)
    visible_ticket(p, ticket)
    template = _template(app, ticket, body)
    if p.token_id is not None:  # a per-agent token always acts as its agent
        if body.author and body.author != p.agent_id:
            raise forbid(f"the token of {p.agent_id} cannot write as {body.author}")
        author = p.agent_id
    else:
        # the bootstrap token: a help desk integration relaying an agent's answer names them
        author = body.author or request.headers.get("X-Omnigate-Actor") or "api"
    if not body.internal:
        await _check_sendable(app, ticket, body, template)
    attachments = await _store_uploads(app[DISPATCHER].attachments, body.attachments)
    text = body.text if body.text.strip() or template is None else _template_text(template)
    draft = ReplyDraft(text=text, subject=body.subject, html=body.html, author=author,
                       internal=body.internal, attachments=attachments, template=template)
    try:
        entry, mentioned = await app[keys.STORE].note_create(
            ticket.id, draft, _now(app), mentions_in(body.text) if body.internal else [])
    except NoReplyTarget as exc:
        raise Problem(409, "Cannot reply", str(exc)) from None
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    if draft.public:
        app[DISPATCHER].wake()
    log.info("reply.created", ticket_id=ticket.id, timeline_id=entry.id, kind=entry.kind, author=entry.data["author"],
             mentions=len(mentioned))
    return json_response(entry, status=202 if draft.public else 201)


def _now(app: web.Application) -> datetime:
    return app[keys.CLOCK]()


def _template(app: web.Application, ticket, body: ReplyBody) -> Template | None:
    """The reply's template, checked: only on a channel whose connector
    ``supports_templates``, never on a note, without attachments."""
    if body.template is None:
        return None
    target = ticket.reply_to
    connector = app[keys.CONNECTORS].get(target.channel) if target is not None else None
    if body.internal:
        raise Problem(400, "Invalid request body", "a note cannot be a template", field="$.template")
    if not getattr(connector, "supports_templates", False):
        channel = target.channel if target is not None else "(none)"
        raise Problem(400, "Invalid request body", f"channel {channel} has no message templates", field="$.template")
    if body.attachments:
        raise Problem(400, "Invalid request body", "a template reply carries no attachments", field="$.attachments")
    t = body.template
    return Template(name=t.name, language=t.language, parameters=list(t.parameters))


def _template_text(t: Template) -> str:
    params = f": {' | '.join(t.parameters)}" if t.parameters else ""
    return f"[template {t.name} ({t.language})]{params}"


async def _check_sendable(app: web.Application, ticket, body: ReplyBody, template: Template | None = None) -> None:
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
    draft = ReplyDraft(text=body.text, subject=body.subject, html=body.html, author=body.author or "api",
                       template=template)
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
        a.storage_ref = await store.aput(a.data)
        a.data = None
    return decoded