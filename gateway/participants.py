"""``/api/v1/tickets/{id}/participants``: who, besides the ticket's contact,
may add to a ticket by replying to its mail (issue 10: a Message-ID is no
credential). The pipeline records the To/Cc of each person-written mail that
joins a ticket (``source: recipient``); an agent adds a Cc here
(``source: agent``). A participant's mail joins the ticket by its thread
headers but never changes where the replies go.
"""

from __future__ import annotations

import msgspec
import structlog
from aiohttp import web

from gateway import keys
from gateway.api import read_body, ticket_or_404
from gateway.api_types import Participant, ParticipantAdded, ParticipantBody, ParticipantPage
from gateway.auth import authenticate, visible_ticket
from gateway.http_util import Problem, json_response
from routing.identity import normalize
from routing.model import IDENTITY_KINDS, Identity

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


@routes.get("/api/v1/tickets/{id}/participants")
async def participants_list(request: web.Request) -> web.Response:
    p = await authenticate(request)
    ticket = await ticket_or_404(request)
    visible_ticket(p, ticket)
    rows = await request.app[keys.STORE].ticket_participants(ticket.id)
    return json_response(ParticipantPage(items=msgspec.convert(rows, list[Participant])))


@routes.post("/api/v1/tickets/{id}/participants")
async def participant_add(request: web.Request) -> web.Response:
    app = request.app
    p = await authenticate(request)
    body: ParticipantBody = await read_body(request, ParticipantBody)
    if body.kind not in IDENTITY_KINDS:
        raise Problem(422, "Invalid participant", f"unknown kind {body.kind!r}", field="$.kind")
    try:
        value = normalize(body.kind, body.value, app[keys.CONFIG].default_region)
    except ValueError as exc:
        raise Problem(422, "Invalid participant", str(exc), field="$.value") from None
    ticket = await ticket_or_404(request)
    visible_ticket(p, ticket)
    actor = p.agent_id
    await app[keys.STORE].ticket_participant_add(ticket.id, Identity(body.kind, value), "agent")
    log.info("ticket.participant_added", ticket_id=ticket.id, kind=body.kind, actor=actor)
    return json_response(ParticipantAdded(ticket_id=ticket.id, kind=body.kind, value=value, source="agent"), status=201)
