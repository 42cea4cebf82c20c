"""The OpenAPI 3.1 document of ``/api/v1``, generated — never hand-written.

One source of truth: :data:`OPS`, a small route table (method, path, the
least role, the query, body and response Structs of ``gateway/api_types.py``
that the handlers decode and encode through), and msgspec's JSON Schema for
those Structs (``msgspec.json.schema_components``). A test fails when the app
serves an ``/api/v1`` route the table lacks, or the other way round.

Served at ``GET /api/v1/openapi.json``; ``omnigate openapi`` prints it offline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway import api_types as T
from gateway import live as _live
from gateway.store.base import AgentView
from gateway.store.sqlite_tickets import TicketRecord
from routing.model import TimelineEntry

PROBLEM_TYPE = "application/problem+json"


@dataclass(frozen=True)
class Op:
    method: str
    path: str
    op_id: str
    summary: str
    role: str  # least role: agent | lead | admin
    tag: str
    ok: int = 200
    response: Any = None
    body: Any = None
    query: Any = None
    errors: tuple[int, ...] = ()
    description: str = ""
    etag: bool = False
    if_match: bool = False
    extra_ok: dict[int, Any] = field(default_factory=dict)


_ID = (404,)

OPS: list[Op] = [
    # tickets
    Op("GET", "/api/v1/tickets", "listTickets", "List tickets (filters, keyset cursor)", "agent", "tickets",
       response=T.TicketPage, query=T.TicketListQuery,
       description="Agents and leads see tickets of their teams and tickets assigned to them. Sorted by priority "
                   "then age (oldest first), or by last update (newest first). `next_cursor` continues the same "
                   "query; rows inserted meanwhile neither repeat nor vanish."),
    Op("GET", "/api/v1/tickets/{id}", "getTicket", "A ticket by id or display number", "agent", "tickets",
       response=TicketRecord, errors=_ID, etag=True),
    Op("PATCH", "/api/v1/tickets/{id}", "patchTicket", "Change status, priority, team, assignee, tags", "agent",
       "tickets", response=TicketRecord, body=T.TicketPatch, errors=(404, 409, 412), etag=True, if_match=True,
       description="Agents change the status of tickets they can open; leads change anything on their teams' "
                   "tickets (team and assignee within their teams); admins anything. `If-Match` with the "
                   "`ETag` of the version read: 412 when the ticket changed since. Every change is an `update` "
                   "timeline entry with who and why, and the outbox events `ticket.updated`, `ticket.assigned`, "
                   "`ticket.status_changed`."),
    Op("POST", "/api/v1/tickets/{id}/status", "setTicketStatus", "Change a ticket's status", "agent", "tickets",
       response=T.TicketStatusView, body=T.StatusBody, errors=(404, 409)),
    Op("GET", "/api/v1/tickets/{id}/participants", "ticketParticipants",
       "Who besides the contact may add to the ticket by mail", "agent", "tickets", response=T.ParticipantPage,
       errors=_ID),
    Op("POST", "/api/v1/tickets/{id}/participants", "addTicketParticipant",
       "Let an address (an agent's Cc) add to the ticket by replying to its mail", "agent", "tickets", ok=201,
       response=T.ParticipantAdded, body=T.ParticipantBody, errors=(404, 422),
       description="Anyone else quoting the ticket's Message-ID opens a ticket of their own that mentions this "
                   "one. A participant never changes where replies go."),
    Op("GET", "/api/v1/tickets/{id}/timeline", "ticketTimeline", "A ticket's timeline, paged both ways", "agent",
       "tickets", response=T.TimelinePage, query=T.TimelineQuery, errors=_ID),
    Op("POST", "/api/v1/tickets/{id}/replies", "createReply", "Reply to the customer, or add an internal note",
       "agent", "tickets", ok=202, response=TimelineEntry, body=T.ReplyBody, errors=(404, 409, 413, 422),
       extra_ok={201: TimelineEntry},
       description="A reply answers 202 (queued; `data.delivery.status` follows its fate), a note 201. "
                   "`@agent-id` in a note's text mentions that agent: recorded, and a `note.mentioned` event."),
    # contacts
    Op("GET", "/api/v1/contacts", "searchContacts", "Find contacts by identity or name", "agent", "contacts",
       response=T.ContactPage, query=T.ContactSearchQuery,
       description="`kind` and `value` find the contact holding that identity, the value normalized as at "
                   "ingest (E.164 phones, lower-cased emails, `appid:openid`); `name` finds contacts whose name "
                   "contains it. Agents do not see sensitive attributes."),
    Op("GET", "/api/v1/contacts/{id}", "getContact", "A contact, its identities and tickets", "agent", "contacts",
       response=T.ContactView, errors=_ID),
    Op("PATCH", "/api/v1/contacts/{id}", "patchContact", "Set or remove a contact's attributes", "agent",
       "contacts", response=T.ContactView, body=T.ContactPatch, errors=(404, 409),
       description="Agents may not change sensitive attributes (`rest.sensitive_attributes`)."),
    Op("GET", "/api/v1/contacts/{id}/timeline", "contactTimeline", "A contact's timeline, paged both ways", "agent",
       "contacts", response=T.TimelinePage, query=T.TimelineQuery, errors=_ID,
       description="Entries of tickets the caller may not open are summary lines (`restricted`): time, channel, "
                   "ticket number, status and team, no body."),
    Op("GET", "/api/v1/contacts/{id}/audit", "contactAudit", "Merges, unmerges and attribute changes", "lead",
       "contacts", response=T.AuditPage, errors=_ID),
    Op("POST", "/api/v1/contacts/{id}/merge", "mergeContact", "Merge this contact into another", "lead", "contacts",
       response=T.ContactView, body=T.MergeBody, errors=(404, 409)),
    Op("POST", "/api/v1/contacts/{id}/unmerge", "unmergeContact", "Undo a merge", "lead", "contacts",
       response=T.ContactView, body=T.UnmergeBody, errors=(404, 409)),
    # journal
    Op("GET", "/api/v1/journal", "listJournal", "Journal entries (e.g. `status=failed`)", "lead", "journal",
       response=T.JournalPage, query=T.JournalQuery),
    Op("GET", "/api/v1/journal/{id}", "getJournalEntry", "One journal entry", "lead", "journal",
       response=T.JournalView, errors=_ID),
    Op("POST", "/api/v1/journal/{id}/replay", "replayJournalEntry", "Run an entry through the pipeline again",
       "admin", "journal", ok=202, response=T.ReplayResult, errors=_ID),
    # agents
    Op("GET", "/api/v1/agents", "listAgents", "Agents, presence and load", "agent", "agents",
       response=T.AgentList),
    Op("GET", "/api/v1/agents/{id}", "getAgent", "One agent", "agent", "agents", response=AgentView, errors=_ID),
    Op("PUT", "/api/v1/agents/{id}", "putAgent", "Create or change an agent", "admin", "agents",
       response=T.AgentPutView, body=T.AgentBody, errors=(404, 409)),
    Op("PUT", "/api/v1/agents/{id}/presence", "setPresence", "Set an agent's presence", "agent", "agents",
       response=T.AgentPresenceView, body=T.PresenceBody, errors=_ID,
       description="Agents set their own presence; leads their team members'; admins anyone's."),
    Op("GET", "/api/v1/agents/{id}/mentions", "agentMentions", "Notes that mention an agent, newest first",
       "agent", "agents", response=T.MentionPage, errors=_ID),
    Op("GET", "/api/v1/stats", "stats", "Assignment and SLA counters", "lead", "agents", response=T.Stats),
    # tokens
    Op("GET", "/api/v1/tokens", "listTokens", "API tokens (never the tokens themselves)", "admin", "tokens",
       response=T.TokenList, query=T.TokenListQuery),
    Op("POST", "/api/v1/tokens", "createToken", "A new API token for an agent (shown once)", "admin", "tokens",
       ok=201, response=T.TokenCreated, body=T.TokenCreateBody),
    Op("DELETE", "/api/v1/tokens/{id}", "revokeToken", "Revoke a token (at once)", "admin", "tokens",
       response=T.TokenInfo, errors=_ID),
    # webchat's live chats (gateway/live.py)
    Op("GET", "/api/v1/live/webchat", "liveWebchat", "Live chats as a websocket (events both ways)", "agent",
       "webchat", ok=101, errors=(404,),
       description="A websocket: a `snapshot` of the live chats, then the hub's events (`chat`, `message`, "
                   "`ticket`, `typing`, `read`, `ended`); the agent sends `typing` and `read` frames. The token "
                   "goes in `Authorization` or in a first frame `{\"type\": \"auth\", \"token\"}`. Agents "
                   "see the chats of sites whose team is theirs. 404 without a webchat site."),
    Op("GET", "/api/v1/live/webchat/chats", "liveWebchatChats", "The live chats the caller may see", "agent",
       "webchat", response=_live.LiveChats, errors=(404,)),
    Op("POST", "/api/v1/live/webchat/typing", "liveWebchatTyping", "Show or stop \"agent is typing\"", "agent",
       "webchat", response=_live.LiveOk, body=_live.LiveTyping, errors=(404,)),
    Op("POST", "/api/v1/live/webchat/read", "liveWebchatRead", "Mark the visitor's messages read up to seq",
       "agent", "webchat", response=_live.LiveOk, body=_live.LiveRead, errors=(404,)),
    # rules, the document
    Op("POST", "/api/v1/rules/test", "testRules", "Dry-run the routing rules on a described message", "lead",
       "rules", response=T.RulesTestResult, body=T.RulesTestBody, errors=(409,)),
    Op("GET", "/api/v1/openapi.json", "openapi", "This document", "agent", "meta", response=None),
]


def _webhook_ops() -> list[Op]:
    """``/api/v1/webhooks`` (gateway/webhooks/routes.py)."""
    from gateway.webhooks import types as W

    ep = "/api/v1/webhooks/{name}"
    return [
        Op("GET", "/api/v1/webhooks", "listWebhooks", "Webhook endpoints, their queues and state", "admin",
           "webhooks", response=W.WebhookEndpointList),
        Op("POST", "/api/v1/webhooks", "createWebhook", "A new webhook endpoint (its secret shown once when "
           "generated)", "admin", "webhooks", ok=201, response=W.WebhookEndpoint, body=W.WebhookCreateBody,
           errors=(409, 422), description="It receives the events created from now on, never the backlog. "
           "Loopback, link-local and private addresses are refused (422) unless `allow_private`."),
        Op("GET", ep, "getWebhook", "One webhook endpoint", "admin", "webhooks", response=W.WebhookEndpoint,
           errors=_ID),
        Op("PATCH", ep, "patchWebhook", "Change an endpoint made through the API", "admin", "webhooks",
           response=W.WebhookEndpoint, body=W.WebhookPatchBody, errors=(404, 409, 422)),
        Op("DELETE", ep, "deleteWebhook", "Delete an endpoint made through the API (its queue too)", "admin",
           "webhooks", ok=204, errors=(404, 409)),
        Op("POST", ep + "/enable", "enableWebhook", "Resume an endpoint (after a 410, say)", "admin", "webhooks",
           response=W.WebhookEndpoint, errors=_ID),
        Op("POST", ep + "/disable", "disableWebhook", "Hold an endpoint's deliveries", "admin", "webhooks",
           response=W.WebhookEndpoint, errors=_ID),
        Op("GET", ep + "/deliveries", "webhookDeliveries", "The endpoint's delivery log, newest first", "admin",
           "webhooks", response=W.WebhookDeliveryPage, query=W.WebhookListQuery, errors=_ID),
        Op("GET", ep + "/dead", "webhookDeadLetters", "Events given up after the retry horizon", "admin",
           "webhooks", response=W.WebhookDeadPage, query=W.WebhookListQuery, errors=_ID),
        Op("POST", ep + "/replay", "replayWebhook", "Dead letters (all, since, or one id) back into the queue",
           "admin", "webhooks", ok=202, response=W.WebhookReplayResult, body=W.WebhookReplayBody, errors=_ID),
    ]


OPS += _webhook_ops()

_COMMON_ERRORS = {400: "Bad request: the parameter or field at fault is named in `field`",
                  401: "No bearer token, or an unknown, revoked or expired one",
                  403: "The token's role or teams do not allow this",
                  404: "No such object", 409: "The object's state does not allow this",
                  412: "The ticket changed since the `ETag` given in `If-Match`",
                  413: "The body is too large (`max_body_bytes`)",
                  422: "The body is well-formed but cannot be sent (e.g. a line break in a subject)",
                  429: "The token's rate limit is spent: retry after `Retry-After` seconds",
                  503: "The store cannot take this now: retry after `Retry-After` seconds"}


def _types() -> list[Any]:
    seen: list[Any] = [T.Problem]
    for op in OPS:
        for t in (op.response, op.body, op.query, *op.extra_ok.values()):
            if t is not None and t not in seen:
                seen.append(t)
    return seen


def _query_params(schema: dict, components: dict) -> list[dict]:
    props = schema.get("properties", {})
    required = set(schema.get("required", ()))
    params = []
    for name, prop in props.items():
        p: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if "description" in prop:
            p["description"] = prop["description"]
        if prop.get("type") == "array":
            p["style"], p["explode"] = "form", False
        params.append(p)
    return params


def _content(ref: dict) -> dict:
    return {"application/json": {"schema": ref}}


_doc_cache: dict[str, Any] = {}


def document(version: str | None = None) -> dict:
    """The OpenAPI 3.1 document (a plain dict, built once per process)."""
    if "doc" in _doc_cache:
        return _doc_cache["doc"]
    if version is None:
        try:
            from importlib.metadata import version as pkg_version

            version = pkg_version("omnigate")
        except Exception:  # noqa: BLE001 - not installed (a source checkout)
            version = "0"
    types = _types()
    (schemas, components) = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    by_type = dict(zip(types, schemas))
    query_types = {op.query for op in OPS if op.query is not None}
    paths: dict[str, dict] = {}
    for op in OPS:
        item: dict[str, Any] = {"operationId": op.op_id, "summary": op.summary, "tags": [op.tag]}
        role_note = f"Least role: `{op.role}`."
        item["description"] = (op.description + "\n\n" + role_note).strip()
        params: list[dict] = [{"name": name, "in": "path", "required": True,
                               "schema": {"type": "string", "minLength": 1, "maxLength": 200},
                               "description": "the ticket's id or display number" if "tickets/{id}" in op.path
                               else "the object's id"}
                              for name in re.findall(r"{(\w+)}", op.path)]
        if op.query is not None:
            params += _query_params(components[op.query.__name__], components)
        if op.if_match:
            params.append({"name": "If-Match", "in": "header", "required": False,
                           "schema": {"type": "string", "maxLength": 100},
                           "description": "the `ETag` of the version this change was decided on"})
        if params:
            item["parameters"] = params
        if op.body is not None:
            item["requestBody"] = {"required": True, "content": _content(by_type[op.body])}
        responses: dict[str, Any] = {}
        ok: dict[str, Any] = {"description": "OK"}
        if op.response is not None:
            ok["content"] = _content(by_type[op.response])
        elif op.op_id == "openapi":
            ok["content"] = {"application/json": {"schema": {"type": "object"}}}
        if op.etag:
            ok["headers"] = {"ETag": {"schema": {"type": "string"}, "description": "the ticket's version"}}
        responses[str(op.ok)] = ok
        for status, typ in op.extra_ok.items():
            responses[str(status)] = {"description": "OK", "content": _content(by_type[typ])}
        problem_ref = {"$ref": "#/components/responses/Problem"}
        for status in sorted({400, 401, 403, 429, 503, *op.errors, *((413,) if op.body is not None else ())}):
            responses[str(status)] = {"description": _COMMON_ERRORS[status],
                                      "content": {PROBLEM_TYPE: {"schema": by_type[T.Problem]}}}
            if status == 429 or status == 503:
                responses[str(status)]["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        responses["default"] = problem_ref
        item["responses"] = responses
        paths.setdefault(op.path, {})[op.method.lower()] = item
    for qt in query_types:  # parameters, not bodies: inlined above
        components.pop(qt.__name__, None)
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "omnigate API", "version": version,
                 "description": "The REST API of the omnigate gateway. Bearer tokens: per-agent tokens "
                                "(`omnigate tokens create`) or the bootstrap `OMNIGATE_API_TOKEN` (admin). "
                                "Errors are `application/problem+json` naming the parameter or field at fault."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in OPS)],
        "paths": paths,
        "webhooks": _webhook_events(),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "`og_…` per-agent token, or the bootstrap token"}},
            "responses": {"Problem": {"description": "A problem document",
                                      "content": {PROBLEM_TYPE: {"schema": by_type[T.Problem]}}}},
        },
    }
    _doc_cache["doc"] = doc
    return doc


def _webhook_events() -> dict:
    """The outbound events (gateway/webhooks/catalogue.py) as OpenAPI 3.1 webhooks."""
    from gateway.webhooks.catalogue import openapi_webhooks

    return openapi_webhooks()


def op_for(method: str, path: str) -> Op | None:
    for op in OPS:
        if op.method == method and op.path == path:
            return op
    return None


def documented_routes() -> set[tuple[str, str]]:
    return {(op.method, op.path) for op in OPS}

