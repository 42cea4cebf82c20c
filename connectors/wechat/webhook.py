"""The parts of a callback request both WeChat and WeCom handle the same way.

Reading a bounded body (413 past the limit), keeping the query parameters a
replay needs (never a secret), the refusal answers, and the durable ingest
that comes before WeChat's ``success`` (503 when the journal cannot take it,
so WeChat retries).
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import structlog
from aiohttp import web

from connectors.base import ConnectorContext, IngestResult

log = structlog.get_logger(__name__)

#: What WeChat wants back when there is no passive reply.
SUCCESS = "success"

#: The query parameters of a callback that parse needs again on replay.
CALLBACK_QUERY = ("signature", "timestamp", "nonce", "openid", "encrypt_type", "msg_signature")


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The request body, or 413 when it is larger than ``max_bytes``."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
    body = await request.content.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=len(body))
    return body


def callback_meta(request: web.Request) -> dict[str, Any]:
    """What the journal keeps beside the raw body, for parse on replay."""
    query = {k: request.query[k] for k in CALLBACK_QUERY if k in request.query}
    return {"query": query, "url": request.path}


def refuse(status: int, reason: str, **bound: Any) -> web.Response:
    """An answer for a refused callback; the reason is logged and returned."""
    log.warning("wechat.callback_refused", status=status, reason=reason, **bound)
    return web.Response(status=status, text=reason)


def fallback_key(raw: bytes) -> str:
    """The idempotency key of a payload whose fields cannot be read (undecryptable)."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


async def ingest(
    ctx: ConnectorContext, account: str, key: str, raw: bytes, meta: Mapping[str, Any], /, **bound: Any
) -> IngestResult | web.Response:
    """Journal a payload; a failing journal is 503, so the platform retries."""
    try:
        return await ctx.ingest(account, key, raw, meta)
    except Exception as exc:  # any journal failure: WeChat must retry, we must not answer success
        log.error("wechat.ingest_failed", key=key, error=type(exc).__name__, **bound)
        return web.Response(status=503, text="journal unavailable")
