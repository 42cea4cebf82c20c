"""HTTP helpers every webhook connector shares (no gateway import).

:func:`read_body` reads a request body *whole*, up to a limit, however the
client's bytes arrive: aiohttp's ``request.content.read(n)`` returns what is
buffered so far, so one call loses the rest of a body sent in several TCP
segments (or larger than the first buffer). Chunked bodies are de-chunked by
aiohttp's stream, so looping until EOF covers them too.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

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
    try:
        async with asyncio.timeout(timeout):
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


_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 408: "Request timeout",
           413: "Payload too large", 503: "Service unavailable"}


def problem(status: int, detail: str, title: str | None = None) -> web.Response:
    """An RFC 9457 problem document (the gateway's format for every 4xx/5xx),
    for connectors, which do not import the gateway."""
    body = {"type": "about:blank", "title": title or _TITLES.get(status, "Error"), "status": status,
            "detail": detail}
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
