"""Zammad: REST API (tickets, articles, users), the ticket search by
``updated_at`` for polling, and its webhooks' ``X-Hub-Signature`` (HMAC-SHA1
of the body with the webhook's secret) for the way back.

Idempotent create: every desk ticket carries the tag ``omnigate-<ticket id>``;
before creating, the tickets search looks for it.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any

from gateway.desks.base import Changed, Comment, DeskClient, NewTicket, iso


class ZammadClient(DeskClient):
    kind = "zammad"
    # Zammad has no "solved": both omnigate's solved and closed are its closed
    STATUS_OUT = {"new": "new", "open": "open", "pending": "pending reminder", "solved": "closed",
                  "closed": "closed"}
    STATUS_IN = {"open": "open", "pending reminder": "pending", "pending close": "pending", "closed": "solved"}
    PER_PAGE = 50

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Token token={self.config.token}"}

    def to_desk(self, status: str) -> str | None:
        return self.STATUS_OUT.get(status)

    async def whoami(self) -> str | None:
        _, body, _ = await self.call("GET", "/api/v1/users/me")
        return str(body["id"])

    async def _search(self, query: str) -> list[dict]:
        out: list[dict] = []
        page = 1
        while True:
            _, body, _ = await self.call("GET", "/api/v1/tickets/search", params={
                "query": query, "expand": "true", "page": str(page), "per_page": str(self.PER_PAGE)})
            rows = body if isinstance(body, list) else body.get("tickets", [])
            out += rows
            if len(rows) < self.PER_PAGE:
                return out
            page += 1

    async def find_ticket(self, ticket_id: str) -> str | None:
        found = await self._search(f"tags:omnigate-{ticket_id}")
        return str(found[0]["id"]) if found else None

    async def create_ticket(self, t: NewTicket) -> tuple[str, list[str]]:
        tags = ["omnigate", f"omnigate-{t.ticket_id}", f"channel-{t.channel}"]
        if t.team:
            tags.append(f"team-{t.team}")
        fields: dict[str, Any] = {
            "title": t.subject, "group": t.group or "Users", "customer_id": f"guess:{t.email}",
            "tags": ",".join(tags), "note": f"omnigate #{t.number}; {t.channel}: {t.identity or ''}".strip(),
            "article": {"subject": t.subject, "body": t.text, "type": "note", "internal": False,
                        "sender": "Customer", "content_type": "text/plain"}}
        _, body, _ = await self.call("POST", "/api/v1/tickets", json=fields)
        made = [str(a) for a in body.get("article_ids") or []]
        return str(body["id"]), made

    async def add_comment(self, desk_id: str, text: str, *, internal: bool) -> str:
        article = {"ticket_id": int(desk_id), "body": text, "type": "note", "internal": internal,
                   "sender": "Agent" if internal else "Customer", "content_type": "text/plain"}
        if not internal:
            _, ticket, _ = await self.call("GET", f"/api/v1/tickets/{desk_id}")
            article["origin_by_id"] = ticket["customer_id"]  # written on behalf of the customer
        _, body, _ = await self.call("POST", "/api/v1/ticket_articles", json=article)
        return str(body["id"])

    async def set_status(self, desk_id: str, status: str) -> None:
        await self.call("PUT", f"/api/v1/tickets/{desk_id}", json={"state": status})

    async def comments(self, desk_id: str) -> list[Comment]:
        _, body, _ = await self.call("GET", f"/api/v1/ticket_articles/by_ticket/{desk_id}")
        return [Comment(id=str(a["id"]), body=a.get("body") or "", public=not a.get("internal"),
                        by_agent=a.get("sender") == "Agent", author_id=str(a.get("created_by_id")))
                for a in body]

    async def changed(self, cursor: str | None) -> tuple[list[Changed], str]:
        if cursor is None:
            return [], iso(self.clock())
        rows = await self._search(f"updated_at:>={cursor}")
        out = [Changed(id=str(r["id"]), status=r.get("state") or "") for r in rows]
        latest = max([cursor, *(r.get("updated_at") or cursor for r in rows)])
        # the same second again next time (a change within it is not lost; seen comments are skipped)
        return out, latest[:19] + "Z" if not latest.endswith("Z") else latest

    def verify(self, headers: Any, body: bytes, secret: str, now: datetime) -> str | None:
        sig = headers.get("X-Hub-Signature") or ""
        if not sig.startswith("sha1="):
            return "X-Hub-Signature (sha1=…) is required"
        want = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
        # header bytes that are not UTF-8 arrive as surrogate escapes: compare them as the bytes they were
        return None if hmac.compare_digest(want.encode(), sig.encode("utf-8", "surrogateescape")) \
            else "X-Hub-Signature does not match"


