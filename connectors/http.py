"""HTTP helpers every webhook connector shares (no gateway import).

:func:`read_body` reads a request body *whole*, up to a limit, however the
client's bytes arrive: aiohttp's ``request.content.read(n)`` returns what is
buffered so far, so one call loses the rest of a body sent in several TCP
segments (or larger than the first buffer). Chunked bodies are de-chunked by
aiohttp's stream, so looping until EOF covers them too.

:func:`read_webhook` and :func:`journal` are the steps every pushed webhook
takes before its 200 (read whole → signature → decode → journal), each
refusal a :class:`Refused` that the handler turns into its problem answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Callable, TypeVar

from aiohttp import web

from connectors.base import ConnectorContext, IngestResult, PayloadRejected

T = TypeVar("T")

#: How long a client may take to send a whole webhook body (slowloris guard).
BODY_TIMEOUT_S = 30.0


class BodyTooLarge(web.HTTPRequestEntityTooLarge):
    """413, remembering the limit that applied (the channel's, not the global one)."""

    def __init__(self, limit: int, actual: int | None):
        super().__init__(max_size=limit, actual_size=actual if actual is not None else limit + 1)
        self.limit = limit


class BodyTimeout(web.HTTPRequestTimeout):
    """408: the client did not send the whole body in time."""


async def read_body(request: web.BaseRequest, max_bytes: int, *, timeout: float | None = BODY_TIMEOUT_S) -> bytes:
    """The whole body, or :class:`BodyTooLarge` past ``max_bytes`` (read no
    further), or :class:`BodyTimeout` when it takes longer than ``timeout``."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise BodyTooLarge(max_bytes, declared)
    body = bytearray()
    content = request.content
    # a body already received whole (a small webhook's usual case: one segment) cannot be slow:
    # no timer then — one per request was ~2 % of the loop under a flood of WeChat callbacks
    guard = contextlib.nullcontext() if content.is_eof() else asyncio.timeout(timeout)
    try:
        async with guard:
            while True:
                chunk = await content.read(max_bytes + 1 - len(body))
                if not chunk:
                    break
                body += chunk
                if len(body) > max_bytes:
                    raise BodyTooLarge(max_bytes, declared)
    except TimeoutError:
        raise BodyTimeout(text=f"the body was not received within {timeout:g} s") from None
    return bytes(body)


class Refused(Exception):
    """A webhook request refused with nothing stored: ``status`` and ``detail``
    make the problem answer, ``reason`` the log line (None: logged already,
    where it happened), ``metric`` the ``omnigate_rejected`` reason for
    connectors that count refusals."""

    def __init__(self, status: int, detail: str, *, reason: str | None = None, metric: str | None = None,
                 field: str | None = None):
        super().__init__(detail)
        self.status, self.detail, self.reason, self.metric, self.field = status, detail, reason, metric, field

    def answer(self, log: Any, event: str) -> web.Response:
        """Log the refusal (``event``, warning) and give its problem answer."""
        if self.reason is not None:
            log.warning(event, reason=self.reason, status=self.status)
        return problem(self.status, self.detail, field=self.field)


async def read_webhook(request: web.BaseRequest, max_bytes: int, decode: Callable[[bytes], T], *,
                       signature_header: str | None = None,
                       signature_ok: Callable[[bytes, str | None], bool] | None = None) -> tuple[bytes, T]:
    """(body, decoded body) of a webhook POST: read whole (:class:`Refused`
    413 past ``max_bytes``), its signature checked when ``signature_ok`` is
    given (``signature_ok(body, value of signature_header)``; 401), decoded
    (``decode`` raising :class:`PayloadRejected`: 400). A body that takes too
    long still raises :class:`BodyTimeout` (408)."""
    try:
        body = await read_body(request, max_bytes)
    except BodyTooLarge as exc:
        raise Refused(413, f"body larger than {exc.limit} bytes", reason="body too large", metric="too_large",
                      field="body") from None
    if signature_ok is not None and not signature_ok(body, request.headers.get(signature_header or "")):
        raise Refused(401, f"{signature_header} missing or wrong", reason="bad signature", metric="unauthorized",
                      field=signature_header)
    try:
        return body, decode(body)
    except PayloadRejected as exc:
        raise Refused(400, str(exc), reason=str(exc), metric="invalid", field="body") from None


async def journal(ctx: ConnectorContext, account: str, key: str, body: bytes, log: Any, event: str) -> IngestResult:
    """``ctx.ingest`` of a webhook body; when the journal cannot take it, the
    failure logged (``event``, with its traceback) and :class:`Refused` 503:
    the platform retries on a non-200."""
    try:
        return await ctx.ingest(account, key, body)
    except Exception:
        log.exception(event, key=key)
        raise Refused(503, "journal unavailable, retry later") from None


_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 408: "Request timeout",
           413: "Payload too large", 503: "Service unavailable"}


def problem(status: int, detail: str, title: str | None = None, *, field: str | None = None) -> web.Response:
    """An RFC 9457 problem document (the gateway's format for every 4xx/5xx),
    for connectors, which do not import the gateway; ``field`` names the
    part of the request at fault (a header, a query parameter, ``body``)."""
    body = {"type": "about:blank", "title": title or _TITLES.get(status, "Error"), "status": status,
            "detail": detail}
    if field:
        body["field"] = field
    return web.json_response(body, status=status, content_type="application/problem+json")


def client_ip(request: web.BaseRequest, trusted_proxies: "list[str] | tuple[str, ...]" = ()) -> str:
    """The client's IP: the peer's address, unless the peer is one of
    ``trusted_proxies`` (addresses or networks): then the right-most address of
    ``X-Forwarded-For`` (or ``Forwarded: for=``) that is not a trusted proxy
    itself. A header from anyone else is ignored (it is the client's to forge)."""
    import ipaddress

    peer = request.remote or ""
    if not trusted_proxies:
        return peer
    nets = []
    for p in trusted_proxies:
        try:
            nets.append(ipaddress.ip_network(p, strict=False))
        except ValueError:
            continue

    def trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in n for n in nets)

    if not trusted(peer):
        return peer
    hops: list[str] = []
    for value in request.headers.getall("X-Forwarded-For", []):
        hops += [h.strip() for h in value.split(",") if h.strip()]
    if not hops:
        for value in request.headers.getall("Forwarded", []):
            for part in value.split(","):
                for kv in part.split(";"):
                    k, _, v = kv.strip().partition("=")
                    if k.lower() == "for" and v:
                        v = v.strip('"')
                        if v.startswith("["):
                            v = v[1:].split("]")[0]
                        elif v.count(":") == 1:
                            v = v.split(":")[0]
                        hops.append(v)
    for hop in reversed(hops):
        if not trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage from a trusted proxy's client: use the proxy's own view
    return hops[0] if hops else peer
