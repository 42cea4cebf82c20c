"""Freshdesk: API v2 tickets and conversations (replies, notes), the tickets
list with ``updated_since`` for polling. Its automation webhooks carry no
signature: the way back is a per-desk secret token in the ``X-Omnigate-Token``
header the automation rule sends.

Idempotent create: the custom field ``cf_omnigate_ticket`` holds the omnigate
ticket id; before creating, the tickets search looks for it.
"""

from __future__ import annotations

import base64
import hmac
from datetime import datetime
from typing import Any

from gateway.desks.base import Changed, Comment, DeskClient, NewTicket, iso

#: Freshdesk's ticket statuses.
OPEN, PENDING, RESOLVED, CLOSED = 2, 3, 4, 5
TOKEN_HEADER = "X-Omnigate-Token"


class FreshdeskClient(DeskClient):
    kind = "freshdesk"
    STATUS_OUT = {"new": "2", "open": "2", "pending": "3", "solved": "4", "closed": "5"}
    STATUS_IN = {"2": "open", "3": "pending", "4": "solved", "5": "closed"}
    PER_PAGE = 100

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{self.config.token}:X".encode()).decode()}

    def to_desk(self, status: str) -> str | None:
        return self.STATUS_OUT.get(status)

    async def whoami(self) -> str | None:
        _, body, _ = await self.call("GET", "/api/v2/agents/me")
        return str(body["id"])

    async def find_ticket(self, ticket_id: str) -> str | None:
        _, body, _ = await self.call("GET", "/api/v2/search/tickets",
                                     params={"query": f"\"cf_omnigate_ticket:'{ticket_id}'\""})
        found = body.get("results") or []
        return str(found[0]["id"]) if found else None

    async def create_ticket(self, t: NewTicket) -> tuple[str, list[str]]:
        fields: dict[str, Any] = {"subject": t.subject, "description": t.text, "status": OPEN, "priority": 1,
                                  "source": 2, "name": t.name, "tags": ["omnigate", f"omnigate-{t.channel}"],
                                  "custom_fields": {"cf_omnigate_ticket": t.ticket_id}}
        if t.email and not t.email.endswith("." + self.config.placeholder_domain) and \
                not t.email.endswith("@" + self.config.placeholder_domain):
            fields["email"] = t.email
        elif t.phone:
            fields["phone"] = t.phone
        else:
            fields["email"] = t.email
        if t.group and t.group.isdigit():
            fields["group_id"] = int(t.group)
        elif t.group:
            fields["tags"].append(f"omnigate-group-{t.group}")
        _, body, _ = await self.call("POST", "/api/v2/tickets", json=fields)
        return str(body["id"]), []  # the description is the ticket's, not a conversation

    async def add_comment(self, desk_id: str, text: str, *, internal: bool) -> str:
        note: dict[str, Any] = {"body": text, "private": internal}
        if not internal:
            _, ticket, _ = await self.call("GET", f"/api/v2/tickets/{desk_id}")
            note["user_id"] = ticket["requester_id"]  # from the customer
            note["incoming"] = True
        _, body, _ = await self.call("POST", f"/api/v2/tickets/{desk_id}/notes", json=note)
        return str(body["id"])

    async def set_status(self, desk_id: str, status: str) -> None:
        await self.call("PUT", f"/api/v2/tickets/{desk_id}", json={"status": int(status)})

    async def _pages(self, path: str, params: dict) -> list[dict]:
        out: list[dict] = []
        url: str | None = path
        while url:
            _, body, headers = await self.call("GET", url, params=params if url == path else None)
            out += body
            url = None
            link = headers.get("Link") or ""
            if 'rel="next"' in link:
                url = link.split(";")[0].strip().strip("<>")
        return out

    async def comments(self, desk_id: str) -> list[Comment]:
        _, ticket, _ = await self.call("GET", f"/api/v2/tickets/{desk_id}")
        requester = str(ticket["requester_id"])
        rows = await self._pages(f"/api/v2/tickets/{desk_id}/conversations", {"per_page": str(self.PER_PAGE)})
        return [Comment(id=str(c["id"]), body=c.get("body_text") or c.get("body") or "", public=not c.get("private"),
                        by_agent=not c.get("incoming") and str(c.get("user_id")) != requester,
                        author_id=str(c.get("user_id"))) for c in rows]

    async def changed(self, cursor: str | None) -> tuple[list[Changed], str]:
        if cursor is None:
            return [], iso(self.clock())
        rows = await self._pages("/api/v2/tickets", {"updated_since": cursor, "per_page": str(self.PER_PAGE),
                                                     "order_by": "updated_at", "order_type": "asc"})
        latest = max([cursor, *(r.get("updated_at") or cursor for r in rows)])
        return [Changed(id=str(r["id"]), status=str(r.get("status"))) for r in rows], latest

    def verify(self, headers: Any, body: bytes, secret: str, now: datetime) -> str | None:
        got = headers.get(TOKEN_HEADER) or ""
        if not got:
            return f"{TOKEN_HEADER} is required"
        # header bytes that are not UTF-8 arrive as surrogate escapes: compare them as the bytes they were
        return None if hmac.compare_digest(got.encode("utf-8", "surrogateescape"), secret.strip().encode()) \
            else f"{TOKEN_HEADER} does not match"
