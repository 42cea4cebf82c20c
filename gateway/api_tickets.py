"""``/api/v1`` tickets, contacts, timelines, tokens, mentions and the document.

Every handler: ``authenticate``/``require`` (``gateway/auth.py``), decode the
query or body into its Struct (``gateway/api_types.py``), one store call,
encode through a response Struct. The route table with the least roles is
``gateway/openapi.py``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import msgspec
import structlog
from aiohttp import web

from gateway import api_types as T
from gateway import keys
from gateway.api import read_body, ticket_or_404
from gateway.api_query import make_cursor, parse_query, query_hash, query_time, read_cursor
from gateway.auth import (
    AUTH,
    Principal,
    authenticate,
    can_manage_ticket,
    can_read_ticket,
    forbid,
    may_see_sensitive,
    redact_contact,
    require,
    visible_ticket,
)
from gateway.config import ConfigError, parse_duration
from gateway.http_util import Problem, json_response
from gateway.openapi import document
from gateway.store.base import InvalidTransition, NotFound, StoreError
from gateway.store.sqlite_tickets import TicketQuery, TicketRecord, TimelineRow, VersionMismatch
from routing.text import int64

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

def _now(request: web.Request):
    return request.app[keys.CLOCK]()


def actor_of(p: Principal) -> str:
    return p.agent_id


def etag(t: TicketRecord) -> dict[str, str]:
    return {"ETag": f'"{t.version}"'}


async def _record(request: web.Request, p: Principal) -> TicketRecord:
    t = await ticket_or_404(request)
    record = await request.app[keys.STORE].ticket_record(t.id)
    if record is None:
        raise Problem(404, "Not found", f"no ticket {request.match_info['id']}")
    visible_ticket(p, record)
    return record


# ---------------------------------------------------------------- tickets


@routes.get("/api/v1/tickets")
async def tickets_list(request: web.Request) -> web.Response:
    p = await authenticate(request)
    q: T.TicketListQuery = parse_query(request, T.TicketListQuery)
    assignees = [p.agent_id if a == "me" else a for a in q.assignee if a != "none"]
    sq = TicketQuery(status=list(q.status), priority=list(q.priority), team=list(q.team), assignee=assignees,
                     unassigned="none" in q.assignee and not assignees, channel=q.channel, tag=q.tag,
                     contact_id=q.contact, sort=q.sort)
    if "none" in q.assignee and assignees:
        raise Problem(400, "Invalid query", "assignee: `none` cannot be combined with agent ids", field="assignee")
    for name in ("created_after", "created_before", "updated_after", "updated_before"):
        value = query_time(request, getattr(q, name), name)
        if value is not None:
            setattr(sq, name, int(value.timestamp() * 1000))
    now = _now(request)
    if q.sla_breaching_within is not None:
        sq.sla_due_before = int((now + timedelta(minutes=q.sla_breaching_within)).timestamp() * 1000)
    sq.sla_breached = q.sla_breached
    if not p.is_admin:
        sq.visible_teams, sq.visible_agent = sorted(p.teams), p.agent_id
    qh = query_hash(q, p.agent_id if "me" in q.assignee else None)
    shape: tuple[type, ...] = (int, int) if q.sort == "updated" else (int, int, str)
    after = read_cursor(q.cursor, qh, shape) if q.cursor else None
    items, last = await request.app[keys.STORE].tickets_list(sq, after=after, limit=q.limit)
    return json_response(T.TicketPage(items=items, next_cursor=make_cursor(qh, last) if last else None))


@routes.get("/api/v1/tickets/{id}")
async def ticket_get(request: web.Request) -> web.Response:
    p = await authenticate(request)
    t = await _record(request, p)
    return json_response(t, headers=etag(t))


def _if_match(request: web.Request) -> int | None:
    value = request.headers.get("If-Match")
    if value is None or value.strip() == "*":
        return None
    tag = value.strip()
    if tag.startswith("W/"):
        tag = tag[2:]
    tag = tag.strip('"')
    version = int64(tag)
    if version is None:
        raise Problem(400, "Invalid header", "If-Match must be the ETag of a ticket (e.g. \"12\")", field="If-Match")
    return version


@routes.patch("/api/v1/tickets/{id}")
async def ticket_patch(request: web.Request) -> web.Response:
    p = await authenticate(request)
    body: T.TicketPatch = await read_body(request, T.TicketPatch)
    changes = {k: v for k, v in msgspec.structs.asdict(body).items() if k != "reason" and v is not msgspec.UNSET}
    if not changes:
        raise Problem(400, "Invalid request body", "nothing to change: give status, priority, team, assignee or tags",
                      field="$")
    expected = _if_match(request)
    t = await _record(request, p)
    app = request.app
    if set(changes) - {"status"} and not can_manage_ticket(p, t):
        names = ", ".join(sorted(set(changes) - {"status"}))
        raise forbid(f"changing {names} of ticket #{t.number} needs an admin, or a lead of team {t.team or '-'}")
    directory = app[keys.DIRECTORY]
    team = changes.get("team", msgspec.UNSET)
    if team is not msgspec.UNSET and team is not None:
        if directory is not None and directory.teams and team not in directory.teams:
            raise Problem(400, "Invalid request body", f"no team {team!r} in the directory", field="$.team")
        if not p.is_admin and team not in p.teams:
            raise forbid(f"{p.agent_id} may move tickets only within their teams ({', '.join(sorted(p.teams))})")
    assignee = changes.get("assignee", msgspec.UNSET)
    if assignee is not msgspec.UNSET and assignee is not None:
        agent = await app[keys.STORE].get_agent(assignee)
        if agent is None:
            raise Problem(400, "Invalid request body", f"no agent {assignee!r}", field="$.assignee")
        if not p.is_admin and not set(agent.teams) & p.teams:
            raise forbid(f"{p.agent_id} may assign only to members of their teams; {assignee} is not one")
    try:
        done = await app[keys.STORE].ticket_patch(t.id, changes, now=_now(request), actor=actor_of(p),
                                                  reason=body.reason, expected_version=expected)
    except VersionMismatch as exc:
        raise Problem(412, "Precondition failed", f"ticket #{t.number} changed since version {expected}: "
                      f"it is at {exc.current}; read it again", headers={"ETag": f'"{exc.current}"'}) from None
    except InvalidTransition as exc:
        raise Problem(409, "Invalid status transition", str(exc), field="$.status") from None
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    log.info("ticket.patched", ticket_id=t.id, fields=sorted(done), actor=p.agent_id)
    after = await app[keys.STORE].ticket_record(t.id)
    assert after is not None
    return json_response(after, headers=etag(after))


@routes.get("/api/v1/tickets/{id}/timeline")
async def ticket_timeline(request: web.Request) -> web.Response:
    p = await authenticate(request)
    t = await _record(request, p)
    return await _timeline(request, p, ticket_id=t.id)


# ---------------------------------------------------------------- timeline


def _item(p: Principal, row: TimelineRow) -> T.TimelineItem:
    e = row.entry
    if e.ticket_id and row.ticket_number is not None and not can_read_ticket(
            p, _TicketFacts(row.ticket_team, row.ticket_assignee)):
        return T.TimelineItem(id=e.id, at=e.at, kind="restricted", ticket_id=e.ticket_id,
                              ticket_number=row.ticket_number, channel=e.channel, restricted=True,
                              ticket_status=row.ticket_status, team=row.ticket_team)
    return T.entry_item(e, ticket_number=row.ticket_number)


class _TicketFacts(msgspec.Struct):
    team: str | None
    assignee: str | None


async def _timeline(request: web.Request, p: Principal, **scope: str) -> web.Response:
    q: T.TimelineQuery = parse_query(request, T.TimelineQuery)
    qh = query_hash(q, scope, exclude=("cursor", "limit", "start"))
    store = request.app[keys.STORE]
    if q.cursor:
        direction, at, seq = read_cursor(q.cursor, qh, (str, int, int))
        if direction not in ("a", "b"):
            raise Problem(400, "Invalid query", "cursor is not a cursor of this API", field="cursor")
        backward, position = direction == "b", (at, seq)
    else:
        backward, position = q.start == "end", None
    rows = await store.timeline_rows(kinds=list(q.kind), position=position, backward=backward, limit=q.limit + 1,
                                     **scope)
    more = len(rows) > q.limit
    if more:
        rows = rows[1:] if backward else rows[:-1]
    nxt = prev = None
    if rows:
        first, last = rows[0], rows[-1]
        after_more = more if not backward else position is not None
        before_more = more if backward else position is not None
        if after_more:
            nxt = make_cursor(qh, ["a", _ms(last.entry.at), last.seq])
        if before_more:
            prev = make_cursor(qh, ["b", _ms(first.entry.at), first.seq])
    return json_response(T.TimelinePage(items=[_item(p, r) for r in rows], next_cursor=nxt, prev_cursor=prev))


def _ms(d: Any) -> int:
    return int(d.timestamp() * 1000)


# ---------------------------------------------------------------- contacts


def _sensitive(request: web.Request) -> list[str]:
    return request.app[keys.CONFIG].rest.sensitive_attributes


@routes.get("/api/v1/contacts")
async def contacts_search(request: web.Request) -> web.Response:
    p = await authenticate(request)
    q: T.ContactSearchQuery = parse_query(request, T.ContactSearchQuery)
    store = request.app[keys.STORE]
    if q.kind is not None or q.value is not None:
        if q.kind is None or q.value is None:
            raise Problem(400, "Invalid query", "kind and value go together", field="kind" if q.kind is None
                          else "value")
        if q.name is not None:
            raise Problem(400, "Invalid query", "search by identity (kind, value) or by name, not both", field="name")
        from routing.identity import normalize

        value = q.value
        if q.kind == "wechat_openid" and q.appid and ":" not in value:
            value = f"{q.appid}:{value}"
        try:
            value = normalize(q.kind, value, request.app[keys.CONFIG].default_region)
        except ValueError as exc:
            raise Problem(400, "Invalid query", str(exc), field="value") from None
        contact = await store.contact_by_identity(q.kind, value)
        items = [contact] if contact is not None else []
        return json_response(T.ContactPage(items=[redact_contact(p, c, _sensitive(request)) for c in items]))
    if q.name is None:
        raise Problem(400, "Invalid query", "give kind and value, or name", field="kind")
    qh = query_hash(q)
    after = read_cursor(q.cursor, qh, (str,))[0] if q.cursor else None
    found = await store.contacts_by_name(q.name, after=after, limit=q.limit + 1)
    nxt = make_cursor(qh, [found[q.limit - 1].id]) if len(found) > q.limit else None
    return json_response(T.ContactPage(items=[redact_contact(p, c, _sensitive(request)) for c in found[:q.limit]],
                                       next_cursor=nxt))


async def _contact(request: web.Request):
    contact = await request.app[keys.STORE].get_contact(request.match_info["id"])
    if contact is None:
        raise Problem(404, "Not found", f"no contact {request.match_info['id']}")
    return contact


async def contact_view(request: web.Request, p: Principal, contact: Any) -> T.ContactView:
    contact = redact_contact(p, contact, _sensitive(request))
    tickets = await request.app[keys.STORE].tickets_of(contact.id)
    summaries = [T.TicketSummary(id=t.id, number=t.number, status=t.status, team=t.team, subject=t.subject)
                 if can_read_ticket(p, t) else
                 T.TicketSummary(id=t.id, number=t.number, status=t.status, team=t.team, restricted=True)
                 for t in tickets]
    return T.ContactView(**msgspec.structs.asdict(contact), tickets=summaries)


@routes.get("/api/v1/contacts/{id}")
async def contact_get(request: web.Request) -> web.Response:
    p = await authenticate(request)
    return json_response(await contact_view(request, p, await _contact(request)))


@routes.patch("/api/v1/contacts/{id}")
async def contact_patch(request: web.Request) -> web.Response:
    p = await authenticate(request)
    body: T.ContactPatch = await read_body(request, T.ContactPatch)
    if not may_see_sensitive(p):
        hidden = sorted(set(body.attributes) & set(_sensitive(request)))
        if hidden:
            raise forbid(f"attribute {hidden[0]} is sensitive: a lead or admin changes it")
    contact = await _contact(request)
    try:
        contact = await request.app[keys.STORE].contact_set_attributes(contact.id, body.attributes,
                                                                       actor=actor_of(p), now=_now(request))
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    except StoreError as exc:
        raise Problem(409, "Cannot change the contact", str(exc)) from None
    log.info("contact.attributes", contact_id=contact.id, keys=sorted(body.attributes), actor=p.agent_id)
    return json_response(await contact_view(request, p, contact))


@routes.get("/api/v1/contacts/{id}/timeline")
async def contact_timeline(request: web.Request) -> web.Response:
    p = await authenticate(request)
    contact = await _contact(request)
    return await _timeline(request, p, contact_id=contact.id)


@routes.get("/api/v1/contacts/{id}/audit")
async def contact_audit(request: web.Request) -> web.Response:
    await require(request, "lead")
    contact = await _contact(request)
    return json_response(T.AuditPage(items=await request.app[keys.STORE].contact_audit(contact.id)))


@routes.post("/api/v1/contacts/{id}/merge")
async def contact_merge(request: web.Request) -> web.Response:
    """Merge contact ``{id}`` into ``into``: its identities, tickets and
    timeline move (not copy) to ``into``; audited; undone by unmerge."""
    p = await require(request, "lead")
    body: T.MergeBody = await read_body(request, T.MergeBody)
    try:
        contact = await request.app[keys.STORE].merge_contacts(body.into, request.match_info["id"], actor_of(p),
                                                               body.reason)
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    except StoreError as exc:
        raise Problem(409, "Cannot merge", str(exc)) from None
    log.info("contact.merged", loser=request.match_info["id"], winner=body.into, actor=p.agent_id)
    return json_response(await contact_view(request, p, contact))


@routes.post("/api/v1/contacts/{id}/unmerge")
async def contact_unmerge(request: web.Request) -> web.Response:
    p = await require(request, "lead")
    body = await read_body(request, T.UnmergeBody, allow_empty=True)
    try:
        contact = await request.app[keys.STORE].unmerge_contact(request.match_info["id"], actor_of(p),
                                                                body.reason if body else None)
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    except StoreError as exc:
        raise Problem(409, "Cannot unmerge", str(exc)) from None
    log.info("contact.unmerged", contact_id=request.match_info["id"], actor=p.agent_id)
    return json_response(await contact_view(request, p, contact))


# ---------------------------------------------------------------- mentions


@routes.get("/api/v1/agents/{id}/mentions")
async def agent_mentions(request: web.Request) -> web.Response:
    p = await authenticate(request)
    agent_id = request.match_info["id"]
    store = request.app[keys.STORE]
    agent = await store.get_agent(agent_id)
    if agent is None:
        raise Problem(404, "Not found", f"no agent {agent_id}")
    if agent_id != p.agent_id and not p.is_admin and not (p.role == "lead" and set(agent.teams) & p.teams):
        raise forbid(f"{p.agent_id} may not read the mentions of {agent_id}")
    return json_response(T.MentionPage(items=await store.mentions_of(agent_id)))


# ---------------------------------------------------------------- tokens


@routes.get("/api/v1/tokens")
async def tokens_list(request: web.Request) -> web.Response:
    await require(request, "admin")
    q: T.TokenListQuery = parse_query(request, T.TokenListQuery)
    items = await request.app[keys.STORE].token_list(q.agent_id, include_revoked=q.include_revoked)
    return json_response(T.TokenList(items=items))


@routes.post("/api/v1/tokens")
async def tokens_create(request: web.Request) -> web.Response:
    p = await require(request, "admin")
    body: T.TokenCreateBody = await read_body(request, T.TokenCreateBody)
    store = request.app[keys.STORE]
    now = _now(request)
    expires = None
    if body.expires_in is not None:
        try:
            seconds = parse_duration(body.expires_in, "expires_in")
        except ConfigError as exc:
            raise Problem(400, "Invalid request body", str(exc), field="$.expires_in") from None
        if not 0 < seconds <= 10 * 366 * 86400:
            raise Problem(400, "Invalid request body", "expires_in must be between 1s and 10 years",
                          field="$.expires_in")
        expires = now + timedelta(seconds=seconds)
    if body.role != "admin" and await store.get_agent(body.agent_id) is None:
        raise Problem(400, "Invalid request body", f"no agent {body.agent_id!r} (agent and lead tokens act as an "
                      "agent of the directory)", field="$.agent_id")
    token, info = await store.token_create(body.agent_id, body.role, created_by=actor_of(p), now=now,
                                           expires_at=expires, note=body.note)
    log.info("token.created", token_id=info.id, agent_id=info.agent_id, role=info.role, actor=p.agent_id)
    return json_response(T.TokenCreated(**msgspec.structs.asdict(info), token=token), status=201)


@routes.delete("/api/v1/tokens/{id}")
async def tokens_revoke(request: web.Request) -> web.Response:
    p = await require(request, "admin")
    try:
        info = await request.app[keys.STORE].token_revoke(request.match_info["id"], actor=actor_of(p),
                                                          now=_now(request))
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    except StoreError as exc:
        raise Problem(409, "Cannot revoke", str(exc)) from None
    request.app[AUTH].invalidate(info.id)
    log.info("token.revoked", token_id=info.id, actor=p.agent_id)
    return json_response(info)


# ---------------------------------------------------------------- the document


@routes.get("/api/v1/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    await authenticate(request)
    return json_response(document())
