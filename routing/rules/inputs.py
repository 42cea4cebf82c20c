"""A message described by hand → :class:`RuleInput`.

One shape serves the rule tests (``input:`` of a case), the dry-run HTTP body
(``POST /api/v1/rules/test``) and the ``omnigate rules test`` flags::

    {"channel": "email", "from": "a@b.cn", "subject": "…", "text": "…",
     "kind": "message", "tier": "vip", "tags": ["…"], "attachments": 1,
     "ticket": "new" | "follow_up", "now": "2025-03-04T10:00:00+08:00",
     "call": {"direction": "inbound", "disposition": "missed", "duration": 0}, …}

It is admin-written, so read strictly: an unknown field is an error naming it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Literal

import msgspec

from routing.model import IDENTITY_KINDS, Attachment, CallInfo, Inbound, Sender
from routing.rules.types import RuleInput

_PHONE = re.compile(r"\+?[0-9][0-9 ()-]{4,}\Z")
#: identity kinds of channels whose name is not itself an identity kind
_CHANNEL_SENDER_KIND = {"wechat": "wechat_openid", "wecom": "wecom_external"}


class CallInput(msgspec.Struct, forbid_unknown_fields=True):
    """A call's facts for the ``call.*`` matchers (``kind`` becomes ``call``)."""

    direction: Literal["inbound", "outbound", "internal"] = "inbound"
    disposition: Literal["answered", "missed", "busy", "failed", "voicemail"] | None = None
    duration: int | None = None


class MessageInput(msgspec.Struct, forbid_unknown_fields=True, rename={"from_": "from"}):
    channel: str
    from_: str | None = None
    sender_kind: str | None = None
    name: str | None = None
    account: str | None = None
    subject: str | None = None
    text: str = ""
    kind: Literal["message", "call", "event"] = "message"
    language: str | None = None
    attachments: int | list[str] = 0
    auto: Literal["auto_reply", "bounce", "bulk"] | None = None
    tier: str | None = None
    tags: list[str] = []
    contact_name: str | None = None
    contact_language: str | None = None
    ticket: Literal["new", "follow_up"] = "new"
    ticket_status: Literal["new", "open", "pending", "solved", "closed"] | None = None
    ticket_number: int | None = None
    call: CallInput | None = None
    now: datetime | None = None


class InputError(ValueError):
    """The description is invalid; ``field`` is the JSON path at fault."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def message_input(data: object) -> MessageInput:
    try:
        msg = msgspec.convert(data, MessageInput)
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = text.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in text else None
        raise InputError(text, field) from None
    if msg.sender_kind is not None and msg.sender_kind not in IDENTITY_KINDS:
        raise InputError(f"unknown sender_kind {msg.sender_kind!r}; one of {', '.join(sorted(IDENTITY_KINDS))}", "$.sender_kind")
    return msg


def infer_sender_kind(channel: str, value: str) -> str:
    if "@" in value:
        return "email"
    if _PHONE.match(value):
        return "phone"
    if channel in IDENTITY_KINDS:
        return channel
    return _CHANNEL_SENDER_KIND.get(channel, "external")


def to_rule_input(msg: MessageInput, now: datetime | None = None) -> RuleInput:
    """``msg.now`` wins over ``now``; one of them is needed."""
    when = msg.now or now
    if when is None:
        raise InputError("now is needed (ISO 8601, e.g. 2025-03-04T10:00:00+08:00)", "$.now")
    value = msg.from_ or "unknown"
    inbound = Inbound(
        channel=msg.channel,
        account=msg.account or msg.channel,
        external_id="dry-run",
        kind="call" if msg.call is not None else msg.kind,
        call=(CallInfo(direction=msg.call.direction, disposition=msg.call.disposition, duration_s=msg.call.duration,
                       from_=value) if msg.call is not None else None),
        sender=Sender(msg.sender_kind or infer_sender_kind(msg.channel, value), value, msg.name),
        subject=msg.subject,
        text=msg.text,
        attachments=_attachments(msg.attachments),
        language=msg.language,
        auto=msg.auto,
    )
    return with_contact(inbound, when, msg)


def with_contact(inbound: Inbound, now: datetime, msg: MessageInput | None = None) -> RuleInput:
    """A RuleInput for ``inbound``, with the contact and ticket facts of
    ``msg`` (none: an unknown contact and a new ticket)."""
    if msg is None:
        return RuleInput(inbound=inbound, now=now)
    return RuleInput(
        inbound=inbound,
        now=now,
        contact_name=msg.contact_name,
        contact_tier=msg.tier,
        contact_tags=tuple(msg.tags),
        contact_language=msg.contact_language,
        is_new_ticket=msg.ticket == "new",
        ticket_number=msg.ticket_number,
        ticket_status=msg.ticket_status,
    )


def _attachments(spec: int | list[str]) -> list[Attachment]:
    names = [f"attachment-{i + 1}" for i in range(spec)] if isinstance(spec, int) else spec
    empty = hashlib.sha256(b"").hexdigest()
    return [Attachment(name=n, content_type="application/octet-stream", size=0, sha256=empty) for n in names]
