"""Canned replies: kept in the store, rendered with the rules' template
syntax (``{contact_name}``, ``{ticket_number}``: ``routing.rules.validator.
TEMPLATE_VARIABLES``, ``str.format`` fields like the rules' auto-replies),
seeded from ``console.canned_replies_yaml``, managed by admins through
``/api/v1/canned-replies`` (typed in ``gateway/api_types.py``, listed in the
OpenAPI document) and the console; every agent may list and search them.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, AsyncIterator

import msgspec
import structlog
import yaml
from aiohttp import web

from gateway import api_types as T
from gateway import keys
from gateway.api import read_body
from gateway.api_query import parse_query
from gateway.auth import authenticate, require
from gateway.http_util import Problem, guarded_routes, json_response
from gateway.store.base import NotFound, StoreError
from routing.rules.validator import TEMPLATE_VARIABLES

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


class TemplateError(ValueError):
    pass


def check_template(text: str) -> None:
    """A bad placeholder or an unknown variable: TemplateError naming it."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise TemplateError(f"bad placeholder: {exc} (write {{{{ and }}}} for literal braces)") from None
    for name in names:
        if name not in TEMPLATE_VARIABLES:
            raise TemplateError(f"unknown placeholder {{{name}}}; known: "
                                + ", ".join("{" + v + "}" for v in TEMPLATE_VARIABLES))


def render(text: str, *, contact_name: str | None, ticket_number: int | None) -> str:
    """The canned reply with its variables filled in, as the rules' auto-replies fill theirs."""
    values = {"contact_name": contact_name or "", "ticket_number": "" if ticket_number is None else str(ticket_number)}
    try:
        return string.Formatter().vformat(text, (), values)
    except (KeyError, ValueError, IndexError):
        return text


class _Seed(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    text: str
    language: str | None = None


def load_seed(path: str) -> list[_Seed]:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or []
    items = msgspec.convert(raw, list[_Seed])
    for item in items:
        check_template(item.text)
    return items


async def _seed_ctx(app: web.Application) -> AsyncIterator[None]:
    path = app[keys.CONFIG].console.canned_replies_yaml
    if path:
        added = 0
        for item in load_seed(path):
            if await app[keys.STORE].canned_put(item.name, item.text, item.language, "seed", app[keys.CLOCK](),
                                                keep_existing=True):
                added += 1
        log.info("console.canned_seeded", file=path, added=added)
    yield


def setup(app: web.Application) -> None:
    path = app[keys.CONFIG].console.canned_replies_yaml
    if path:
        from gateway.app import StartupError

        try:
            load_seed(path)  # refuse a bad file at start, with the reason
        except (OSError, yaml.YAMLError, msgspec.ValidationError, TemplateError) as exc:
            raise StartupError(f"console.canned_replies_yaml {path}: {exc}") from None
    app.cleanup_ctx.append(_seed_ctx)
    app.router.add_routes(guarded_routes(routes))


# ---------------------------------------------------------------- /api/v1/canned-replies


def _body_checked(body: Any) -> None:
    if not body.name.strip():
        raise Problem(400, "Invalid request body", "name must not be empty", field="$.name")
    if not body.text.strip():
        raise Problem(400, "Invalid request body", "text must not be empty", field="$.text")
    try:
        check_template(body.text)
    except TemplateError as exc:
        raise Problem(400, "Invalid request body", str(exc), field="$.text") from None


@routes.get("/api/v1/canned-replies")
async def canned_list(request: web.Request) -> web.Response:
    await authenticate(request)
    q: T.CannedQuery = parse_query(request, T.CannedQuery)
    items = await request.app[keys.STORE].canned_list(q.q, limit=q.limit)
    return json_response(T.CannedPage(items=items))


@routes.post("/api/v1/canned-replies")
async def canned_create(request: web.Request) -> web.Response:
    p = await require(request, "admin")
    body: T.CannedBody = await read_body(request, T.CannedBody)
    _body_checked(body)
    try:
        item = await request.app[keys.STORE].canned_put(body.name.strip(), body.text, body.language, p.agent_id,
                                                        request.app[keys.CLOCK]())
    except StoreError as exc:
        raise Problem(409, "Conflict", str(exc), field="$.name") from None
    log.info("canned_reply.created", canned_id=item.id, actor=p.agent_id)
    return json_response(item, status=201)


@routes.put("/api/v1/canned-replies/{id}")
async def canned_replace(request: web.Request) -> web.Response:
    p = await require(request, "admin")
    body: T.CannedBody = await read_body(request, T.CannedBody)
    _body_checked(body)
    try:
        item = await request.app[keys.STORE].canned_put(body.name.strip(), body.text, body.language, p.agent_id,
                                                        request.app[keys.CLOCK](), request.match_info["id"])
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    except StoreError as exc:
        raise Problem(409, "Conflict", str(exc), field="$.name") from None
    return json_response(item)


@routes.delete("/api/v1/canned-replies/{id}")
async def canned_delete(request: web.Request) -> web.Response:
    p = await require(request, "admin")
    try:
        await request.app[keys.STORE].canned_delete(request.match_info["id"], p.agent_id, request.app[keys.CLOCK]())
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    return web.Response(status=204)
