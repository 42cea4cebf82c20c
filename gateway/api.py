"""The REST API under ``/api/v1`` and the generic API channel.

Every ``/api/v1`` endpoint takes the bearer token and answers errors as
``application/problem+json`` (CONTRACTS.md). Handlers are thin: they check
the request, call one store operation, and encode the result.
"""

from __future__ import annotations

import re
from datetime import datetime

import msgspec
import structlog
from aiohttp import web

from connectors.http import read_body as read_whole
from connectors.api.parse import InvalidMessage, decode as decode_api_message, decode_uploads
from gateway import keys
from gateway.http_util import Problem, check_bearer, json_response
from gateway.store.base import JOURNAL_STATUSES, JournalEntry, NotFound, StoreError

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


def _token(request: web.Request) -> str | None:
    return request.app[keys.CONFIG].api_token


def journal_view(e: JournalEntry) -> dict:
    out: dict = {"id": e.id, "status": e.status, "channel": e.channel, "account": e.account,
                 "received_at": e.received_at.isoformat(), "size": e.size}
    if e.error:
        out["error"] = e.error
    if e.ticket_id:
        out["ticket_id"] = e.ticket_id
    if e.contact_id:
        out["contact_id"] = e.contact_id
    if e.processed_at:
        out["processed_at"] = e.processed_at.isoformat()
    return out


# ---------------------------------------------------------------- API channel


@routes.post("/channels/api/messages")
async def api_message(request: web.Request) -> web.Response:
    app = request.app
    check_bearer(request, _token(request))
    raw = await read_whole(request, app[keys.CONFIG].max_body_bytes)
    try:
        msg = decode_api_message(raw)
        decode_uploads(msg.attachments)  # what parse would fail on later is refused now
    except InvalidMessage as exc:
        app[keys.METRICS].rejected.labels("api", "invalid").inc()
        raise Problem(400, "Invalid message", str(exc), field=exc.field) from None
    account = msg.account or "api"
    result = await app[keys.INGEST].ingest("api", account, msg.external_id, raw, None)
    return json_response({"journal_id": result.journal_id}, status=202)


# ---------------------------------------------------------------- journal


@routes.get("/api/v1/journal/{id}")
async def journal_get(request: web.Request) -> web.Response:
    check_bearer(request, _token(request))
    entry = await request.app[keys.STORE].journal_get(request.match_info["id"])
    if entry is None:
        raise Problem(404, "Not found", f"no journal entry {request.match_info['id']}")
    return json_response(journal_view(entry))


@routes.get("/api/v1/journal")
async def journal_list(request: web.Request) -> web.Response:
    check_bearer(request, _token(request))
    q = request.query
    status = q.get("status")
    if status and status not in JOURNAL_STATUSES:
        raise Problem(400, "Invalid query", f"status must be one of {', '.join(JOURNAL_STATUSES)}", field="status")
    since = _parse_time(q.get("since"), "since", request.app[keys.CLOCK]())
    limit = _int(q.get("limit"), "limit", 100, 1, 1000)
    after = _int(q.get("cursor"), "cursor", 0, 0, None)
    entries = await request.app[keys.STORE].journal_list(status=status, since=since, after_seq=after, limit=limit)
    nxt = str(entries[-1].seq) if len(entries) == limit else None
    return json_response({"items": [journal_view(e) for e in entries], "next_cursor": nxt})


@routes.post("/api/v1/journal/{id}/replay")
async def journal_replay(request: web.Request) -> web.Response:
    check_bearer(request, _token(request))
    store = request.app[keys.STORE]
    jid = request.match_info["id"]
    if await store.journal_get(jid) is None:
        raise Problem(404, "Not found", f"no journal entry {jid}")
    n = await store.journal_requeue([jid])
    request.app[keys.WORKER].rescan()
    log.info("journal.replay_requested", journal_id=jid, requeued=n)
    return json_response({"id": jid, "requeued": bool(n)}, status=202)


# ---------------------------------------------------------------- tickets


def field_of(exc: msgspec.ValidationError) -> str | None:
    """The JSON path a msgspec validation error is about (``$.sender.kind``)."""
    text = str(exc)
    if " - at `" in text:
        return text.rsplit(" - at `", 1)[1].rstrip("`")
    m = re.search(r"(?:missing required field|unknown field) `([^`]+)`", text)
    return f"$.{m.group(1)}" if m else None


async def ticket_or_404(request: web.Request):
    """The ticket named by ``{id}`` in the path: its id or display number."""
    store = request.app[keys.STORE]
    ref = request.match_info["id"]
    ticket = await store.get_ticket(ref)
    number = ref.lstrip("#")
    if ticket is None and number.isdigit() and len(number) < 19:  # SQLite integers are 64-bit
        ticket = await store.get_ticket_by_number(int(number))
    if ticket is None:
        raise Problem(404, "Not found", f"no ticket {ref}")
    return ticket


@routes.get("/api/v1/tickets/{id}")
async def ticket_get(request: web.Request) -> web.Response:
    check_bearer(request, _token(request))
    return json_response(await ticket_or_404(request))


@routes.get("/api/v1/tickets/{id}/timeline")
async def ticket_timeline(request: web.Request) -> web.Response:
    check_bearer(request, _token(request))
    ticket = await ticket_or_404(request)
    return await _timeline(request, ticket_id=ticket.id)


# ---------------------------------------------------------------- contacts


async def _contact(request: web.Request):
    contact = await request.app[keys.STORE].get_contact(request.match_info["id"])
    if contact is None:
        raise Problem(404, "Not found", f"no contact {request.match_info['id']}")
    return contact


@routes.get("/api/v1/contacts/{id}")
async def contact_get(request: web.Request) -> web.Response:
    check_bearer(request, _token(request))
    contact = await _contact(request)
    tickets = await request.app[keys.STORE].tickets_of(contact.id)
    body = msgspec.to_builtins(contact)
    body["tickets"] = [{"id": t.id, "number": t.number, "status": t.status, "subject": t.subject} for t in tickets]
    return json_response(body)


@routes.get("/api/v1/contacts/{id}/timeline")
async def contact_timeline(request: web.Request) -> web.Response:
    check_bearer(request, _token(request))
    contact = await _contact(request)
    return await _timeline(request, contact_id=contact.id)


class _MergeBody(msgspec.Struct, forbid_unknown_fields=True):
    into: str
    reason: str | None = None


class _UnmergeBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None


@routes.post("/api/v1/contacts/{id}/merge")
async def contact_merge(request: web.Request) -> web.Response:
    """Merge contact ``{id}`` into ``into``: its identities, tickets and
    timeline move (not copy) to ``into``; audited; undone by unmerge."""
    check_bearer(request, _token(request))
    body = await read_body(request, _MergeBody)
    actor = request.headers.get("X-Omnigate-Actor", "api")
    try:
        contact = await request.app[keys.STORE].merge_contacts(body.into, request.match_info["id"], actor, body.reason)
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    except StoreError as exc:
        raise Problem(409, "Cannot merge", str(exc)) from None
    log.info("contact.merged", loser=request.match_info["id"], winner=body.into, actor=actor)
    return json_response(contact)


@routes.post("/api/v1/contacts/{id}/unmerge")
async def contact_unmerge(request: web.Request) -> web.Response:
    check_bearer(request, _token(request))
    body = await read_body(request, _UnmergeBody, allow_empty=True)
    actor = request.headers.get("X-Omnigate-Actor", "api")
    try:
        contact = await request.app[keys.STORE].unmerge_contact(request.match_info["id"], actor,
                                                                body.reason if body else None)
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    except StoreError as exc:
        raise Problem(409, "Cannot unmerge", str(exc)) from None
    log.info("contact.unmerged", contact_id=request.match_info["id"], actor=actor)
    return json_response(contact)


# ---------------------------------------------------------------- rules


@routes.post("/api/v1/rules/test")
async def rules_test(request: web.Request) -> web.Response:
    """Dry-run: where would this message go? (``omnigate rules test``)"""
    check_bearer(request, _token(request))
    rules = request.app[keys.RULES]
    if rules is None or rules.tree is None:
        raise Problem(409, "No rules loaded", "the gateway runs without a rules folder (rules_dir)")
    from routing.rules import InputError, dry_run

    body = decode_json(await read_whole(request, request.app[keys.CONFIG].max_body_bytes))
    try:
        answer = dry_run(rules.tree, body, now=request.app[keys.CLOCK](), calendars=rules.calendars)
    except InputError as exc:
        raise Problem(400, "Invalid message", str(exc), field=getattr(exc, "field", None)) from None
    return json_response(answer)


# ---------------------------------------------------------------- helpers


async def _timeline(request: web.Request, **where: str) -> web.Response:
    limit = _int(request.query.get("limit"), "limit", 50, 1, 500)
    try:
        page = await request.app[keys.STORE].timeline(cursor=request.query.get("cursor"), limit=limit, **where)
    except StoreError as exc:
        raise Problem(400, "Invalid query", str(exc), field="cursor") from None
    return json_response({"items": page.items, "next_cursor": page.next_cursor})


async def read_body(request: web.Request, typ: type, allow_empty: bool = False):
    """The JSON body decoded (strictly) as ``typ``; 400 naming the field at fault."""
    raw = await read_whole(request, request.app[keys.CONFIG].max_body_bytes)
    if allow_empty and not raw.strip():
        return None
    return decode_json(raw, typ)


def decode_json(raw: bytes, typ: type | None = None):
    """JSON (strictly as ``typ`` when given); 400 naming the field at fault,
    for invalid UTF-8 and absurd nesting too."""
    try:
        return msgspec.json.decode(raw) if typ is None else msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as exc:
        raise Problem(400, "Invalid request body", str(exc), field=field_of(exc)) from None
    except msgspec.DecodeError as exc:
        raise Problem(400, "Invalid request body", f"malformed JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise Problem(400, "Invalid request body", f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise Problem(400, "Invalid request body", "JSON nested too deeply") from None


def _int(value: str | None, name: str, default: int, lo: int, hi: int | None) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value) if len(value) < 30 else None
    except ValueError:
        n = None
    if n is None:
        raise Problem(400, "Invalid query", f"{name} must be an integer", field=name)
    hi = 2**63 - 1 if hi is None else hi  # SQLite integers are 64-bit
    if n < lo or (hi is not None and n > hi):
        raise Problem(400, "Invalid query", f"{name} must be between {lo} and {hi}", field=name)
    return n


def _parse_time(value: str | None, name: str, now: datetime) -> datetime | None:
    if not value:
        return None
    from gateway.timeparse import parse_time

    try:
        return parse_time(value, now=now)
    except ValueError as exc:
        raise Problem(400, "Invalid query", str(exc), field=name) from None
