"""What the help-desk stand-ins (zammad_api, zendesk_api, freshdesk_api) share:
an in-memory desk whose tests steer rate limiting (``rate_limit(n, after)``:
the next ``n`` API calls answer 429 with ``Retry-After``), a stalled create
(``stall_creates``: the ticket is made but the answer never comes, as when
the desk is slow and the client times out), what an agent does in the desk's
UI (``agent_reply``, ``agent_status``), and a log of the calls."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timezone
from typing import Any, Callable

from aiohttp import web


def iso(d: datetime) -> str:
    return d.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class DeskStandin:
    """Subclasses add routes in ``routes(app)`` and answer errors in the desk's own shapes."""

    PAGE = 2  # small, so clients are seen following pages

    def __init__(self, token: str, clock: Callable[[], datetime]) -> None:
        self.token = token
        self.clock = clock
        self.base = ""
        self.tickets: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.stall_creates = 0
        self._limited = 0
        self._retry_after = 0
        self._ids = itertools.count(100)
        self.agent_id = self.user({"name": "Agent Smith", "email": "agent@desk.example", "role": "agent"})
        self.api_user_id = self.user({"name": "omnigate", "email": "api@desk.example", "role": "admin"})

    def new_id(self) -> int:
        return next(self._ids)

    def user(self, fields: dict) -> int:
        uid = self.new_id()
        self.users[uid] = {"id": uid, **fields}
        return uid

    def user_by(self, key: str, value: Any) -> int | None:
        return next((u["id"] for u in self.users.values() if value and u.get(key) == value), None)

    def rate_limit(self, n: int, retry_after: int) -> None:
        self._limited, self._retry_after = n, retry_after

    def app(self) -> web.Application:
        @web.middleware
        async def mw(request: web.Request, handler: Any) -> web.StreamResponse:
            self.calls.append((request.method, request.path))
            if not self.authorized(request):
                return self.unauthorized()
            if self._limited > 0:
                self._limited -= 1
                return self.too_many(self._retry_after)
            return await handler(request)

        app = web.Application(middlewares=[mw])
        self.routes(app)
        return app

    async def stall(self) -> None:
        """The answer to a create that is made but never answered (the client times out)."""
        if self.stall_creates > 0:
            self.stall_creates -= 1
            await asyncio.sleep(2)  # past the client's timeout (0.5 s in the tests)

    def _ticket(self, request: web.Request) -> dict | None:
        """The ticket of the path's ``{id}`` (None for an unknown or non-numeric id)."""
        try:
            return self.tickets.get(int(request.match_info["id"]))
        except ValueError:
            return None

    def touch(self, ticket_id: int) -> None:
        self.tickets[ticket_id]["updated_at"] = iso(self.clock())

    def created_count(self) -> int:
        return len(self.tickets)

    # to implement
    def routes(self, app: web.Application) -> None: ...
    def authorized(self, request: web.Request) -> bool: ...
    def unauthorized(self) -> web.Response: ...
    def too_many(self, retry_after: int) -> web.Response: ...
    def agent_reply(self, ticket_id: int, text: str, *, public: bool = True) -> int: ...
    def agent_status(self, ticket_id: int, status: str) -> None: ...
