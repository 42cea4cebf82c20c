"""``/api/v1/webhooks``: endpoints, their delivery log, dead letters, replay.

Admin only (gateway/auth.py). Bodies and answers are the Structs of
``gateway/webhooks/types.py`` (and so the OpenAPI document). Secrets are
write-only: an endpoint made here without one gets a generated ``whsec_…``,
shown once in the creation answer. Endpoints from the configuration can be
enabled, disabled and replayed here, not edited or deleted.
"""

from __future__ import annotations

import base64
import secrets
from datetime import timezone
from typing import Any

import msgspec
from aiohttp import web

from gateway import keys
from gateway.api import read_body
from gateway.api_query import parse_query
from gateway.auth import require
from gateway.http_util import Problem, json_response
from gateway.store.base import NotFound, StoreError
from gateway.webhooks import types as W
from gateway.webhooks.catalogue import EVENTS
from gateway.webhooks.ssrf import Refused, check_url

routes = web.RouteTableDef()


def _svc(request: web.Request) -> Any:
    from gateway.webhooks.service import SERVICE

    return request.app[SERVICE]


def _public(ep: dict, stats: dict | None = None, secret: str | None = None) -> W.WebhookEndpoint:
    fields = {k: v for k, v in ep.items() if k not in ("secret", "cursor")}
    return msgspec.convert({**fields, "queued": 0, "dead": 0, **(stats or {}), "secret": secret}, W.WebhookEndpoint)


def _unprocessable(detail: str, field: str) -> Problem:
    return Problem(422, "Unprocessable Entity", detail, field=field)


def _check_fields(fields: dict) -> None:
    for e in fields.get("events") or ():
        p = e[:-1] if e.endswith("*") else e
        if not (p in EVENTS or (p.endswith(".") and any(t.startswith(p) for t in EVENTS))):
            raise _unprocessable(f"events: {e!r} is no event type or prefix", "events")
    if fields.get("secret") is not None:
        from standardwebhooks.webhooks import Webhook

        lines = [s.strip() for s in fields["secret"].splitlines() if s.strip()]
        try:
            if not lines:
                raise ValueError
            for s in lines:
                Webhook(s)
        except Exception:  # noqa: BLE001 - binascii and the library's own errors
            raise _unprocessable("secret must be whsec_ + base64 (one per line)", "secret") from None


def _check_target(url: str, allow_private: bool) -> None:
    try:
        check_url(url, allow_private)
    except (Refused, ValueError) as exc:
        raise _unprocessable(f"url: {exc}", "url") from None


async def _existing(request: web.Request) -> dict:
    name = request.match_info["name"]
    ep = await request.app[keys.STORE].webhook_endpoint(name)
    if ep is None:
        raise Problem(404, "Not Found", f"webhook endpoint {name!r} not found")
    return ep


@routes.get("/api/v1/webhooks")
async def list_endpoints(request: web.Request) -> web.Response:
    await require(request, "admin")
    store = request.app[keys.STORE]
    stats = await store.webhook_queue_stats()
    items = [_public(e, stats.get(e["name"])) for e in await store.webhook_endpoints()]
    return json_response(W.WebhookEndpointList(items=items, events=sorted(EVENTS)))


@routes.post("/api/v1/webhooks")
async def create_endpoint(request: web.Request) -> web.Response:
    await require(request, "admin")
    body: W.WebhookCreateBody = await read_body(request, W.WebhookCreateBody)
    fields = {k: v for k, v in msgspec.structs.asdict(body).items() if k != "name" and v is not None}
    _check_fields(fields)
    _check_target(body.url, body.allow_private)
    generated = None
    if body.secret is None:
        generated = fields["secret"] = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    try:
        ep = await request.app[keys.STORE].webhook_upsert(body.name, fields, source="api", now=_svc(request).clock(),
                                                          create_only=True)
    except StoreError as exc:
        raise Problem(409, "Conflict", str(exc)) from None
    _svc(request).wake()
    return json_response(_public(ep, secret=generated), status=201)


@routes.get("/api/v1/webhooks/{name}")
async def get_endpoint(request: web.Request) -> web.Response:
    await require(request, "admin")
    ep = await _existing(request)
    stats = await request.app[keys.STORE].webhook_queue_stats()
    return json_response(_public(ep, stats.get(ep["name"])))


@routes.patch("/api/v1/webhooks/{name}")
async def update_endpoint(request: web.Request) -> web.Response:
    await require(request, "admin")
    ep = await _existing(request)
    body: W.WebhookPatchBody = await read_body(request, W.WebhookPatchBody)
    fields = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
    if ep["source"] in ("config", "desk") and set(fields) - {"enabled"}:  # desk: a help desk's (gateway/desks/)
        raise Problem(409, "Conflict", f"endpoint {ep['name']!r} is defined in the configuration: change it there")
    _check_fields(fields)
    _check_target(fields.get("url", ep["url"]), fields.get("allow_private", ep["allow_private"]))
    store = request.app[keys.STORE]
    now = _svc(request).clock()
    enabled = fields.pop("enabled", None)
    if fields:
        ep = await store.webhook_upsert(ep["name"], fields, source=ep["source"], now=now)
    if enabled is not None:
        ep = await store.webhook_set_enabled(ep["name"], enabled, None if enabled else "disabled through the API",
                                             now)
    await _svc(request).refresh()
    _svc(request).wake()
    return json_response(_public(ep))


@routes.delete("/api/v1/webhooks/{name}")
async def delete_endpoint(request: web.Request) -> web.Response:
    await require(request, "admin")
    ep = await _existing(request)
    if ep["source"] in ("config", "desk"):
        raise Problem(409, "Conflict", f"endpoint {ep['name']!r} is defined in the configuration: remove it there")
    await request.app[keys.STORE].webhook_delete(ep["name"])
    await _svc(request).refresh()
    return web.Response(status=204)


async def _toggle(request: web.Request, enabled: bool) -> web.Response:
    await require(request, "admin")
    ep = await _existing(request)
    ep = await request.app[keys.STORE].webhook_set_enabled(
        ep["name"], enabled, None if enabled else "disabled through the API", _svc(request).clock())
    await _svc(request).refresh()
    _svc(request).wake()
    return json_response(_public(ep))


@routes.post("/api/v1/webhooks/{name}/enable")
async def enable_endpoint(request: web.Request) -> web.Response:
    """Resume (after a 410, say): events from now on, and those it had queued."""
    return await _toggle(request, True)


@routes.post("/api/v1/webhooks/{name}/disable")
async def disable_endpoint(request: web.Request) -> web.Response:
    return await _toggle(request, False)


@routes.get("/api/v1/webhooks/{name}/deliveries")
async def deliveries(request: web.Request) -> web.Response:
    await require(request, "admin")
    ep = await _existing(request)
    q: W.WebhookListQuery = parse_query(request, W.WebhookListQuery)
    items = await request.app[keys.STORE].webhook_deliveries(ep["name"], q.limit)
    return json_response(msgspec.convert({"items": items}, W.WebhookDeliveryPage))


@routes.get("/api/v1/webhooks/{name}/dead")
async def dead_letters(request: web.Request) -> web.Response:
    await require(request, "admin")
    ep = await _existing(request)
    q: W.WebhookListQuery = parse_query(request, W.WebhookListQuery)
    items = await request.app[keys.STORE].webhook_dead(ep["name"], q.limit)
    return json_response(msgspec.convert({"items": items}, W.WebhookDeadPage))


@routes.post("/api/v1/webhooks/{name}/replay")
async def replay(request: web.Request) -> web.Response:
    """Dead letters back into the queue: all, ``since`` a time, or one ``id``."""
    await require(request, "admin")
    ep = await _existing(request)
    body = await read_body(request, W.WebhookReplayBody, allow_empty=True) or W.WebhookReplayBody()
    since = body.since
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=timezone.utc)
    try:
        n = await request.app[keys.STORE].webhook_replay(ep["name"], since=since, event_id=body.id,
                                                         now=_svc(request).clock())
    except NotFound as exc:
        raise Problem(404, "Not Found", str(exc)) from None
    _svc(request).wake()
    return json_response(W.WebhookReplayResult(requeued=n), status=202)
