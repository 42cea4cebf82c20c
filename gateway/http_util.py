"""HTTP helpers shared by the API and the channel routes: problem+json
errors, bearer-token checks, JSON responses encoded with msgspec."""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from aiohttp import web

_enc = msgspec.json.Encoder()
PROBLEM = "application/problem+json"


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=_enc.encode(data), status=status, content_type="application/json", headers=headers)


def problem(status: int, title: str, detail: str | None = None, **extra: Any) -> web.Response:
    """An RFC 9457 problem document."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update({k: v for k, v in extra.items() if v is not None})
    return web.Response(body=_enc.encode(body), status=status, content_type=PROBLEM)


class Problem(Exception):
    """Raise to answer a problem document from anywhere in a handler; the
    error middleware turns it into the response."""

    def __init__(self, status: int, title: str, detail: str | None = None, **extra: Any):
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.extra = extra

    def response(self) -> web.Response:
        return problem(self.status, self.title, self.detail, **self.extra)


def check_bearer(request: web.Request, token: str | None) -> None:
    """401 unless ``Authorization: Bearer <token>`` matches (constant time)."""
    if not token:
        raise Problem(401, "Unauthorized", "no API token is configured: set OMNIGATE_API_TOKEN or "
                      "OMNIGATE_API_TOKEN_FILE and restart", )
    auth = request.headers.get("Authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Problem(401, "Unauthorized", "missing or wrong bearer token")
