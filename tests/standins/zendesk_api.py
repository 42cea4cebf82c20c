"""A Zendesk stand-in speaking the Tickets API v2 as documented: Basic auth
``email/token:TOKEN``; ``GET /api/v2/users/me.json``; tickets (create with a
requester by e-mail, ``external_id``, tags, an ``Idempotency-Key`` header
answered from its memory with ``x-idempotency-lookup: hit``; show; update
with a comment and/or status, answered with the audit naming the comment);
``GET /api/v2/tickets.json?external_id=``; comments with ``next_page``
pagination; the incremental cursor export
(``/api/v2/incremental/tickets/cursor.json`` with ``start_time`` then
``cursor``, ``after_cursor``, ``end_of_stream``); errors as Zendesk answers
them (401 ``Couldn't authenticate you``, 404 ``RecordNotFound``, 422
``RecordInvalid``, 429 ``APIRateLimitExceeded`` with ``Retry-After``)."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from aiohttp import web

from tests.standins.desk_common import DeskStandin, iso

STATUSES = ("new", "open", "pending", "hold", "solved", "closed")


class ZendeskApiStandin(DeskStandin):
    def __init__(self, email: str, token: str, clock: Any) -> None:
        self.email = email
        super().__init__(token, clock)
        self.idempotency: dict[str, tuple[str, dict]] = {}  # key → (request body, response)
        self.seq = 0  # update order (the cursor export's order)

    def authorized(self, request: web.Request) -> bool:
        want = "Basic " + base64.b64encode(f"{self.email}/token:{self.token}".encode()).decode()
        return request.headers.get("Authorization") == want

    def unauthorized(self) -> web.Response:
        return web.json_response({"error": "Couldn't authenticate you"}, status=401)

    def too_many(self, retry_after: int) -> web.Response:
        return web.json_response({"error": "APIRateLimitExceeded", "description": "Number of allowed API requests "
                                  "per minute exceeded"}, status=429, headers={"Retry-After": str(retry_after)})

    @staticmethod
    def not_found() -> web.Response:
        return web.json_response({"error": "RecordNotFound", "description": "Not found"}, status=404)

    @staticmethod
    def invalid(field: str, why: str) -> web.Response:
        return web.json_response({"error": "RecordInvalid", "description": "Record validation errors",
                                  "details": {field: [{"description": why}]}}, status=422)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v2/users/me.json", self._me)
        app.router.add_get("/api/v2/tickets.json", self._list)
        app.router.add_post("/api/v2/tickets.json", self._create)
        app.router.add_get("/api/v2/tickets/{id}.json", self._show)
        app.router.add_put("/api/v2/tickets/{id}.json", self._update)
        app.router.add_get("/api/v2/tickets/{id}/comments.json", self._comments)
        app.router.add_get("/api/v2/incremental/tickets/cursor.json", self._incremental)

    def touch(self, ticket_id: int) -> None:
        super().touch(ticket_id)
        self.seq += 1
        self.tickets[ticket_id]["_seq"] = self.seq

    @staticmethod
    def view(t: dict) -> dict:
        return {k: v for k, v in t.items() if not k.startswith("_")}

    def comment(self, ticket_id: int, body: str, author: int, public: bool) -> int:
        cid = self.new_id()
        self.comments.setdefault(ticket_id, []).append({
            "id": cid, "type": "Comment", "author_id": author, "body": body, "plain_body": body, "public": public,
            "created_at": iso(self.clock())})
        if author == self.agent_id and public and self.tickets[ticket_id]["status"] == "new":
            self.tickets[ticket_id]["status"] = "open"
        self.touch(ticket_id)
        return cid

    # ------------------------------------------------------------ what an agent does in the UI

    def agent_reply(self, ticket_id: int, text: str, *, public: bool = True) -> int:
        return self.comment(ticket_id, text, self.agent_id, public)

    def agent_status(self, ticket_id: int, status: str) -> None:
        self.tickets[ticket_id]["status"] = status
        self.touch(ticket_id)

    # ------------------------------------------------------------ the API

    async def _me(self, request: web.Request) -> web.Response:
        return web.json_response({"user": self.users[self.api_user_id]})

    async def _list(self, request: web.Request) -> web.Response:
        ext = request.query.get("external_id")
        found = [self.view(t) for t in self.tickets.values() if ext is None or t["external_id"] == ext]
        return web.json_response({"tickets": found, "next_page": None, "previous_page": None, "count": len(found)})

    async def _create(self, request: web.Request) -> web.StreamResponse:
        raw = await request.text()
        key = request.headers.get("Idempotency-Key")
        if key and key in self.idempotency:
            body, answer = self.idempotency[key]
            if body != raw:
                return web.json_response({"error": "IdempotentRequestError", "description": "Request parameters do "
                                          "not match the original request for this idempotency key"}, status=400)
            return web.json_response(answer, status=201, headers={"x-idempotency-lookup": "hit"})
        t = (json.loads(raw) or {}).get("ticket") or {}
        comment = t.get("comment") or {}
        if not comment.get("body"):
            return self.invalid("description", "Description: cannot be blank")
        req = t.get("requester") or {}
        if not req.get("email"):
            return self.invalid("requester", "Requester: an e-mail is needed to create a requester")
        uid = self.user_by("email", req["email"]) or self.user(
            {"name": req.get("name"), "email": req["email"], "phone": req.get("phone"), "role": "end-user"})
        tid = self.new_id()
        now = iso(self.clock())
        self.tickets[tid] = {"id": tid, "url": f"{self.base}/api/v2/tickets/{tid}.json", "subject": t.get("subject"),
                             "status": "new", "requester_id": uid, "external_id": t.get("external_id"),
                             "tags": t.get("tags") or [], "group_id": t.get("group_id"), "created_at": now,
                             "updated_at": now}
        cid = self.comment(tid, comment["body"], uid, True)
        answer = {"ticket": self.view(self.tickets[tid]), "audit": {"events": [{"id": cid, "type": "Comment"}]}}
        if key:
            self.idempotency[key] = (raw, answer)
        await self.stall()
        return web.json_response(answer, status=201)

    async def _show(self, request: web.Request) -> web.Response:
        t = self._ticket(request)
        return web.json_response({"ticket": self.view(t)}) if t else self.not_found()

    async def _update(self, request: web.Request) -> web.Response:
        t = self._ticket(request)
        if t is None:
            return self.not_found()
        fields = (await request.json()).get("ticket") or {}
        events: list[dict] = []
        if "status" in fields:
            if fields["status"] not in STATUSES:
                return self.invalid("status", f"Status: {fields['status']} is not valid")
            if t["status"] == "closed":
                return self.invalid("status", "Status: closed prevents ticket update")
            t["status"] = fields["status"]
            events.append({"type": "Change", "field_name": "status", "value": t["status"]})
            self.touch(t["id"])
        if "comment" in fields:
            c = fields["comment"]
            cid = self.comment(t["id"], c["body"], int(c.get("author_id") or self.api_user_id), bool(c.get("public", True)))
            events.append({"id": cid, "type": "Comment"})
        return web.json_response({"ticket": self.view(t), "audit": {"events": events}})

    async def _comments(self, request: web.Request) -> web.Response:
        t = self._ticket(request)
        if t is None:
            return self.not_found()
        page = int(request.query.get("page", "1"))
        rows = self.comments.get(t["id"], [])
        chunk = rows[(page - 1) * self.PAGE: page * self.PAGE]
        more = page * self.PAGE < len(rows)
        nxt = f"{self.base}/api/v2/tickets/{t['id']}/comments.json?page={page + 1}" if more else None
        return web.json_response({"comments": chunk, "next_page": nxt, "count": len(rows)})

    async def _incremental(self, request: web.Request) -> web.Response:
        if "cursor" in request.query:
            after = int(base64.b64decode(request.query["cursor"]).decode())
            rows = [t for t in self.tickets.values() if t["_seq"] > after]
        elif "start_time" in request.query:
            start = datetime.fromtimestamp(int(request.query["start_time"])).astimezone()
            rows = [t for t in self.tickets.values() if t["updated_at"] >= iso(start)]
        else:
            return web.json_response({"error": "InvalidValue", "description": "start_time or cursor is required"},
                                     status=400)
        rows.sort(key=lambda t: t["_seq"])
        chunk = rows[: self.PAGE]
        last = chunk[-1]["_seq"] if chunk else (after if "cursor" in request.query else self.seq)
        cursor = base64.b64encode(str(last).encode()).decode()
        return web.json_response({"tickets": [self.view(t) for t in chunk], "after_cursor": cursor,
                                  "after_url": f"{self.base}/api/v2/incremental/tickets/cursor.json?cursor={cursor}",
                                  "end_of_stream": len(rows) <= self.PAGE})
