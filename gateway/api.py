"""The REST API under ``/api/v1`` and the generic API channel.

Every ``/api/v1`` endpoint authenticates through ``gateway/auth.py`` (per-agent
tokens with roles, or the bootstrap token) and answers errors as
``application/problem+json`` (CONTRACTS.md). Handlers are thin: they check
the request, call one store operation, and encode the result through a
Struct of ``gateway/api_types.py`` (the OpenAPI document is made of them).
Tickets, contacts, timelines and tokens: ``gateway/api_tickets.py``.
"""

from __future__ import annotations

import re

import msgspec
import structlog
from aiohttp import web

from connectors.http import read_body as read_whole
from connectors.api.parse import (ApiMessage, InvalidMessage, decode as decode_api_message, decode_uploads,
                                  duplicate_key)
from gateway import fast_refusal, keys
from gateway.api_query import parse_query, query_time
from gateway.api_types import JournalPage, JournalQuery, JournalView, ReplayResult, RulesTestBody, RulesTestResult
from gateway.auth import require
from gateway.http_util import Problem, check_bearer, json_response
from gateway.ingest import Ingest
from gateway.store.base import JournalEntry
from routing.text import int64

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


def _token(request: web.Request) -> str | None:
    return request.app[keys.CONFIG].api_token


def journal_view(e: JournalEntry) -> JournalView:
    return JournalView(id=e.id, status=e.status, channel=e.channel, account=e.account,  # type: ignore[arg-type]
                       received_at=e.received_at, size=e.size, error=e.error or None, ticket_id=e.ticket_id,
                       contact_id=e.contact_id, processed_at=e.processed_at)


# ---------------------------------------------------------------- API channel


@routes.post("/channels/api/messages")
async def api_message(request: web.Request) -> web.Response:
    ingest = request.app[keys.INGEST]
    # admitted as the request was parsed, its gate credit taken then (gateway/fast_refusal.py)
    reserved = fast_refusal.claim(request)
    try:
        account, msg, raw = await _api_intake(request, ingest, reserved)
    except BaseException:
        if reserved:  # refused after all (400, 401, 413, the backlog limit) or gone: the credit goes back
            ingest.release()
        raise
    result = await ingest.ingest("api", account, msg.external_id, raw, None, reserved=reserved)
    return json_response({"journal_id": result.journal_id}, status=202)


async def _api_intake(request: web.Request, ingest: Ingest, reserved: bool) -> tuple[str, ApiMessage, bytes]:
    """The API channel's checks before the append: (account, message, body)."""
    app = request.app
    check_bearer(request, _token(request))
    # the pipeline is starved: refused before the body is read (gateway/admission.py); most such
    # refusals never get here, gateway/fast_refusal.py answers them as they are parsed
    if not reserved and ingest.shed():
        _refuse_for_load(request, "overloaded", OVERLOADED)
    raw = await read_whole(request, app[keys.CONFIG].max_body_bytes)
    try:
        if dup := duplicate_key(raw):
            raise InvalidMessage(f"{dup.rpartition('.')[2]} is given more than once", dup)
        msg = decode_api_message(raw)
        decode_uploads(msg.attachments)  # what parse would fail on later is refused now
    except InvalidMessage as exc:
        app[keys.METRICS].rejected.labels("api", "invalid").inc()
        raise Problem(exc.status, "Invalid message", str(exc), field=exc.field) from None
    if ingest.backlog_full():  # the optional limit: API callers retry (gateway/admission.py)
        _refuse_for_load(request, "backlog_full",
                         f"the pipeline's backlog reached pipeline.backlog_limit ({ingest.backlog.limit} entries)")
    return msg.account or "api", msg, raw


#: Why an intake is shed (``pipeline.admission_shed``).
OVERLOADED = "the pipeline is behind and this process is saturated"


def load_problem(reason: str, why: str, retry_after_s: int) -> Problem:
    """The API channel's refusal for load: 503 problem+json with
    ``Retry-After`` (its callers retry; no other channel is refused for load)."""
    retry = str(retry_after_s)
    title = "Backlog full" if reason == "backlog_full" else "Overloaded"
    return Problem(503, title, f"{why}: retry after {retry} s", headers={"Retry-After": retry})


def overloaded_problem(retry_after_s: int) -> Problem:
    """The refusal of a shed intake (also answered by gateway/fast_refusal.py
    before aiohttp builds a request, in the same bytes)."""
    return load_problem("overloaded", OVERLOADED, retry_after_s)


def _refuse_for_load(request: web.Request, reason: str, why: str) -> None:
    """Count and raise :func:`load_problem`."""
    app = request.app
    app[keys.METRICS].rejected.labels("api", reason).inc()
    raise load_problem(reason, why, app[keys.INGEST].retry_after_s)


# ---------------------------------------------------------------- journal


@routes.get("/api/v1/journal/{id}")
async def journal_get(request: web.Request) -> web.Response:
    await require(request, "lead")
    entry = await request.app[keys.STORE].journal_get(request.match_info["id"])
    if entry is None:
        raise Problem(404, "Not found", f"no journal entry {request.match_info['id']}")
    return json_response(journal_view(entry))


@routes.get("/api/v1/journal")
async def journal_list(request: web.Request) -> web.Response:
    await require(request, "lead")
    q: JournalQuery = parse_query(request, JournalQuery)
    since = query_time(request, q.since, "since")
    after = int(q.cursor) if q.cursor else 0
    entries = await request.app[keys.STORE].journal_list(status=q.status, since=since, after_seq=after, limit=q.limit)
    nxt = str(entries[-1].seq) if len(entries) == q.limit else None
    return json_response(JournalPage(items=[journal_view(e) for e in entries], next_cursor=nxt))


@routes.post("/api/v1/journal/{id}/replay")
async def journal_replay(request: web.Request) -> web.Response:
    p = await require(request, "admin")
    store = request.app[keys.STORE]
    jid = request.match_info["id"]
    if await store.journal_get(jid) is None:
        raise Problem(404, "Not found", f"no journal entry {jid}")
    n = await store.journal_requeue([jid])
    request.app[keys.WORKER].rescan()
    log.info("journal.replay_requested", journal_id=jid, requeued=n, actor=p.agent_id)
    return json_response(ReplayResult(id=jid, requeued=bool(n)), status=202)


# ---------------------------------------------------------------- tickets


def field_of(exc: msgspec.ValidationError) -> str | None:
    """The JSON path a msgspec validation error is about (``$.sender.kind``)."""
    text = str(exc)
    if " - at `" in text:
        return text.rsplit(" - at `", 1)[1].rstrip("`")
    m = re.search(r"(?:missing required field|unknown field) `([^`]+)`", text)
    return f"$.{m.group(1)}" if m else "$"  # msgspec names no path for the top level


async def ticket_or_404(request: web.Request):
    """The ticket named by ``{id}`` in the path: its id or display number."""
    store = request.app[keys.STORE]
    ref = request.match_info["id"]
    ticket = await store.get_ticket(ref)
    number = int64(ref.lstrip("#"))
    if ticket is None and number is not None:
        ticket = await store.get_ticket_by_number(number)
    if ticket is None:
        raise Problem(404, "Not found", f"no ticket {ref}")
    return ticket


# the ticket and contact endpoints are in gateway/api_tickets.py


# ---------------------------------------------------------------- rules


@routes.post("/api/v1/rules/test")
async def rules_test(request: web.Request) -> web.Response:
    """Dry-run: where would this message go? (``omnigate rules test``)"""
    await require(request, "lead")
    rules = request.app[keys.RULES]
    if rules is None or rules.tree is None:
        raise Problem(409, "No rules loaded", "the gateway runs without a rules folder (rules_dir)")
    from routing.rules import InputError, dry_run

    body: RulesTestBody = await read_body(request, RulesTestBody)
    fields = {k: v for k, v in msgspec.to_builtins(body).items() if v is not None}
    try:
        answer = dry_run(rules.tree, fields, now=request.app[keys.CLOCK](), calendars=rules.calendars)
    except InputError as exc:
        raise Problem(400, "Invalid message", str(exc), field=getattr(exc, "field", None)) from None
    return json_response(msgspec.convert(answer, RulesTestResult))


# ---------------------------------------------------------------- helpers


async def read_body(request: web.Request, typ: type, allow_empty: bool = False):
    """The JSON body decoded (strictly) as ``typ``; 400 naming the field at fault."""
    raw = await read_whole(request, request.app[keys.CONFIG].max_body_bytes)
    if allow_empty and not raw.strip():
        return None
    return decode_json(raw, typ)


def decode_json(raw: bytes, typ: type | None = None):
    """JSON (strictly as ``typ`` when given); 400 naming the field at fault,
    for invalid UTF-8, absurd nesting and a key given twice too."""
    if dup := duplicate_key(raw):
        raise Problem(400, "Invalid request body", f"{dup.rpartition('.')[2]} is given more than once", field=dup)
    try:
        return msgspec.json.decode(raw) if typ is None else msgspec.json.decode(raw, type=typ)
    except msgspec.ValidationError as exc:
        raise Problem(400, "Invalid request body", str(exc), field=field_of(exc)) from None
    except msgspec.DecodeError as exc:  # the body as a whole is at fault: its JSON path is "$"
        raise Problem(400, "Invalid request body", f"malformed JSON: {exc}", field="$") from None
    except UnicodeDecodeError as exc:
        raise Problem(400, "Invalid request body", f"the body is not UTF-8: {exc.reason} at byte {exc.start}",
                      field="$") from None
    except RecursionError:
        raise Problem(400, "Invalid request body", "JSON nested too deeply", field="$") from None

