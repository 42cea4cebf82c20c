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
from gateway.http_util import Problem, check_bearer, json_response
from routing.identity import normalize
from routing.model import IDENTITY_KINDS, Identity

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


class _ParticipantBody(msgspec.Struct, forbid_unknown_fields=True):
    value: str
    kind: str = "email"


@routes.get("/api/v1/tickets/{id}/participants")
async def participants_list(request: web.Request) -> web.Response:
    check_bearer(request, request.app[keys.CONFIG].api_token)
    ticket = await ticket_or_404(request)
    return json_response({"items": await request.app[keys.STORE].ticket_participants(ticket.id)})


@routes.post("/api/v1/tickets/{id}/participants")
async def participant_add(request: web.Request) -> web.Response:
    app = request.app
    check_bearer(request, app[keys.CONFIG].api_token)
    body: _ParticipantBody = await read_body(request, _ParticipantBody)
    if body.kind not in IDENTITY_KINDS:
        raise Problem(422, "Invalid participant", f"unknown kind {body.kind!r}", field="$.kind")
    try:
        value = normalize(body.kind, body.value, app[keys.CONFIG].default_region)
    except ValueError as exc:
        raise Problem(422, "Invalid participant", str(exc), field="$.value") from None
    ticket = await ticket_or_404(request)
    actor = request.headers.get("X-Omnigate-Actor") or "api"
    await app[keys.STORE].ticket_participant_add(ticket.id, Identity(body.kind, value), "agent")
    log.info("ticket.participant_added", ticket_id=ticket.id, kind=body.kind, actor=actor)
    return json_response({"ticket_id": ticket.id, "kind": body.kind, "value": value, "source": "agent"}, status=201)
