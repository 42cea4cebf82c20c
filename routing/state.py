"""What the pure pipeline stages read, and what they ask the store to write.

The pipeline never reads or writes the store itself. A worker asks the store
for a :class:`Snapshot` (everything the stages may need about one Inbound),
runs the stages, and hands the resulting :class:`Commit` to the store, which
applies it atomically — or raises ``Conflict`` when the state it was decided
on has changed meanwhile (another worker committed for the same contact or
ticket), and the worker decides again on a fresh snapshot. That optimistic
check is what lets several workers (and, with Redis, several instances) run
the same stages without locks.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from routing.model import Identity, ReplyTarget, TimelineEntry


class ContactState(msgspec.Struct, frozen=True):
    id: str
    version: int
    name: str | None = None
    tier: str | None = None
    tags: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()


class TicketState(msgspec.Struct, frozen=True):
    id: str
    number: int
    contact_id: str
    status: str
    version: int
    created_at: datetime
    last_message_at: datetime
    subject: str | None = None
    channels: tuple[str, ...] = ()
    solved_at: datetime | None = None
    priority: str = "normal"
    team: str | None = None
    assignee: str | None = None


class Hit(msgspec.Struct, frozen=True):
    """A committed message found again: which journal entry committed it,
    its timeline entry and ticket."""

    journal_id: str
    timeline_id: str | None
    ticket_id: str | None
    contact_id: str | None
    #: The idempotency key of that journal entry (an email's ends in its body
    #: digest: a different one means the message id was reused).
    journal_key: str | None = None


class Snapshot(msgspec.Struct):
    """The state one Inbound is decided on, read in one consistent view."""

    now: datetime
    #: The (channel, account, external_id) of this message, if already committed.
    exact: Hit | None = None
    #: The message an edit refers to (``Inbound.edits``), if committed.
    edited: Hit | None = None
    #: identity key ("kind:value") → contact id, already resolved through merges.
    owners: dict[str, str] = msgspec.field(default_factory=dict)
    contacts: dict[str, ContactState] = msgspec.field(default_factory=dict)
    #: Recent tickets of the contacts above, most recent activity first.
    tickets: list[TicketState] = msgspec.field(default_factory=list)
    #: Email Message-IDs (and other thread refs) → the ticket that owns them.
    ref_tickets: dict[str, TicketState] = msgspec.field(default_factory=dict)
    #: Ticket display numbers named in the message → their tickets.
    numbered: dict[int, TicketState] = msgspec.field(default_factory=dict)
    #: Ids of the tickets above (``ref_tickets``) on which the sender identity
    #: is a known participant (a Cc of an earlier message, a Cc an agent added):
    #: header threading joins another contact's ticket only through this.
    participating: frozenset[str] = frozenset()
    #: The first message of a contact with the same normalized text in the window.
    near_duplicate: Hit | None = None


class NewContact(msgspec.Struct, frozen=True):
    id: str
    name: str | None
    created_at: datetime


class IdentityLink(msgspec.Struct, frozen=True):
    """Attach ``identity`` to the decided contact (it must not belong to anyone yet)."""

    identity: Identity
    reason: str


class NewTicket(msgspec.Struct, frozen=True):
    id: str
    subject: str | None
    channel: str
    created_at: datetime
    reply_to: ReplyTarget | None = None
    follow_up_of: str | None = None
    priority: str = "normal"
    team: str | None = None
    skills: dict[str, int] = msgspec.field(default_factory=dict)
    tags: tuple[str, ...] = ()
    assignee: str | None = None
    status: str = "new"


class TicketChange(msgspec.Struct, frozen=True):
    """Changes to an existing ticket; applied only if its version is unchanged."""

    id: str
    expect_version: int
    status: str | None = None
    last_message_at: datetime | None = None
    add_channel: str | None = None
    reply_to: ReplyTarget | None = None
    priority: str | None = None
    team: str | None = None
    skills: dict[str, int] | None = None
    add_tags: tuple[str, ...] = ()
    assignee: str | None = None
    #: An agent answered (outside omnigate, in the platform's own client):
    #: sets ``first_response_at`` if it is not set yet.
    responded_at: datetime | None = None


class TimelineEdit(msgspec.Struct, frozen=True):
    """Update an earlier timeline entry: a message's new text, or a later
    report of a call (``call``: merged into ``data.call`` by the store, inside
    its transaction, with :func:`routing.calls.merge_call`)."""

    timeline_id: str
    text: str
    edited_at: datetime
    call: dict | None = None


class DeliveryStatus(msgspec.Struct, frozen=True):
    """A platform's delivery report for one of our sent messages (a WhatsApp
    status, a Messenger delivery/read): the store finds the reply whose
    delivery ``external_id`` is ``external_id`` and updates its
    ``data.delivery``; it is never a customer message."""

    channel: str
    external_id: str
    status: str  # sent | delivered | read | failed | …
    at: datetime
    error_code: str | None = None
    error: str | None = None
    #: A report without a message id (a Messenger read or delivery
    #: "watermark"): every reply to ``contact_id`` on ``channel`` sent up to
    #: ``watermark`` has reached ``status``.
    watermark: datetime | None = None
    contact_id: str | None = None


class OutboxEvent(msgspec.Struct, frozen=True):
    topic: str
    payload: dict
    ticket_id: str | None = None


class Commit(msgspec.Struct):
    """Everything one message changes, applied atomically by the store.

    ``outcome`` is the journal entry's new status: ``processed`` or
    ``duplicate`` (an exact redelivery: nothing else changes). A commit whose
    message key is already taken by another journal entry becomes
    ``duplicate`` inside the store, so two workers racing on one redelivery
    still produce one timeline entry.
    """

    journal_id: str
    outcome: str  # processed | duplicate
    message_key: tuple[str, str, str] | None = None
    contact_id: str | None = None
    #: The sender identity: rows it creates belong to the contact that
    #: originally owned it, so an unmerge gives them back.
    origin_identity: Identity | None = None
    contact_expect_version: int | None = None
    new_contact: NewContact | None = None
    link_identities: list[IdentityLink] = msgspec.field(default_factory=list)
    contact_name: str | None = None
    add_flags: tuple[str, ...] = ()
    remove_flags: tuple[str, ...] = ()
    new_ticket: NewTicket | None = None
    ticket_change: TicketChange | None = None
    #: The ticket the message lands on (new_ticket.id or an existing one).
    ticket_id: str | None = None
    timeline: list[TimelineEntry] = msgspec.field(default_factory=list)
    #: The timeline entry that represents the message itself (for message_keys).
    message_entry_id: str | None = None
    edit: TimelineEdit | None = None
    thread_refs: list[str] = msgspec.field(default_factory=list)
    #: Addresses the ticket now corresponds with (the Cc/To of a message that
    #: joined it): ``(identity, source)``, recorded once per ticket.
    participants: list[tuple[Identity, str]] = msgspec.field(default_factory=list)
    outbox: list[OutboxEvent] = msgspec.field(default_factory=list)
    #: The message key may already be taken by another journal entry's
    #: report of the same call (two rows raced): decide again (``Conflict``)
    #: so this one becomes an update of that call, not a duplicate.
    key_taken_conflicts: bool = False
    #: Name of the counter to bump in metrics, e.g. "deduped", "near_duplicate".
    counted: str | None = None
    #: False for all but the last Inbound of a journal entry that yields
    #: several (a LINE batch, a call log): the entry is marked done only with
    #: the last, so a crash between them re-runs the entry.
    final: bool = True
    #: A status the channel says the conversation is in (a 微信客服 session
    #: ended): ``(ticket id, status, reason)``, applied after the commit through
    #: the store's status operation, which also frees the agent's capacity.
    status_change: tuple[str, str, str] | None = None
    #: A delivery report of one of our replies (no contact, ticket or timeline
    #: entry of its own): applied to the reply's ``data.delivery``, and a
    #: ``message.status`` event emitted, when the reply is found.
    delivery: DeliveryStatus | None = None
    #: An auto-reply decided by the rules, rendered after the commit when the
    #: ticket number is known: ``(template name, RuleInput)``. Not stored.
    auto_reply: tuple | None = None


class CommitResult(msgspec.Struct, frozen=True):
    outcome: str
    contact_id: str | None
    ticket_id: str | None
    ticket_number: int | None
