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
