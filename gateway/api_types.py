"""The request and response bodies, and query parameters, of ``/api/v1``.

Every handler decodes its body and query into one of these Structs and
encodes its answer through one; ``gateway/openapi.py`` derives the OpenAPI
document from the same types (``msgspec.json.schema_components``), so the
document cannot drift from the code.

Query Structs: a ``list`` field is a comma-separated parameter
(``?status=open,pending``); unknown parameters are refused naming them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from connectors.api.parse import Upload
from gateway.store.base import AgentView
from gateway.store.sqlite_tickets import AuditRecord, Mention, TicketRecord
from gateway.store.sqlite_tokens import TokenInfo
from routing.model import Attachment, Contact, Identity, TimelineEntry
from routing.rules.inputs import MessageInput
from routing.rules.types import RuleOutcome

TicketStatusName = Literal["new", "open", "pending", "solved", "closed"]
PriorityName = Literal["urgent", "high", "normal", "low"]
Role = Literal["agent", "lead", "admin"]
TimelineKindName = Literal["message_in", "message_out", "call", "event", "note", "status", "assignment", "sla",
                           "rule", "duplicate", "identity", "update"]
Limit = Annotated[int, Meta(ge=1, le=500, description="items per page")]
Cursor = Annotated[str, Meta(max_length=512, description="an opaque cursor from a previous page of the same query")]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
#: ISO 8601 (without an offset: the configured time zone) or a duration back from now (``90m``, ``2h``, ``7d``)
TimeParam = Annotated[str, Meta(min_length=1, max_length=64, description="ISO 8601 (no offset: the configured "
                                "time zone), or a duration back from now such as 2h or 7d")]


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem document (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str | None = None
    #: the JSON path or query parameter at fault
    field: str | None = None


# ---------------------------------------------------------------- journal


class JournalView(msgspec.Struct, omit_defaults=True):
    id: str
    status: Literal["pending", "processed", "failed", "duplicate"]
    channel: str
    account: str
    received_at: datetime
    size: int = 0
    error: str | None = None
    ticket_id: str | None = None
    contact_id: str | None = None
    processed_at: datetime | None = None


class JournalPage(msgspec.Struct):
    items: list[JournalView]
    next_cursor: str | None = None


class JournalQuery(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    status: Literal["pending", "processed", "failed", "duplicate"] | None = None
    since: TimeParam | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] = 100
    cursor: Annotated[str, Meta(pattern=r"^[0-9]{1,18}$")] | None = None


class ReplayResult(msgspec.Struct):
    id: str
    requeued: bool


# ---------------------------------------------------------------- tickets


class TicketPage(msgspec.Struct):
    items: list[TicketRecord]
    next_cursor: str | None = None


class TicketListQuery(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    status: list[TicketStatusName] = []
    priority: list[PriorityName] = []
    team: list[Name] = []
    #: agent ids; ``none`` for unassigned tickets, ``me`` for the caller
    assignee: list[Name] = []
    channel: Name | None = None
    tag: Name | None = None
    contact: Name | None = None
    created_after: TimeParam | None = None
    created_before: TimeParam | None = None
    updated_after: TimeParam | None = None
    updated_before: TimeParam | None = None
    #: tickets whose SLA breaches within this many minutes (or is already overdue)
    sla_breaching_within: Annotated[int, Meta(ge=0, le=525600)] | None = None
    #: tickets that have (or have not) breached an SLA target
    sla_breached: bool | None = None
    sort: Literal["priority", "updated"] = "priority"
    limit: Limit = 50
    cursor: Cursor | None = None


class TicketPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The fields to change (absent: unchanged); ``reason`` goes on the timeline."""

    status: Literal["open", "pending", "solved", "closed"] | msgspec.UnsetType = msgspec.UNSET
    priority: PriorityName | msgspec.UnsetType = msgspec.UNSET
    team: Name | None | msgspec.UnsetType = msgspec.UNSET
    assignee: Name | None | msgspec.UnsetType = msgspec.UNSET
    tags: Annotated[list[Annotated[str, Meta(min_length=1, max_length=100)]], Meta(max_length=100)] \
        | msgspec.UnsetType = msgspec.UNSET
    reason: Annotated[str, Meta(max_length=2000)] | None = None


class ParticipantBody(msgspec.Struct, forbid_unknown_fields=True):
    """Someone besides the ticket's contact who may add to it by mail (an agent's Cc)."""

    value: str
    kind: str = "email"


class Participant(msgspec.Struct):
    kind: str
    value: str
    #: ``recipient`` (a To/Cc of a message on the ticket) or ``agent`` (added here)
    source: str
    added_at: datetime


class ParticipantAdded(msgspec.Struct):
    ticket_id: str
    kind: str
    value: str
    source: str


class ParticipantPage(msgspec.Struct):
    items: list[Participant]


class StatusBody(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["open", "pending", "solved", "closed"]


class TicketStatusView(TicketRecord, omit_defaults=True, kw_only=True):
    changed: bool


class TimelineQuery(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    #: entry kinds to list (all when absent)
    kind: list[TimelineKindName] = []
    #: ``start`` (oldest first) or ``end`` (the newest page) when no cursor is given
    start: Literal["start", "end"] = "start"
    limit: Limit = 50
    cursor: Cursor | None = None


class TimelineItem(msgspec.Struct, omit_defaults=True):
    """A timeline entry; ``restricted`` ones (a ticket the caller may not open)
    carry only the time, channel, ticket number, status and team."""

    id: str
    at: datetime
    kind: str
    contact_id: str | None = None
    ticket_id: str | None = None
    ticket_number: int | None = None
    channel: str | None = None
    journal_id: str | None = None
    external_id: str | None = None
    subject: str | None = None
    text: str | None = None
    attachments: list[Attachment] = []
    data: dict[str, Any] = {}
    linked_to: str | None = None
    edited_at: datetime | None = None
    restricted: bool = False
    ticket_status: str | None = None
    team: str | None = None


class TimelinePage(msgspec.Struct):
    items: list[TimelineItem]
    #: the page after this one (newer entries); absent at the end
    next_cursor: str | None = None
    #: the page before this one (older entries); absent at the start
    prev_cursor: str | None = None


class TemplateBody(msgspec.Struct, forbid_unknown_fields=True):
    """An approved message template (WhatsApp): sent where free text may not be."""

    name: str
    language: str
    parameters: list[str] = msgspec.field(default_factory=list)


class ReplyBody(msgspec.Struct, forbid_unknown_fields=True):
    text: str = ""
    subject: str | None = None
    html: str | None = None
    #: the agent answering; per-agent tokens always act as their own agent
    author: str | None = None
    internal: bool = False
    attachments: list[Upload] = msgspec.field(default_factory=list)
    #: an approved template (channels whose connector ``supports_templates``: WhatsApp)
    template: TemplateBody | None = None


# ---------------------------------------------------------------- contacts


class TicketSummary(msgspec.Struct, omit_defaults=True):
    id: str
    number: int
    status: str
    team: str | None = None
    #: absent when the caller may not open the ticket
    subject: str | None = None
    restricted: bool = False


class ContactView(msgspec.Struct, omit_defaults=True):
    id: str
    name: str | None = None
    identities: list[Identity] = []
    tier: str | None = None
    tags: list[str] = []
    attributes: dict[str, str] = {}
    merged_into: str | None = None
    flags: list[str] = []
    created_at: datetime | None = None
    updated_at: datetime | None = None
    tickets: list[TicketSummary] = []


class ContactPage(msgspec.Struct):
    items: list[Contact]
    next_cursor: str | None = None


class ContactSearchQuery(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """By identity (``kind`` and ``value``, normalized as at ingest) or by ``name`` (contains)."""

    kind: Literal["email", "phone", "wechat_openid", "wechat_unionid", "wecom_userid", "wecom_external", "telegram",
                  "webchat", "whatsapp", "messenger", "instagram", "line", "external"] | None = None
    value: Annotated[str, Meta(min_length=1, max_length=500)] | None = None
    #: for ``wechat_openid``: the official account's appid when ``value`` is a bare openid
    appid: Annotated[str, Meta(min_length=1, max_length=100)] | None = None
    name: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    limit: Limit = 50
    cursor: Cursor | None = None


class ContactPatch(msgspec.Struct, forbid_unknown_fields=True):
    """Attributes to set (a string) or remove (null); others stay."""

    attributes: Annotated[dict[Annotated[str, Meta(min_length=1, max_length=100)],
                               Annotated[str, Meta(max_length=2000)] | None], Meta(max_length=100)]


class MergeBody(msgspec.Struct, forbid_unknown_fields=True):
    into: str
    reason: str | None = None


class UnmergeBody(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None


class AuditPage(msgspec.Struct):
    items: list[AuditRecord]


# ---------------------------------------------------------------- rules


class RulesTestBody(MessageInput, forbid_unknown_fields=True, rename={"from_": "from"}):
    #: also answer the whole tree, the path marked
    tree: bool = False


class RulesTestResult(RuleOutcome, omit_defaults=True):
    #: the whole tree, the path marked (``"tree": true``)
    tree: str | None = None


# ---------------------------------------------------------------- agents


class AgentList(msgspec.Struct):
    items: list[AgentView]


class AgentBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    teams: list[str] = []
    skills: dict[str, int] = {}
    capacity: dict[str, int] = {}
    roles: list[Literal["agent", "lead", "admin"]] = msgspec.field(default_factory=lambda: ["agent"])
    login: str | None = None


class AgentPutView(AgentView, omit_defaults=True, kw_only=True):
    #: tickets the agent took from the queues at once
    assigned: list[str]


class PresenceBody(msgspec.Struct, forbid_unknown_fields=True):
    presence: Literal["online", "away", "offline"]
    return_chats: bool = False


class AgentPresenceView(AgentView, omit_defaults=True, kw_only=True):
    #: chats put back in the queue
    returned: list[str]


class MentionPage(msgspec.Struct):
    items: list[Mention]


class Stats(msgspec.Struct, omit_defaults=True):
    """Assignment and SLA counters (the ``omnigate_*`` metrics carry the same)."""

    first_response: dict[str, Any] = {}
    resolution: dict[str, Any] = {}
    #: policy → target → count
    sla_breaches: dict[str, dict[str, int]] = {}
    sla_warnings: dict[str, dict[str, int]] = {}
    #: team → tickets waiting
    queued: dict[str, int] = {}
    #: presence → agents
    agents: dict[str, int] = {}
    assigned: int = 0
    calendar_fallback_years: dict[str, list[int]] = {}


# ---------------------------------------------------------------- tokens


class TokenCreateBody(msgspec.Struct, forbid_unknown_fields=True):
    agent_id: Annotated[str, Meta(min_length=1, max_length=200)]
    role: Role = "agent"
    #: e.g. ``90d``; absent: no expiry
    expires_in: Annotated[str, Meta(pattern=r"^\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w)(\s*\d+(\.\d+)?\s*(ms|s|m|h|d|w))*\s*$",
                                    max_length=40)] | None = None
    note: Annotated[str, Meta(max_length=500)] | None = None


class TokenCreated(TokenInfo, omit_defaults=True, kw_only=True):
    #: the token itself: shown once, never stored
    token: str


class TokenList(msgspec.Struct):
    items: list[TokenInfo]


class TokenListQuery(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    agent_id: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    include_revoked: bool = False


class EmptyQuery(msgspec.Struct, forbid_unknown_fields=True):
    pass


def entry_item(e: TimelineEntry, **extra: Any) -> TimelineItem:
    return TimelineItem(id=e.id, at=e.at, kind=e.kind, contact_id=e.contact_id, ticket_id=e.ticket_id,
                        channel=e.channel, journal_id=e.journal_id, external_id=e.external_id, subject=e.subject,
                        text=e.text, attachments=e.attachments, data=e.data,
                        linked_to=e.linked_to, edited_at=e.edited_at, **extra)
