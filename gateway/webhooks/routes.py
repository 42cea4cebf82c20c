"""``/api/v1/webhooks``: endpoints, their delivery log, dead letters, replay.

Protected by the API bearer token for now; it must become admin-only when
per-agent tokens and roles land (gateway/auth.py). Secrets are write-only:
an endpoint made here without one gets a generated ``whsec_…``, shown once
in the creation answer. Endpoints from the configuration can be enabled,
disabled and replayed here, not edited or deleted.
"""

from __future__ import annotations

import base64
import re
import secrets
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from gateway import keys
from gateway.http_util import Problem, check_bearer, json_response
from gateway.store.base import NotFound, StoreError
from gateway.webhooks.catalogue import EVENTS
from gateway.webhooks.ssrf import Refused, check_url

routes = web.RouteTableDef()
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _svc(request: web.Request) -> Any:
    from gateway.webhooks.service import SERVICE

    return request.app[SERVICE]


def _auth(request: web.Request) -> None:
    check_bearer(request, request.app[keys.CONFIG].api_token)


def _public(ep: dict, stats: dict | None = None) -> dict:
    out = {k: v for k, v in ep.items() if k not in ("secret", "cursor")}
    out.update({"queued": 0, "dead": 0, **(stats or {})})
    return out


async def _body(request: web.Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise Problem(400, "Bad Request", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise Problem(400, "Bad Request", "the body must be a JSON object")
    return body


def _fields(body: dict, *, creating: bool) -> dict:
    allowed = {"url", "secret", "events", "allow_private", "enabled", "description"} | ({"name"} if creating else set())
    unknown = set(body) - allowed
    if unknown:
        raise Problem(422, "Unprocessable Entity", f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    fields = {k: v for k, v in body.items() if k != "name"}
    if "url" in fields and not isinstance(fields["url"], str):
        raise Problem(422, "Unprocessable Entity", "url must be a string", field="url")
    if "events" in fields:
        ev = fields["events"]
        if not isinstance(ev, list) or not all(isinstance(e, str) and e for e in ev):
            raise Problem(422, "Unprocessable Entity", "events must be a list of event types or prefixes",
                          field="events")
        for e in ev:
            p = e[:-1] if e.endswith("*") else e
            if not (p in EVENTS or (p.endswith(".") and any(t.startswith(p) for t in EVENTS))):
                raise Problem(422, "Unprocessable Entity", f"events: {e!r} is no event type or prefix",
                              field="events")
    for key in ("allow_private", "enabled"):
        if key in fields and not isinstance(fields[key], bool):
            raise Problem(422, "Unprocessable Entity", f"{key} must be true or false", field=key)
    if "secret" in fields:
        from standardwebhooks.webhooks import Webhook

        try:
            lines = [s for s in str(fields["secret"]).splitlines() if s.strip()]
            assert lines
            for s in lines:
                Webhook(s.strip())
        except Exception:  # noqa: BLE001
            raise Problem(422, "Unprocessable Entity", "secret must be whsec_ + base64 (one per line)",
                          field="secret") from None
    return fields


def _check_target(url: str, allow_private: bool) -> None:
    try:
        check_url(url, allow_private)
    except (Refused, ValueError) as exc:
        raise Problem(422, "Unprocessable Entity", f"url: {exc}", field="url") from None


async def _existing(request: web.Request, name: str) -> dict:
    ep = await request.app[keys.STORE].webhook_endpoint(name)
    if ep is None:
        raise Problem(404, "Not Found", f"webhook endpoint {name!r} not found")
    return ep


@routes.get("/api/v1/webhooks")
async def list_endpoints(request: web.Request) -> web.Response:
    _auth(request)
    store = request.app[keys.STORE]
    stats = await store.webhook_queue_stats()
    return json_response({"items": [_public(e, stats.get(e["name"])) for e in await store.webhook_endpoints()],
                          "events": sorted(EVENTS)})


@routes.post("/api/v1/webhooks")
async def create_endpoint(request: web.Request) -> web.Response:
    _auth(request)
    body = await _body(request)
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise Problem(422, "Unprocessable Entity", "name: lowercase letters, digits, - and _ (up to 64)", field="name")
    fields = _fields(body, creating=True)
    if "url" not in fields:
        raise Problem(422, "Unprocessable Entity", "url is required", field="url")
    _check_target(fields["url"], bool(fields.get("allow_private")))
    generated = "secret" not in fields
    if generated:
        fields["secret"] = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    store = request.app[keys.STORE]
    try:
        ep = await store.webhook_upsert(name, fields, source="api", now=_svc(request).clock(), create_only=True)
    except StoreError as exc:
        raise Problem(409, "Conflict", str(exc)) from None
    out = _public(ep)
    if generated:
        out["secret"] = fields["secret"]  # shown this once
    _svc(request).wake()
    return json_response(out, status=201)


@routes.get("/api/v1/webhooks/{name}")
async def get_endpoint(request: web.Request) -> web.Response:
    _auth(request)
    name = request.match_info["name"]
    ep = await _existing(request, name)
    stats = await request.app[keys.STORE].webhook_queue_stats()
    return json_response(_public(ep, stats.get(name)))


@routes.patch("/api/v1/webhooks/{name}")
async def update_endpoint(request: web.Request) -> web.Response:
    _auth(request)
    name = request.match_info["name"]
    ep = await _existing(request, name)
    fields = _fields(await _body(request), creating=False)
    if ep["source"] == "config" and set(fields) - {"enabled"}:
        raise Problem(409, "Conflict", f"endpoint {name!r} is defined in the configuration: change it there")
    _check_target(fields.get("url", ep["url"]), fields.get("allow_private", ep["allow_private"]))
    store = request.app[keys.STORE]
    now = _svc(request).clock()
    enabled = fields.pop("enabled", None)
    if fields:
        ep = await store.webhook_upsert(name, fields, source=ep["source"], now=now)
    if enabled is not None:
        ep = await store.webhook_set_enabled(name, enabled, None if enabled else "disabled through the API", now)
    await _svc(request).refresh()
    _svc(request).wake()
    return json_response(_public(ep))


@routes.delete("/api/v1/webhooks/{name}")
async def delete_endpoint(request: web.Request) -> web.Response:
    _auth(request)
    name = request.match_info["name"]
    ep = await _existing(request, name)
    if ep["source"] == "config":
        raise Problem(409, "Conflict", f"endpoint {name!r} is defined in the configuration: remove it there")
    await request.app[keys.STORE].webhook_delete(name)
    await _svc(request).refresh()
    return web.Response(status=204)


async def _toggle(request: web.Request, enabled: bool) -> web.Response:
    _auth(request)
    name = request.match_info["name"]
    await _existing(request, name)
    ep = await request.app[keys.STORE].webhook_set_enabled(
        name, enabled, None if enabled else "disabled through the API", _svc(request).clock())
    await _svc(request).refresh()
    _svc(request).wake()
    return json_response(_public(ep))


@routes.post("/api/v1/webhooks/{name}/enable")
async def enable_endpoint(request: web.Request) -> web.Response:
    return await _toggle(request, True)


@routes.post("/api/v1/webhooks/{name}/disable")
async def disable_endpoint(request: web.Request) -> web.Response:
    return await _toggle(request, False)


def _limit(request: web.Request, default: int = 100) -> int:
    raw = request.query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise Problem(400, "Bad Request", "limit must be 1 to 1000", field="limit")
    return int(raw)


@routes.get("/api/v1/webhooks/{name}/deliveries")
async def deliveries(request: web.Request) -> web.Response:
    _auth(request)
    name = request.match_info["name"]
    await _existing(request, name)
    return json_response({"items": await request.app[keys.STORE].webhook_deliveries(name, _limit(request))})


@routes.get("/api/v1/webhooks/{name}/dead")
async def dead_letters(request: web.Request) -> web.Response:
    _auth(request)
    name = request.match_info["name"]
    await _existing(request, name)
    return json_response({"items": await request.app[keys.STORE].webhook_dead(name, _limit(request))})


@routes.post("/api/v1/webhooks/{name}/replay")
async def replay(request: web.Request) -> web.Response:
    """Dead letters back into the queue: all, ``since`` (ISO time), or one ``id``."""
    _auth(request)
    name = request.match_info["name"]
    await _existing(request, name)
    body = await _body(request) if request.can_read_body else {}
    since = None
    if body.get("since") is not None:
        try:
            since = datetime.fromisoformat(str(body["since"]).replace("Z", "+00:00"))
        except ValueError:
            raise Problem(422, "Unprocessable Entity", "since must be an ISO 8601 time", field="since") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
    event_id = body.get("id")
    if event_id is not None and not isinstance(event_id, str):
        raise Problem(422, "Unprocessable Entity", "id must be an event id", field="id")
    try:
        n = await request.app[keys.STORE].webhook_replay(name, since=since, event_id=event_id,
                                                         now=_svc(request).clock())
    except NotFound as exc:
        raise Problem(404, "Not Found", str(exc)) from None
    _svc(request).wake()
    return json_response({"requeued": n}, status=202)
