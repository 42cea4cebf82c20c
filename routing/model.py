"""The conversation model: one shape for every channel.

Connectors turn raw payloads into :class:`Inbound`; the pipeline turns an
Inbound into changes of :class:`Contact`, :class:`Ticket` and
:class:`TimelineEntry`. Everything here is a msgspec Struct: cheap to build,
validated on decode, and encoded the same way by the API, the CLI and the
store.

Times are timezone-aware ``datetime`` objects (UTC inside the store; a
connector keeps the offset its source gave). Ids are ULIDs (:func:`new_id`):
sortable by creation time, unique across instances without coordination.
"""

from __future__ import annotations

import os
import random
import threading
import time
from datetime import datetime, timezone
from typing import Literal

import msgspec

# ---------------------------------------------------------------- identifiers

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: 10-bit value → two Crockford characters: 13 lookups encode a ULID.
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_ulid_lock = threading.Lock()
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))  # a forked child must not repeat ids
_ulid_last = [0, 0]  # [ms, random80] of the last id, for monotonic ids within one ms
_RANDOM_MASK = (1 << 80) - 1
#: [(ms, random80 >> 10, the id's first 24 characters)]: the time and the random
#: part's high 70 bits as rendered for the last id (one tuple: read and replaced
#: whole). Ids made in one millisecond differ by one in the random part, so
#: ~1,023 of 1,024 share them and only the last two characters are looked up.
_ulid_head: list[tuple[int, int, str]] = [(-1, -1, "")]
#: [(ms >> 10, the id's first 8 characters)]: the time's high 38 bits, rendered;
#: they change about once a second (one tuple: read and replaced whole)
_ulid_prefix: list[tuple[int, str]] = [(-1, "")]


def new_id(now_ms: int | None = None) -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, Crockford base32.

    Ids made in the same millisecond by this process are strictly increasing
    (the random part is incremented), so sorting by id sorts by creation.
    """
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    with _ulid_lock:
        last = _ulid_last
        if ms <= last[0]:
            ms = last[0]
            rnd = (last[1] + 1) & _RANDOM_MASK
        else:
            # ids are unique, not secret (every API call needs the token):
            # the seeded Mersenne Twister is ~10x cheaper than os.urandom here
            rnd = _random.getrandbits(80)
        last[0], last[1] = ms, rnd
    # 128 bits, written as 130 (26 × 5) with two leading zero bits: the time's
    # 48 bits (+2) are the first 10 characters, the random 80 bits the other 16
    high = rnd >> 10
    cached_ms, cached_high, head = _ulid_head[0]
    if cached_high != high or cached_ms != ms:  # a new millisecond, or a carry: 8 lookups, written out
        p = _PAIRS
        second, prefix = _ulid_prefix[0]
        if second != ms >> 10:
            second = ms >> 10
            prefix = p[(ms >> 40) & 1023] + p[(ms >> 30) & 1023] + p[(ms >> 20) & 1023] + p[second & 1023]
            _ulid_prefix[0] = (second, prefix)
        head = "".join((prefix, p[ms & 1023], p[(high >> 60) & 1023], p[(high >> 50) & 1023], p[(high >> 40) & 1023],
                        p[(high >> 30) & 1023], p[(high >> 20) & 1023], p[(high >> 10) & 1023], p[high & 1023]))
        _ulid_head[0] = (ms, high, head)
    return head + _PAIRS[rnd & 1023]


def ulid_time(ulid: str) -> datetime:
    """The creation time encoded in a ULID."""
    n = 0
    for ch in ulid[:10]:
        n = n * 32 + _CROCKFORD.index(ch)
    return datetime.fromtimestamp(n / 1000, tz=timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ---------------------------------------------------------------- vocabulary

IdentityKind = Literal[
    "email",
    "phone",
    "wechat_openid",
    "wechat_unionid",
    "wecom_userid",
    "wecom_external",
    "telegram",
    "webchat",
    "whatsapp",
    "messenger",
    "instagram",
    "line",
    "external",
]
IDENTITY_KINDS: frozenset[str] = frozenset(IdentityKind.__args__)  # type: ignore[attr-defined]

#: Identity kinds that, when two contacts share them, link them automatically.
LINKING_KINDS: frozenset[str] = frozenset({"email", "phone", "wechat_unionid"})

InboundKind = Literal["message", "call", "event"]
TicketStatus = Literal["new", "open", "pending", "solved", "closed"]
TICKET_STATUSES: tuple[str, ...] = ("new", "open", "pending", "solved", "closed")
#: Statuses in which a ticket is still being worked on.
OPEN_STATUSES: frozenset[str] = frozenset({"new", "open", "pending"})
Priority = Literal["urgent", "high", "normal", "low"]
PRIORITIES: tuple[str, ...] = ("urgent", "high", "normal", "low")
#: Sort rank: lower is more urgent.
PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
TimelineKind = Literal[
    "message_in",
    "message_out",
    "call",
    "event",
    "note",
    "status",
    "assignment",
    "sla",
    "rule",
    "duplicate",
    "identity",
    "update",
]
Presence = Literal["online", "away", "offline"]
AgentRole = Literal["agent", "lead", "admin"]


# ---------------------------------------------------------------- identities


class Identity(msgspec.Struct, frozen=True, order=True):
    """One way to reach a person: ``(kind, value)``, normalized.

    ``email`` is the lower-cased addr-spec, ``phone`` is E.164, a
    ``wechat_openid`` is ``"<appid>:<openid>"`` because openids are scoped to
    one official account, a ``telegram`` value is the user (or chat) id.
    """

    kind: str
    value: str

    def key(self) -> str:
        return f"{self.kind}:{self.value}"


class Sender(msgspec.Struct, frozen=True):
    """Who sent an Inbound: an identity plus the display name the channel gave."""

    kind: str
    value: str
    name: str | None = None

    @property
    def identity(self) -> Identity:
        return Identity(self.kind, self.value)


# ---------------------------------------------------------------- inbound


class Attachment(msgspec.Struct, omit_defaults=True):
    """A file that came with a message.

    ``data`` carries the bytes from the parser to the pipeline, which writes
    them to the content-addressed attachment store and sets ``storage_ref``;
    it is never serialised into the store or the API.
    """

    name: str | None
    content_type: str
    size: int
    sha256: str
    storage_ref: str | None = None
    inline: bool = False
    content_id: str | None = None
    url: str | None = None  # where the channel keeps it (media id / file id / URL)
    data: bytes | None = None


class ThreadHints(msgspec.Struct, omit_defaults=True):
    """What a message says about the conversation it belongs to."""

    message_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = msgspec.field(default_factory=list)
    ticket_ref: str | None = None
    session_id: str | None = None


class CallInfo(msgspec.Struct, omit_defaults=True, rename={"from_": "from"}):
    direction: Literal["inbound", "outbound", "internal"] | None = None
    from_: str | None = None
    to: str | None = None
    started_at: datetime | None = None
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: int | None = None
    disposition: str | None = None
    recording_url: str | None = None
    #: This report is of the dialed party's leg (Twilio's ``<Dial action>``):
    #: its disposition is the call's, whatever the parent leg's own status says.
    dialed: bool = False


class Inbound(msgspec.Struct, omit_defaults=True):
    """A normalized message, call or event, as a connector's parser returns it.

    Parsing is pure and deterministic: ``id``, ``received_at`` and
    ``raw_ref`` are filled from the journal entry by the pipeline, not by the
    parser.

    - ``text`` is the plain text with quoted history and signatures stripped
      (what the timeline shows first); ``full_text`` keeps the original when
      stripping removed something.
    - ``auto`` marks machine-sent messages that must never be answered
      automatically: ``"auto_reply"``, ``"bounce"``, ``"bulk"``.
    - ``raw_type`` is the channel's own message/event type (e.g. WeChat's
      ``MsgType``/``Event``), always set for ``kind == "event"``.
    - ``edits`` is the external_id of an earlier message this one edits
      (Telegram ``edited_message``): the pipeline updates that timeline
      entry instead of adding one.
    - ``meta`` holds small channel-specific facts (menu keys, locations,
      DSN status) as strings. Keys the pipeline reads: ``unionid``,
      ``phone``, ``email`` (further identities), ``chat_id`` (where replies
      go), ``blocked``, ``ticket_status`` (a session that ended),
      ``dsn_original_message_id``, and ``direction == "outbound"`` with
      ``agent``: an agent's message sent from the platform's own client,
      recorded as a reply on the customer's conversation.
    """

    channel: str
    account: str
    external_id: str
    kind: InboundKind
    sender: Sender
    subject: str | None = None
    text: str = ""
    html: str | None = None
    full_text: str | None = None
    attachments: list[Attachment] = msgspec.field(default_factory=list)
    thread: ThreadHints = msgspec.field(default_factory=ThreadHints)
    call: CallInfo | None = None
    sent_at: datetime | None = None
    defects: list[str] = msgspec.field(default_factory=list)
    raw_type: str | None = None
    auto: str | None = None
    edits: str | None = None
    language: str | None = None
    recipients: list[str] = msgspec.field(default_factory=list)
    meta: dict[str, str] = msgspec.field(default_factory=dict)
    # filled by the pipeline from the journal entry
    id: str | None = None
    received_at: datetime | None = None
    raw_ref: str | None = None


# ---------------------------------------------------------------- contacts / tickets


class Contact(msgspec.Struct, omit_defaults=True):
    id: str
    name: str | None = None
    identities: list[Identity] = msgspec.field(default_factory=list)
    tier: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    merged_into: str | None = None
    flags: list[str] = msgspec.field(default_factory=list)
    created_at: datetime | None = None
    updated_at: datetime | None = None


class SlaState(msgspec.Struct, omit_defaults=True):
    policy: str | None = None
    first_response_due: datetime | None = None
    next_response_due: datetime | None = None
    resolution_due: datetime | None = None
    paused_at: datetime | None = None
    breached: list[str] = msgspec.field(default_factory=list)


class ReplyTarget(msgspec.Struct, omit_defaults=True):
    """Where a reply to this ticket goes: the channel and account it came from."""

    channel: str
    account: str
    to: Identity
    thread: ThreadHints = msgspec.field(default_factory=ThreadHints)


class Ticket(msgspec.Struct, omit_defaults=True):
    id: str
    number: int
    contact_id: str
    subject: str | None = None
    status: str = "new"
    priority: str = "normal"
    team: str | None = None
    skills: dict[str, int] = msgspec.field(default_factory=dict)
    assignee: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)
    channels: list[str] = msgspec.field(default_factory=list)
    reply_to: ReplyTarget | None = None
    follow_up_of: str | None = None
    sla: SlaState | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_message_at: datetime | None = None
    first_response_at: datetime | None = None
    solved_at: datetime | None = None
    closed_at: datetime | None = None


class TimelineEntry(msgspec.Struct, omit_defaults=True):
    """One line of a customer's history. Ordered per contact and per ticket.

    ``data`` carries the decision's *reason* (which rule, header or window),
    so agents can always ask "why?".
    """

    id: str
    contact_id: str
    kind: str
    at: datetime
    ticket_id: str | None = None
    channel: str | None = None
    journal_id: str | None = None
    external_id: str | None = None
    subject: str | None = None
    text: str | None = None
    attachments: list[Attachment] = msgspec.field(default_factory=list)
    data: dict = msgspec.field(default_factory=dict)
    linked_to: str | None = None
    edited_at: datetime | None = None


class Agent(msgspec.Struct, omit_defaults=True):
    id: str
    name: str
    login: str | None = None
    roles: list[str] = msgspec.field(default_factory=lambda: ["agent"])
    teams: list[str] = msgspec.field(default_factory=list)
    skills: dict[str, int] = msgspec.field(default_factory=dict)
    capacity: dict[str, int] = msgspec.field(default_factory=dict)
    presence: str = "offline"


# ---------------------------------------------------------------- outbound


class Template(msgspec.Struct, frozen=True, omit_defaults=True):
    """A platform-approved message template (WhatsApp): its name, language
    code and the body's ``{{1}}``… parameters, in order."""

    name: str
    language: str
    parameters: list[str] = msgspec.field(default_factory=list)


class Outbound(msgspec.Struct, omit_defaults=True):
    """A reply (or auto-reply) to send back through a connector.

    ``template`` is set for a templated message (channels whose connector
    has ``supports_templates``): the connector sends the template, not ``text``."""

    id: str
    ticket_id: str
    channel: str
    account: str
    to: Identity
    text: str
    subject: str | None = None
    html: str | None = None
    attachments: list[Attachment] = msgspec.field(default_factory=list)
    thread: ThreadHints = msgspec.field(default_factory=ThreadHints)
    auto: bool = False
    author: str | None = None  # agent id, or None for the system
    # the ``auto`` marker of the inbound this answers ("auto_reply", "bounce",
    # "bulk"): connectors refuse to auto-reply to it, as the core does
    in_reply_to_auto: str | None = None
    template: Template | None = None


# ---------------------------------------------------------------- public JSON


def inbound_public(inbound: Inbound) -> dict:
    """The contract shape of an Inbound (CONTRACTS.md `omnigate parse`)."""
    d = msgspec.to_builtins(inbound)
    for a in d.get("attachments", ()):
        a.pop("data", None)
    d.setdefault("subject", None)
    d.setdefault("thread", {})
    d.setdefault("call", None)
    d.setdefault("sent_at", None)
    d.setdefault("defects", [])
    d.setdefault("attachments", [])
    d["sender"].setdefault("name", None)
    return d
