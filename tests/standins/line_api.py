"""A local stand-in for the LINE Messaging API (test code, never shipped).

It speaks https://developers.line.biz/en/reference/messaging-api/: the push
API ``POST /v2/bot/message/push`` (bearer channel access token, 1–5
messages, ``X-Line-Retry-Key``: a key already accepted answers 409 with
``X-Line-Accepted-Request-Id``), errors as ``{"message", "details"}`` with
429 for the rate limit, and ``GET /v2/bot/message/{id}/content`` (the
api-data host; one server plays both here).
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

RATE_LIMITED = (429, {"message": "The API rate limit has been exceeded. Try again later."}, {"Retry-After": "1"})
MONTHLY_LIMIT = (429, {"message": "You have reached your monthly limit."}, {})


@dataclass
class LineApiStandIn:
    tokens: set[str] = field(default_factory=set)
    pushed: list[dict[str, Any]] = field(default_factory=list)
    content: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    failures: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    accepted_keys: dict[str, str] = field(default_factory=dict)  # retry key → request id
    base: str = ""
    _ids: itertools.count = field(default_factory=lambda: itertools.count(100000000000001))

    def fail_next(self, error: tuple[int, dict[str, Any], dict[str, str]]) -> None:
        self.failures.append(error)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/bot/message/push", self._push)
        app.router.add_get("/v2/bot/message/{id}/content", self._content)
        return app

    def _auth(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            return web.json_response({"message": "Authentication failed. Confirm that the access token in the "
                                                 "authorization header is valid."}, status=401)
        return None

    async def _push(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        retry_key = request.headers.get("X-Line-Retry-Key")
        if retry_key is not None:
            try:
                uuid.UUID(retry_key)
            except ValueError:
                return web.json_response({"message": "The value of the X-Line-Retry-Key header is invalid"}, status=400)
            if retry_key in self.accepted_keys:
                return web.json_response({"message": "The retry key is already accepted"}, status=409,
                                         headers={"X-Line-Accepted-Request-Id": self.accepted_keys[retry_key]})
        if self.failures:
            status, body, headers = self.failures.pop(0)
            return web.json_response(body, status=status, headers=headers)
        body = await request.json()
        messages = body.get("messages")
        if not body.get("to") or not isinstance(messages, list) or not 1 <= len(messages) <= 5:
            return web.json_response({"message": "The request body has 1 error(s)",
                                      "details": [{"message": "Size must be between 1 and 5", "property": "messages"}]},
                                     status=400)
        for m in messages:
            if m.get("type") == "text" and not 1 <= len(m.get("text", "")) <= 5000:
                return web.json_response({"message": "The request body has 1 error(s)",
                                          "details": [{"message": "Length must be between 1 and 5000",
                                                       "property": "messages[0].text"}]}, status=400)
        request_id = str(uuid.uuid4())
        if retry_key is not None:
            self.accepted_keys[retry_key] = request_id
        self.pushed.append(body)
        return web.json_response({"sentMessages": [{"id": str(next(self._ids)), "quoteToken": "q"} for _ in messages]},
                                 headers={"X-Line-Request-Id": request_id})

    async def _content(self, request: web.Request) -> web.Response:
        refused = self._auth(request)
        if refused:
            return refused
        item = self.content.get(request.match_info["id"])
        if item is None:
            return web.json_response({"message": "Not found"}, status=404)
        mime, data = item
        return web.Response(body=data, content_type=mime)
