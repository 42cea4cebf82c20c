"""Zendesk: Tickets API v2 (tickets, comments, requester by identity), the
incremental ticket cursor export for polling, and its webhooks' signature
(``X-Zendesk-Webhook-Signature``: base64 HMAC-SHA256 of timestamp + body)
for the way back.

Idempotent create: the ``Idempotency-Key`` header (the omnigate ticket id)
and, before creating, a lookup by ``external_id`` (= the omnigate ticket id).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta, timezone
from typing import Any

from gateway.desks.base import Changed, Comment, DeskClient, DeskError, NewTicket

#: A signed nudge older (or further ahead) than this is refused (a replay).
MAX_SKEW = timedelta(minutes=5)


class ZendeskClient(DeskClient):
    kind = "zendesk"
    STATUS_OUT = {"new": "new", "open": "open", "pending": "pending", "solved": "solved", "closed": "closed"}
    STATUS_IN = {"open": "open", "pending": "pending", "hold": "pending", "solved": "solved", "closed": "closed"}

    def auth_headers(self) -> dict[str, str]:
        raw = f"{self.config.email}/token:{self.config.token}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}

    async def whoami(self) -> str | None:
        _, body, _ = await self.call("GET", "/api/v2/users/me.json")
        return str(body["user"]["id"])

    async def find_ticket(self, ticket_id: str) -> str | None:
        _, body, _ = await self.call("GET", "/api/v2/tickets.json", params={"external_id": ticket_id})
        found = body.get("tickets") or []
        return str(found[0]["id"]) if found else None

    async def create_ticket(self, t: NewTicket) -> tuple[str, list[str]]:
        requester: dict[str, Any] = {"name": t.name, "email": t.email}
        tags = ["omnigate", f"omnigate_{t.channel}"]
        fields = {"subject": t.subject, "external_id": t.ticket_id, "requester": requester, "tags": tags,
                  "comment": {"body": t.text, "public": True}}
        if t.phone:
            fields["comment"]["body"] = t.text
            requester["phone"] = t.phone
        if t.group and t.group.isdigit():
            fields["group_id"] = int(t.group)
        elif t.group:
            tags.append(f"omnigate_group_{t.group}")
        if t.team:
            tags.append(f"omnigate_team_{t.team}")
        if t.identity:
            tags.append(f"omnigate_id_{t.identity}".replace(":", "_"))
        _, body, _ = await self.call("POST", "/api/v2/tickets.json", json={"ticket": fields},
                                     headers={"Idempotency-Key": f"omnigate-{t.ticket_id}"})
        ticket = body["ticket"]
        made = [str(e["id"]) for e in (body.get("audit") or {}).get("events", []) if e.get("type") == "Comment"]
        return str(ticket["id"]), made

    async def _requester(self, desk_id: str) -> str:
        _, body, _ = await self.call("GET", f"/api/v2/tickets/{desk_id}.json")
        return str(body["ticket"]["requester_id"])

    async def add_comment(self, desk_id: str, text: str, *, internal: bool) -> str:
        comment: dict[str, Any] = {"body": text, "public": not internal}
        if not internal:
            comment["author_id"] = int(await self._requester(desk_id))
        _, body, _ = await self.call("PUT", f"/api/v2/tickets/{desk_id}.json", json={"ticket": {"comment": comment}})
        for e in (body.get("audit") or {}).get("events", []):
            if e.get("type") == "Comment":
                return str(e["id"])
        raise DeskError("zendesk: the update's audit names no comment")

    async def set_status(self, desk_id: str, status: str) -> None:
        await self.call("PUT", f"/api/v2/tickets/{desk_id}.json", json={"ticket": {"status": status}})

    async def comments(self, desk_id: str) -> list[Comment]:
        requester = await self._requester(desk_id)
        out: list[Comment] = []
        url: str | None = f"/api/v2/tickets/{desk_id}/comments.json"
        while url:
            _, body, _ = await self.call("GET", url)
            for c in body.get("comments", []):
                author = str(c.get("author_id"))
                out.append(Comment(id=str(c["id"]), body=c.get("plain_body") or c.get("body") or "",
                                   public=bool(c.get("public")), by_agent=author != requester, author_id=author))
            url = body.get("next_page")
        return out

    async def changed(self, cursor: str | None) -> tuple[list[Changed], str]:
        if cursor is None:
            # Zendesk wants a start_time at least a minute old; what it re-reads is skipped (desk_seen)
            return [], "t:" + str(int(self.clock().timestamp()) - 60)
        params = {"start_time": cursor[2:]} if cursor.startswith("t:") else {"cursor": cursor[2:]}
        out: list[Changed] = []
        while True:
            _, body, _ = await self.call("GET", "/api/v2/incremental/tickets/cursor.json", params=params)
            out += [Changed(id=str(t["id"]), status=t["status"]) for t in body.get("tickets", [])]
            nxt = body.get("after_cursor")
            if nxt:
                cursor = "c:" + nxt
            if body.get("end_of_stream") or not nxt:
                return out, cursor
            params = {"cursor": nxt}

    def verify(self, headers: Any, body: bytes, secret: str, now: datetime) -> str | None:
        sig, ts = headers.get("X-Zendesk-Webhook-Signature"), headers.get("X-Zendesk-Webhook-Signature-Timestamp")
        if not sig or not ts:
            return "X-Zendesk-Webhook-Signature and its timestamp are required"
        try:
            at = datetime.fromisoformat(ts.replace("Z", "+00:00"))
            if at.tzinfo is None:
                at = at.replace(tzinfo=timezone.utc)
        except ValueError:
            return "X-Zendesk-Webhook-Signature-Timestamp is not an ISO 8601 time"
        if abs(now - at) > MAX_SKEW:
            return "X-Zendesk-Webhook-Signature-Timestamp is too old (or ahead): a replay is refused"
        want = base64.b64encode(hmac.new(secret.encode(), ts.encode() + body, hashlib.sha256).digest()).decode()
        # header bytes that are not UTF-8 arrive as surrogate escapes: compare them as the bytes they were
        return None if hmac.compare_digest(want.encode(), sig.encode("utf-8", "surrogateescape")) \
            else "X-Zendesk-Webhook-Signature does not match"
