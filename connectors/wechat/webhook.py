"""The parts of a callback request both WeChat and WeCom handle the same way.

Reading the whole body up to the channel's limit (413 past it, whatever the
TCP segmentation), keeping the query parameters a replay needs (never a
secret), the replay defences (timestamp window, nonce memory in the journal's
transaction), the refusal answers (logged and counted by reason), and the
durable ingest that comes before WeChat's ``success`` (503 when the journal
cannot take it, so WeChat retries).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping

import structlog
from aiohttp import web

from connectors.base import ConnectorContext, IngestResult, Nonce, NonceReused
from connectors.http import problem, read_body as _read_whole
from routing.model import utcnow

log = structlog.get_logger(__name__)

#: What WeChat wants back when there is no passive reply.
SUCCESS = "success"

#: The query parameters of a callback that parse needs again on replay.
CALLBACK_QUERY = ("signature", "timestamp", "nonce", "openid", "encrypt_type", "msg_signature")

#: How far a callback's timestamp may be from the gateway's clock, by default.
REPLAY_WINDOW_S = 300


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole request body, or 413 naming ``max_bytes`` when it is larger."""
    return await _read_whole(request, max_bytes)


def callback_meta(request: web.Request) -> dict[str, Any]:
    """What the journal keeps beside the raw body, for parse on replay."""
    query = {k: request.query[k] for k in CALLBACK_QUERY if k in request.query}
    return {"query": query, "url": request.path}


def refuse(status: int, reason: str, *, field: str | None = None, **bound: Any) -> web.Response:
    """An answer for a refused callback; the reason is logged and returned, with
    the part of the request at fault (``field``) when one is named."""
    log.warning("wechat.callback_refused", status=status, reason=reason, **bound)
    return problem(status, reason, field=field)


#: the part of the request a refusal's reason is about (CallbackGuard.refuse)
_FIELDS = {"bad_xml": "body", "not_encrypted": "body", "stale_timestamp": "timestamp", "nonce_reused": "nonce"}


def fallback_key(raw: bytes) -> str:
    """The idempotency key of a payload whose fields cannot be read (undecryptable)."""
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def timestamp_problem(timestamp: str, now: datetime, window_s: float) -> str | None:
    """Why a callback's ``timestamp`` is refused (None when within the window)."""
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return "timestamp is not a Unix time in seconds"
    ts = int(timestamp)
    skew = ts - now.timestamp()
    if abs(skew) > window_s:
        where = "ahead of" if skew > 0 else "behind"
        return f"timestamp is {abs(skew):.0f} s {where} the gateway's clock (window ±{window_s:g} s): a replay?"
    return None


class CallbackGuard:
    """The replay defences and refusal bookkeeping of one channel's callbacks."""

    def __init__(self, ctx: ConnectorContext, channel: str, window_s: float):
        self.ctx = ctx
        self.channel = channel
        self.window_s = window_s
        self.clock: Callable[[], datetime] = getattr(ctx, "clock", None) or utcnow
        self._count: Callable[[str], None] | None = getattr(ctx, "rejected", None)

    def refuse(self, status: int, reason: str, text: str, **bound: Any) -> web.Response:
        """Log, count by ``reason`` (a short metric label), answer ``text``."""
        if self._count is not None:
            self._count(reason)
        field = _FIELDS.get(reason) or (("msg_signature" if self.channel == "wecom" else "signature")
                                        if reason == "signature" else None)
        return refuse(status, text, field=field, **bound)

    def nonce(self, scope: str, query: Mapping[str, Any], **bound: Any) -> Nonce | web.Response:
        """The request's nonce to remember, or the refusal of a stale/odd timestamp.

        Called after the signature verified: timestamp and nonce are signed."""
        timestamp, value = str(query.get("timestamp") or ""), str(query.get("nonce") or "")
        if not (timestamp and value):
            return self.refuse(401, "signature", "timestamp or nonce missing from the query", **bound)
        now = self.clock()
        why = timestamp_problem(timestamp, now, self.window_s)
        if why is not None:
            return self.refuse(403, "stale_timestamp", why, **bound)
        expires = max(now, datetime.fromtimestamp(int(timestamp), now.tzinfo)) + timedelta(seconds=self.window_s)
        return Nonce(scope=scope, value=value, expires=expires, now=now)

    async def ingest(
        self, account: str, key: str, raw: bytes, meta: Mapping[str, Any], nonce: Nonce | None, /, **bound: Any
    ) -> IngestResult | web.Response:
        """Journal a payload with its nonce; a reused nonce with another body
        is 403 (nothing stored), a failing journal is 503 (the platform retries)."""
        try:
            if nonce is None:
                return await self.ctx.ingest(account, key, raw, meta)
            return await self.ctx.ingest(account, key, raw, meta, nonce=nonce)
        except NonceReused as exc:
            return self.refuse(403, "nonce_reused", str(exc), key=key, **bound)
        except Exception as exc:  # any journal failure: WeChat must retry, we must not answer success
            log.error("wechat.ingest_failed", key=key, error=type(exc).__name__, **bound)
            return problem(503, "journal unavailable")

