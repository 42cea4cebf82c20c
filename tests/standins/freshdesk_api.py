"""A Freshdesk stand-in speaking API v2 as documented: Basic auth
``<api key>:X``; ``GET /api/v2/agents/me``; tickets (create with ``email``
or ``phone`` + ``name`` as the requester, ``custom_fields``, status and
priority required; show; update ``status`` 2–5); ``GET /api/v2/tickets``
with ``updated_since``, ``per_page``/``page`` and a ``Link: <…>;
rel="next"`` header; ``GET /api/v2/search/tickets?query="cf_x:'v'"``;
notes (``POST /api/v2/tickets/{id}/notes``) and conversations (paged with
``Link``); errors as Freshdesk answers them (401 ``invalid_credentials``,
404, 400 ``Validation failed`` with ``errors[].field``, 429 with
``Retry-After``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.standins.desk_common import DeskStandin, iso
import base64


class FreshdeskApiStandin(DeskStandin):
    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == "Basic " + base64.b64encode(f"{self.token}:X".encode()).decode()

    def unauthorized(self) -> web.Response:
        return web.json_response({"code": "invalid_credentials", "message": "You have to be logged in to perform "
                                  "this action."}, status=401)

    def too_many(self, retry_after: int) -> web.Response:
        return web.json_response({"message": "You have exceeded the limit of requests per minute"}, status=429,
                                 headers={"Retry-After": str(retry_after), "X-RateLimit-Remaining": "0"})

    @staticmethod
    def not_found() -> web.Response:
        return web.Response(status=404)

    @staticmethod
    def invalid(field: str, message: str, code: str = "invalid_value") -> web.Response:
        return web.json_response({"description": "Validation failed", "errors": [
            {"field": field, "message": message, "code": code}]}, status=400)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v2/agents/me", self._me)
        app.router.add_get("/api/v2/search/tickets", self._search)
        app.router.add_get("/api/v2/tickets", self._list)
        app.router.add_post("/api/v2/tickets", self._create)
        app.router.add_get("/api/v2/tickets/{id}", self._show)
        app.router.add_put("/api/v2/tickets/{id}", self._update)
        app.router.add_post("/api/v2/tickets/{id}/notes", self._note)
        app.router.add_get("/api/v2/tickets/{id}/conversations", self._conversations)

    def conversation(self, ticket_id: int, body: str, *, user: int, private: bool, incoming: bool) -> int:
        cid = self.new_id()
        self.comments.setdefault(ticket_id, []).append({
            "id": cid, "ticket_id": ticket_id, "body": f"<div>{body}</div>", "body_text": body, "private": private,
            "incoming": incoming, "user_id": user, "source": 2, "created_at": iso(self.clock())})
        self.touch(ticket_id)
        return cid

    # ------------------------------------------------------------ what an agent does in the UI

    def agent_reply(self, ticket_id: int, text: str, *, public: bool = True) -> int:
        return self.conversation(ticket_id, text, user=self.agent_id, private=not public, incoming=False)

    def agent_status(self, ticket_id: int, status: str) -> None:
        self.tickets[ticket_id]["status"] = int(status)
        self.touch(ticket_id)

    # ------------------------------------------------------------ the API

    def _paged(self, request: web.Request, rows: list) -> web.Response:
        page = int(request.query.get("page", "1"))
        per_page = min(int(request.query.get("per_page", "30")), self.PAGE)
        chunk = rows[(page - 1) * per_page: page * per_page]
        headers = {}
        if page * per_page < len(rows):
            q = dict(request.query) | {"page": str(page + 1)}
            headers["Link"] = f'<{self.base}{request.path}?{"&".join(f"{k}={v}" for k, v in q.items())}>; rel="next"'
        return web.json_response(chunk, headers=headers)

    async def _me(self, request: web.Request) -> web.Response:
        return web.json_response({"id": self.api_user_id, "contact": self.users[self.api_user_id]})

    async def _search(self, request: web.Request) -> web.Response:
        q = request.query.get("query", "")
        if not (q.startswith('"') and q.endswith('"')):
            return self.invalid("query", "It should be a valid string enclosed in double quotes", "invalid_value")
        field, _, value = q.strip('"').partition(":")
        value = value.strip("'")
        found = [t for t in self.tickets.values() if str(t["custom_fields"].get(field)) == value]
        return web.json_response({"results": found, "total": len(found)})

    async def _list(self, request: web.Request) -> web.Response:
        since = request.query.get("updated_since")
        rows = [t for t in self.tickets.values() if since is None or t["updated_at"] >= since]
        rows.sort(key=lambda t: (t["updated_at"], t["id"]))
        return self._paged(request, rows)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = await request.json()
        for field in ("subject", "description", "status", "priority"):
            if field not in body:
                return self.invalid(field, "It should be a/an String" if field != "status" else "Missing field",
                                    "missing_field")
        if body["status"] not in (2, 3, 4, 5):
            return self.invalid("status", "It should be one of these values: '2,3,4,5'")
        if body.get("email"):
            uid = self.user_by("email", body["email"]) or self.user({"email": body["email"], "name": body.get("name")})
        elif body.get("phone"):
            if not body.get("name"):
                return self.invalid("name", "It should be a/an String", "missing_field")
            uid = self.user_by("phone", body["phone"]) or self.user({"phone": body["phone"], "name": body["name"]})
        else:
            return self.invalid("requester_id", "Please fill at least 1 of email, mobile, phone, twitter_id, "
                                "unique_external_id, facebook_id, requester_id fields", "missing_field")
        tid = self.new_id()
        now = iso(self.clock())
        self.tickets[tid] = {"id": tid, "subject": body["subject"], "description_text": body["description"],
                             "status": body["status"], "priority": body["priority"], "requester_id": uid,
                             "tags": body.get("tags") or [], "group_id": body.get("group_id"),
                             "custom_fields": body.get("custom_fields") or {}, "created_at": now, "updated_at": now}
        await self.stall()
        return web.json_response(self.tickets[tid], status=201)

    async def _show(self, request: web.Request) -> web.Response:
        t = self._ticket(request)
        return web.json_response(t) if t else self.not_found()

    async def _update(self, request: web.Request) -> web.Response:
        t = self._ticket(request)
        if t is None:
            return self.not_found()
        body = await request.json()
        if "status" in body:
            if body["status"] not in (2, 3, 4, 5):
                return self.invalid("status", "It should be one of these values: '2,3,4,5'")
            t["status"] = body["status"]
        self.touch(t["id"])
        return web.json_response(t)

    async def _note(self, request: web.Request) -> web.Response:
        t = self._ticket(request)
        if t is None:
            return self.not_found()
        body = await request.json()
        if not body.get("body"):
            return self.invalid("body", "It should not be blank as this is a mandatory field", "missing_field")
        cid = self.conversation(t["id"], body["body"], user=int(body.get("user_id") or self.api_user_id),
                                private=bool(body.get("private", True)), incoming=bool(body.get("incoming")))
        return web.json_response(self.comments[t["id"]][-1] | {"id": cid}, status=201)

    async def _conversations(self, request: web.Request) -> web.Response:
        t = self._ticket(request)
        return self._paged(request, self.comments.get(t["id"], [])) if t else self.not_found()
