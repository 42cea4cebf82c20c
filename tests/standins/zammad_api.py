"""A Zammad stand-in speaking its REST API as documented: ``Authorization:
Token token=…``; ``GET /api/v1/users/me``; tickets (create with a
``customer_id: "guess:<email>"`` and a first article, comma-separated
``tags``; show; update ``state``); ``GET /api/v1/tickets/search`` with
``query`` (``tags:X``, ``updated_at:>=ISO``), ``expand``, ``page`` and
``per_page``; articles (``POST /api/v1/ticket_articles``,
``GET /api/v1/ticket_articles/by_ticket/{id}``); errors as Zammad answers
them (401 ``authentication failed``, 404 ``Couldn't find Ticket``, 422
``No lookup value found for 'state'``, 429 with ``Retry-After``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.standins.desk_common import DeskStandin, iso

STATES = ("new", "open", "pending reminder", "pending close", "closed", "merged")


class ZammadApiStandin(DeskStandin):
    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Token token={self.token}"

    def unauthorized(self) -> web.Response:
        return web.json_response({"error": "authentication failed", "error_human": "Authentication failed"},
                                 status=401)

    def too_many(self, retry_after: int) -> web.Response:
        return web.json_response({"error": "Too many requests"}, status=429,
                                 headers={"Retry-After": str(retry_after)})

    @staticmethod
    def not_found() -> web.Response:
        return web.json_response({"error": "Couldn't find Ticket with 'id'"}, status=404)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/users/me", self._me)
        app.router.add_get("/api/v1/tickets/search", self._search)
        app.router.add_post("/api/v1/tickets", self._create)
        app.router.add_get("/api/v1/tickets/{id}", self._show)
        app.router.add_put("/api/v1/tickets/{id}", self._update)
        app.router.add_post("/api/v1/ticket_articles", self._article)
        app.router.add_get("/api/v1/ticket_articles/by_ticket/{id}", self._articles)

    def article(self, ticket_id: int, body: str, *, sender: str, internal: bool, by: int) -> int:
        aid = self.new_id()
        self.comments.setdefault(ticket_id, []).append({
            "id": aid, "ticket_id": ticket_id, "body": body, "type": "note", "internal": internal,
            "sender": sender, "created_by_id": by, "content_type": "text/plain", "created_at": iso(self.clock())})
        self.tickets[ticket_id]["article_ids"].append(aid)
        self.touch(ticket_id)
        return aid

    # ------------------------------------------------------------ what an agent does in the UI

    def agent_reply(self, ticket_id: int, text: str, *, public: bool = True) -> int:
        return self.article(ticket_id, text, sender="Agent", internal=not public, by=self.agent_id)

    def agent_status(self, ticket_id: int, status: str) -> None:
        self.tickets[ticket_id]["state"] = status
        self.touch(ticket_id)

    # ------------------------------------------------------------ the API

    async def _me(self, request: web.Request) -> web.Response:
        return web.json_response(self.users[self.api_user_id])

    async def _search(self, request: web.Request) -> web.Response:
        q = request.query.get("query", "")
        rows = list(self.tickets.values())
        for term in q.split(" AND "):
            field, _, value = term.partition(":")
            if field == "tags":
                rows = [t for t in rows if value in t["tags"]]
            elif field == "updated_at" and value.startswith(">="):
                rows = [t for t in rows if t["updated_at"] >= value[2:]]
            else:
                return web.json_response({"error": f"unsupported query {q!r}"}, status=422)
        rows.sort(key=lambda t: (t["updated_at"], t["id"]))
        page, per_page = int(request.query.get("page", "1")), min(int(request.query.get("per_page", "50")), self.PAGE)
        chunk = rows[(page - 1) * per_page: page * per_page]
        if request.query.get("expand") == "true":
            return web.json_response(chunk)
        return web.json_response({"tickets": [t["id"] for t in chunk], "tickets_count": len(rows)})

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        cust = str(body.get("customer_id") or "")
        if not cust.startswith("guess:") or "@" not in cust:
            return web.json_response({"error": "No lookup value found for 'customer': " + repr(cust)}, status=422)
        email = cust[len("guess:"):]
        uid = self.user_by("email", email) or self.user({"email": email, "role": "Customer"})
        tid = self.new_id()
        now = iso(self.clock())
        self.tickets[tid] = {"id": tid, "number": str(31000 + tid), "title": body.get("title"),
                             "group": body.get("group"), "customer_id": uid, "state": "new",
                             "tags": [s for s in str(body.get("tags") or "").split(",") if s],
                             "note": body.get("note"), "article_ids": [], "created_at": now, "updated_at": now}
        a = body.get("article") or {}
        if a.get("body"):
            self.article(tid, a["body"], sender=a.get("sender") or "Customer", internal=bool(a.get("internal")),
                         by=uid)
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
        if "state" in body:
            if body["state"] not in STATES:
                return web.json_response({"error": f"No lookup value found for 'state': {body['state']!r}"},
                                         status=422)
            t["state"] = body["state"]
        self.touch(t["id"])
        return web.json_response(t)

    async def _article(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        try:
            t = self.tickets.get(int(body.get("ticket_id")))
        except (TypeError, ValueError):
            t = None
        if t is None:
            return self.not_found()
        if not body.get("body"):
            return web.json_response({"error": "Need at least article: body"}, status=422)
        by = int(body.get("origin_by_id") or self.api_user_id)
        aid = self.article(t["id"], body["body"], sender=body.get("sender") or "Agent",
                           internal=bool(body.get("internal")), by=by)
        return web.json_response(self.comments[t["id"]][-1] | {"id": aid}, status=201)

    async def _articles(self, request: web.Request) -> web.Response:
        t = self._ticket(request)
        return web.json_response(self.comments.get(t["id"], [])) if t else self.not_found()
