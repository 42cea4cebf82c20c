"""The store protocol: intent-level operations, one backend per deployment.

Callers say what they want done (``journal_append``, ``claim_pending``,
``snapshot``, ``commit``, ``merge_contacts``…), never read-modify-write
sequences, so each operation can be one transaction in SQLite and one Lua
script in Redis. The contract tests (``tests/store/test_contract.py``) run
against every backend.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from connectors.base import IngestResult, Nonce
from routing.model import Attachment, Contact, Outbound, ReplyTarget, Template, Ticket, ThreadHints, TimelineEntry
from routing.pipeline import Lookup
from routing.sla import SlaEvent
from routing.state import Commit, CommitResult, Snapshot

if TYPE_CHECKING:
    from routing.assign import Decision
    from routing.directory import Directory

JOURNAL_STATUSES = ("pending", "processed", "failed", "duplicate")


class StoreError(Exception):
    """The store cannot do what was asked (unavailable, disk full…)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now (e.g. Redis restarting): nothing was
    done; the same call may succeed in a moment. The pipeline leaves the entry
    pending for a later try instead of failing it."""


class Conflict(StoreError):
    """The state a Commit was decided on changed; decide again on a fresh snapshot."""


class NotFound(StoreError):
    pass


class InvalidTransition(StoreError):
    """A ticket status change the ticket's current status does not allow."""


class JournalEntry(msgspec.Struct, omit_defaults=True):
    id: str
    seq: int
    channel: str
    account: str
    key: str
    received_at: datetime
    status: str
    attempts: int = 0
    error: str | None = None
    meta: dict = msgspec.field(default_factory=dict)
    ticket_id: str | None = None
    contact_id: str | None = None
    processed_at: datetime | None = None
    size: int = 0
    raw: bytes | None = None


class AgentView(msgspec.Struct, omit_defaults=True):
    """An agent as the API shows it: the directory's fields, presence, and what it holds now."""

    id: str
    name: str
    presence: str
    login: str | None = None
    roles: list[str] = msgspec.field(default_factory=list)
    teams: list[str] = msgspec.field(default_factory=list)
    skills: dict[str, int] = msgspec.field(default_factory=dict)
    capacity: dict[str, int] = msgspec.field(default_factory=dict)
    #: capacity class → open tickets held
    load: dict[str, int] = msgspec.field(default_factory=dict)
    tickets: list[str] = msgspec.field(default_factory=list)
    presence_at: datetime | None = None
    last_assigned_at: datetime | None = None


class Page(msgspec.Struct):
    items: list[Any]
    next_cursor: str | None = None


# ---------------------------------------------------------------- replies and outbox

#: The outbox topic of replies the dispatcher (gateway/outbox.py) sends.
REPLY_TOPIC = "reply.send"


class NoReplyTarget(StoreError):
    """The ticket has no ``reply_to``: nothing says where a reply would go."""


class ReplyDraft(msgspec.Struct, frozen=True, omit_defaults=True):
    """A reply (or internal note) as an agent or the rules engine asks for it.

    ``attachments`` are already in the attachment store (``storage_ref``
    set, no bytes). ``in_reply_to_auto`` is the ``auto`` marker of the
    message an auto-reply answers, so a connector can refuse to answer a
    bounce."""

    text: str
    subject: str | None = None
    html: str | None = None
    author: str | None = None  # agent id; None = the system
    internal: bool = False
    auto: bool = False
    attachments: list[Attachment] = msgspec.field(default_factory=list)
    in_reply_to_auto: str | None = None
    template: Template | None = None  # an approved template instead of free text (WhatsApp)

    @property
    def public(self) -> bool:
        return not self.internal

    def outbound(self, outbound_id: str, ticket: Ticket, target: ReplyTarget) -> Outbound:
        """The Outbound for ``ticket``'s reply target: same channel and account,
        threaded on the last inbound message (email ``In-Reply-To`` and
        ``References``), tagged with the ticket number (``[#1234]``)."""
        hint = target.thread
        return Outbound(
            id=outbound_id, ticket_id=ticket.id, channel=target.channel, account=target.account, to=target.to,
            text=self.text, subject=self.subject or ticket.subject, html=self.html, attachments=list(self.attachments),
            thread=ThreadHints(in_reply_to=hint.message_id, references=list(hint.references),
                               ticket_ref=str(ticket.number), session_id=hint.session_id),
            auto=self.auto, author=self.author, in_reply_to_auto=self.in_reply_to_auto, template=self.template,
        )


class OutboxItem(msgspec.Struct, frozen=True):
    """An outbox row claimed by one dispatcher: leased until ``lease_until``
    under the token ``lease``; only that holder may settle it."""

    id: str
    topic: str
    ticket_id: str | None
    timeline_id: str | None
    payload: dict
    attempts: int  # this attempt included
    lease: str
    lease_until: datetime


class Delivery(msgspec.Struct, frozen=True, omit_defaults=True):
    """How one send attempt ended; becomes the timeline entry's ``data.delivery``."""

    status: str  # sent | retrying | failed
    at: datetime
    attempts: int
    external_id: str | None = None
    thread_ref: str | None = None  # e.g. the Message-ID of a sent mail, for threading the answer
    reason: str | None = None
    code: str | None = None
    next_at: datetime | None = None  # when retrying


class Store(Protocol):
    # journal ---------------------------------------------------------
    async def journal_append(
        self, channel: str, account: str, key: str, raw: bytes, meta: dict | None = None, *,
        nonce: Nonce | None = None,
    ) -> IngestResult:
        """Append durably; with ``nonce``, check and remember it in the same
        transaction (same nonce + same body: the first entry, ``created``
        False; + another body: ``connectors.base.NonceReused``)."""
        ...

    async def journal_get(self, journal_id: str, *, with_raw: bool = False) -> JournalEntry | None: ...

    async def journal_list(
        self, *, status: str | None = None, since: datetime | None = None, after_seq: int = 0, limit: int = 100,
        with_raw: bool = False,
    ) -> list[JournalEntry]: ...

    async def claim_pending(self, after_seq: int, limit: int) -> list[JournalEntry]: ...

    async def journal_fail(self, journal_id: str, error: str) -> None: ...

    async def journal_mark_processed(self, journal_id: str) -> None: ...

    async def journal_requeue(self, journal_ids: list[str]) -> int: ...

    async def journal_counts(self) -> dict[str, int]: ...

    # pipeline --------------------------------------------------------
    async def snapshot(self, look: Lookup, now: datetime) -> Snapshot: ...

    async def commit(self, commit: Commit) -> CommitResult: ...

    # reads -----------------------------------------------------------
    async def get_ticket(self, ticket_id: str) -> Ticket | None: ...

    async def get_ticket_by_number(self, number: int) -> Ticket | None: ...

    async def get_contact(self, contact_id: str) -> Contact | None: ...

    async def timeline(
        self, *, contact_id: str | None = None, ticket_id: str | None = None, cursor: str | None = None,
        limit: int = 50,
    ) -> Page: ...

    # contacts --------------------------------------------------------
    async def merge_contacts(self, winner_id: str, loser_id: str, actor: str, reason: str | None = None) -> Contact: ...

    async def unmerge_contact(self, contact_id: str, actor: str, reason: str | None = None) -> Contact: ...

    # replies and outbox (gateway/store/sqlite_replies.py) ------------
    async def reply_create(self, ticket_id: str, draft: ReplyDraft) -> TimelineEntry:
        """One transaction: the timeline entry (``message_out``, or ``note``
        when internal), the ``reply.send`` outbox row (not for notes), and the
        ticket (first response, ``new`` → ``open``, version). Raises NotFound,
        and NoReplyTarget for a public reply on a ticket without ``reply_to``."""
        ...

    async def auto_reply(self, ticket_id: str, text: str, *, subject: str | None = None,
                         in_reply_to_auto: str | None = None) -> TimelineEntry: ...

    async def outbox_claim(self, topic: str, limit: int, lease_s: float) -> list[OutboxItem]:
        """Due rows of ``topic`` (and rows whose holder's lease ran out), leased
        to the caller; rows of other topics are never touched."""
        ...

    async def outbox_settle(self, item: OutboxItem, delivery: Delivery) -> bool:
        """Record an attempt's outcome on the row and its timeline entry (and a
        thread ref), atomically; False when the lease was lost meanwhile."""
        ...

    async def outbox_next_due(self, topic: str) -> datetime | None: ...

    # connector state -------------------------------------------------
    async def state_get(self, key: str) -> str | None: ...

    async def state_set(self, key: str, value: str) -> None: ...

    # assignment, presence, SLA (gateway/store/sqlite_assign.py) ----
    async def directory_load(self, directory: Directory, now: datetime) -> list[Decision]: ...

    async def list_agents(self) -> list[AgentView]: ...

    async def get_agent(self, agent_id: str) -> AgentView | None: ...

    async def set_presence(
        self, agent_id: str, presence: str, now: datetime, *, return_chats: bool = False, actor: str = "api"
    ) -> list[str]: ...

    async def assign_next(self, ticket_id: str, now: datetime) -> Decision: ...

    async def ticket_sync(self, ticket_ids: list[str], now: datetime) -> list[Decision]: ...

    async def set_status(self, ticket_id: str, status: str, now: datetime, actor: str = "api") -> bool: ...

    async def overflow_due(self, now: datetime, limit: int = 200) -> int: ...

    async def sla_fire_due(self, now: datetime, limit: int = 200) -> list[SlaEvent]: ...

    async def changed_tickets(self, cursor: str | None, limit: int = 500) -> tuple[list[str], str | None]: ...

    async def assign_stats(self) -> dict: ...

    # the REST API (gateway/store/sqlite_tickets.py, sqlite_tokens.py) ---
    # ticket_record, tickets_list (keyset), ticket_patch (version-checked,
    # one assignment transaction), contact_by_identity, contacts_by_name,
    # contact_set_attributes, contact_audit, timeline_rows (both ways, by
    # kind), note_create (with mentions), mentions_of; token_create,
    # token_revoke, token_lookup, token_list, token_touch. Their signatures
    # and semantics are the SQLite mixins' docstrings; a second backend
    # implements the same.

    async def close(self) -> None: ...
