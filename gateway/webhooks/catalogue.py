"""The event catalogue: every type a webhook endpoint may receive.

One entry per type: what causes it and what ``data`` carries beyond the
``ticket`` snapshot (every event on a ticket carries ``data.ticket`` as
committed: id, number, subject, status, priority, team, assignee, tags,
channels, contact_id, times). The README's table and the OpenAPI document's
``webhooks`` section are generated from :data:`EVENTS`.
"""

from __future__ import annotations

#: type → (when it is sent, extra fields of ``data``)
EVENTS: dict[str, tuple[str, str]] = {
    "ticket.created": ("a message opened a ticket", "contact_id, channel"),
    "ticket.updated": ("priority, team, tags or subject changed (rules, SLA escalation, the API)",
                       "changes: {field: {from, to}} (tags: {added, removed}), reason"),
    "ticket.status_changed": ("the status changed (agent, API, a customer's message reopening it)",
                              "from, to, actor"),
    "ticket.reopened": ("a customer's message reopened a solved ticket", ""),
    "ticket.assigned": ("the ticket was given to an agent", "agent_id, previous, reason"),
    "message.created": ("a message (inbound, outbound, a call) was committed on a ticket",
                        "message: id, channel, direction, text, subject, at, attachments, author"),
    "message.edited": ("the customer edited a message", "message (the new text), timeline_id"),
    "message.status": ("a reply's delivery outcome: sent or failed, then the platform's delivered/read reports",
                       "message (with delivery), status, source (send: the send's outcome; report: the "
                       "platform's), reason, delivery"),
    "message.outbound": ("a reply to send on an API-channel ticket (the account's reply_webhook only)",
                         "message: id, text, html, subject, to, account, attachments"),
    "note.mentioned": ("an internal note mentioned an agent (one event per agent)",
                       "agent_id, by, ticket_number, timeline_id, note (the note as committed)"),
    "sla.warning": ("an SLA target is about to be missed", "policy, target, due_at, assignee, priority"),
    "sla.breached": ("an SLA target was missed", "policy, target, due_at, assignee, priority"),
    "sla.escalation": ("a directory escalation with action: webhook (that endpoint only)",
                       "webhook, event, policy, target, due_at"),
    "contact.merged": ("two contacts were merged", "winner, loser, moved, reason, contact (the winner)"),
    "contact.unmerged": ("a merge was undone", "contact (the contact, as committed), from, moved, reason"),
    "contact.updated": ("a contact's attributes were changed through the API",
                        "contact (as committed), keys (the attribute names changed), actor"),
    "webhook.notify": ("a rule's webhooks: action (that endpoint only)", "webhook, rule, contact_id"),
}


def readme_table() -> str:
    rows = ["| Event | Sent when | `data` besides `ticket` |", "|---|---|---|"]
    rows += [f"| `{name}` | {when} | {extra or '—'} |" for name, (when, extra) in EVENTS.items()]
    return "\n".join(rows)


def openapi_webhooks() -> dict:
    """The OpenAPI 3.1 ``webhooks`` object: one POST per event type."""
    out = {}
    for name, (when, extra) in EVENTS.items():
        out[name] = {"post": {
            "summary": when,
            "description": f"data: {extra}" if extra else "",
            "parameters": [{"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
                           for h in ("webhook-id", "webhook-timestamp", "webhook-signature")],
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["type", "timestamp", "data"],
                "properties": {"type": {"const": name}, "timestamp": {"type": "string", "format": "date-time"},
                               "data": {"type": "object"}}}}}},
            "responses": {"2XX": {"description": "delivered"}, "410": {"description": "disables the endpoint"}},
        }}
    return out
