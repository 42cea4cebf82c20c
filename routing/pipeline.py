"""The routing pipeline: an explicit, ordered list of pure stages.

``decide(inbound, snapshot, settings)`` runs :data:`STAGES` in order over a
:class:`Work` record and returns the :class:`~routing.state.Commit` the store
applies atomically. A stage reads the Inbound, the snapshot and what earlier
stages decided; it never does I/O and never reads the clock (``snapshot.now``
is the time). A stage may finish the work early (an exact redelivery needs
nothing else). Every decision carries its reason, and the reasons end up on
the timeline.

The routing tree comes in through :class:`Settings` (``rules``: anything
that evaluates a ``RuleInput``). Assignment and SLA timers are not stages:
they need the agents' live load, so the gateway runs them after the commit,
each in its own store transaction (ARCHITECTURE.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import msgspec

from routing import calls, dedupe, identity, threads
from routing.model import (
    OPEN_STATUSES,
    PRIORITY_RANK,
    Attachment,
    Identity,
    Inbound,
    ReplyTarget,
    Sender,
    ThreadHints,
    TimelineEntry,
    new_id,
)
from routing.rules.types import RuleInput, RuleOutcome
from routing.state import (
    Commit,
    DeliveryStatus,
    TicketState,
    NewTicket,
    OutboxEvent,
    Snapshot,
    TicketChange,
    TimelineEdit,
)


@dataclass
class Settings:
    """Pipeline configuration, already compiled (no parsing per message)."""

    region: str = "CN"
    near_window_s: float = 300.0
    reopen_window_s: Callable[[str], float] = lambda channel: 7 * 86400.0
    ref_patterns: list[re.Pattern[str]] = field(
        default_factory=lambda: threads.compile_ref_patterns([r"\[#(\d{1,12})\]", r"工单[号編编]?\s*[:：#]?\s*(\d{1,12})"])
    )
    ref_requires_same_contact: bool = True
    cross_channel: bool = True
    #: The routing tree: anything with ``evaluate(RuleInput) -> RuleOutcome | None``
    #: (the gateway's hot-reloaded RulesRuntime); None routes nothing.
    rules: Any = None
    #: Where the ids of new rows come from: ``(milliseconds of snapshot.now) → id``.
    #: ULIDs by default (time from the snapshot, never the clock); a test passes a
    #: deterministic one and gets the same Commit for the same inputs.
    new_id: Callable[[int], str] = new_id


class Lookup(msgspec.Struct, frozen=True):
    """What the store must read for one Inbound (derived from it, purely).
    (A Struct, as the other per-message records here: a frozen dataclass
    took ten times as long to build.)"""

    sender: Identity
    extra: tuple[Identity, ...]
    numbers: tuple[int, ...]
    refs: tuple[str, ...]
    text_hash: str | None
    message_key: tuple[str, str, str]
    edits_key: tuple[str, str, str] | None
    near_window_s: float
    #: A call: a hit on its message key is another report of it (the store
    #: reads the rest of the snapshot too).
    call: bool = False
    #: The body digest of an email (``meta["content_sha"]``): tells a reused
    #: Message-ID from a redelivery.
    content_sha: str | None = None

    @property
    def identities(self) -> tuple[Identity, ...]:
        return (self.sender, *self.extra)


def lookup(inbound: Inbound, settings: Settings) -> Lookup:
    sender, extra, _ = identity.identities_of(inbound, settings.region)
    call_owner = calls.call_identity(inbound)
    if call_owner is not None:  # an internal call, a withheld caller: not the sender's own number
        sender, extra = call_owner, []
    refs = threads.thread_refs(inbound)
    dsn_ref = inbound.meta.get("dsn_original_message_id")
    if dsn_ref:
        refs.append(dsn_ref.strip("<>"))
    return Lookup(
        sender=sender,
        extra=tuple(extra),
        numbers=tuple(threads.ticket_numbers(inbound, settings.ref_patterns)),
        refs=tuple(refs),
        text_hash=(dedupe.text_hash(inbound.text)
                   if inbound.kind == "message" and not inbound.auto and not _outbound(inbound) else None),
        message_key=(inbound.channel, inbound.account, inbound.external_id),
        edits_key=(inbound.channel, inbound.account, inbound.edits) if inbound.edits else None,
        near_window_s=settings.near_window_s,
        call=inbound.kind == "call",
        content_sha=inbound.meta.get("content_sha"),
    )


class Work(msgspec.Struct):
    """One message on its way through the stages."""

    inbound: Inbound
    journal_id: str
    snap: Snapshot
    settings: Settings
    look: Lookup
    now: datetime
    commit: Commit
    #: ``now`` in milliseconds since the epoch: the time of new ids
    now_ms: int
    contact_id: str | None = None
    thread: threads.ThreadDecision | None = None
    reasons: dict = msgspec.field(default_factory=dict)
    timeline: list[TimelineEntry] = msgspec.field(default_factory=list)
    #: Ticket fields decided by later stages (rules, assignment).
    ticket_fields: dict = msgspec.field(default_factory=dict)
    outbox: list[OutboxEvent] = msgspec.field(default_factory=list)
    done: bool = False

    def new_id(self) -> str:
        """A fresh id for a new row, from ``settings.new_id`` at the snapshot's time."""
        return self.settings.new_id(self.now_ms)


# ---------------------------------------------------------------- stages


REUSED_ID = "message-id reused with different content"


def _reused_id(w: Work, hit) -> bool:
    return hit.journal_id != w.journal_id and dedupe.reused_id(hit.journal_key, w.look.content_sha)


def stage_exact_dedupe(w: Work) -> None:
    hit = w.snap.exact
    if hit is None:
        return
    if w.inbound.kind == "call" and hit.journal_id != w.journal_id and hit.timeline_id is not None:
        return  # another report of a committed call: stage_call_update
    if _reused_id(w, hit):
        i = w.inbound
        w.commit.message_key = (i.channel, i.account, f"{i.external_id}#{i.meta['content_sha']}")
        if REUSED_ID not in i.defects:
            i.defects.append(REUSED_ID)
        w.reasons["dedupe"] = {"stage": "dedupe", "reused_message_id": i.external_id,
                               "first_journal_id": hit.journal_id, "why": REUSED_ID}
        return
    w.commit.outcome = "processed" if hit.journal_id == w.journal_id else "duplicate"
    w.commit.message_key = None
    w.commit.contact_id, w.commit.ticket_id = hit.contact_id, hit.ticket_id
    w.commit.counted = None if hit.journal_id == w.journal_id else "deduped"
    w.done = True


def stage_delivery_status(w: Work) -> None:
    """A platform's delivery report (``raw_type == "status"`` with
    ``meta["status_of"]``: a WhatsApp status, a Messenger delivery or read)
    updates the delivery of the reply it names; it is not a customer
    message, so no contact, ticket or timeline entry comes of it."""
    i = w.inbound
    if i.kind != "event" or i.raw_type != "status" or "status_of" not in i.meta:
        return
    watermark = None
    mark = i.meta.get("watermark", "")
    if not i.meta["status_of"] and mark.isascii() and mark.isdigit():  # "²" is a digit to isdigit(), not to int()
        try:
            watermark = datetime.fromtimestamp(int(mark) / 1000, timezone.utc)
        except (OverflowError, OSError, ValueError):  # no time a datetime holds: nothing to mark read
            watermark = None
    w.commit.delivery = DeliveryStatus(
        channel=i.channel, external_id=i.meta["status_of"], status=i.meta.get("status", "unknown"),
        at=i.sent_at or w.now, error_code=i.meta.get("error_code"),
        error=i.meta.get("error_details") or i.meta.get("error_title"),
        watermark=watermark, contact_id=w.snap.owners.get(w.look.sender.key()) if watermark else None,
    )
    w.reasons["delivery"] = {"stage": "delivery", "status_of": i.meta["status_of"]}
    w.done = True


def stage_identity(w: Work) -> None:
    d = identity.resolve(w.inbound, w.look.sender, list(w.look.extra), w.snap, w.now, new_id=w.new_id)
    c = w.commit
    w.contact_id = c.contact_id = d.contact_id
    c.origin_identity = w.look.sender
    c.new_contact, c.link_identities, c.contact_expect_version = d.new_contact, d.links, d.expect_version
    c.contact_name = d.rename
    w.reasons["identity"] = d.reason
    if w.inbound.meta.get("sender_unknown") == "true" or (
            w.look.sender.kind == "external" and w.look.sender.value.startswith("unknown:")
            and w.inbound.sender.kind != "external"):
        # no usable sender identity: a contact of its own, flagged for an agent
        d.reason["sender_unknown"] = f"no usable {w.inbound.sender.kind} identity in the message"
        c.add_flags = ("sender_unknown",)
    w.timeline.extend(d.timeline)
    blocked = w.inbound.meta.get("blocked")
    if blocked == "true":
        c.add_flags = (f"blocked:{w.inbound.channel}",)
    elif blocked == "false":
        c.remove_flags = (f"blocked:{w.inbound.channel}",)


def stage_edit(w: Work) -> None:
    """An edit of an earlier message updates that timeline entry."""
    hit = w.snap.edited
    if not w.inbound.edits or hit is None or hit.timeline_id is None:
        return
    w.commit.edit = TimelineEdit(timeline_id=hit.timeline_id, text=w.inbound.text, edited_at=w.now)
    w.commit.ticket_id = hit.ticket_id
    w.reasons["edit"] = {"stage": "edit", "edits": w.inbound.edits, "timeline_id": hit.timeline_id}
    w.outbox.append(OutboxEvent("message.edited", {"timeline_id": hit.timeline_id}, hit.ticket_id))
    w.done = True


def stage_call_update(w: Work) -> None:
    """A later report of a call already on the timeline (same call id:
    uniqueid/linkedid, FreeSWITCH uuid, CallSid) updates that entry's call
    data — disposition, times, recording — instead of adding a second call.
    Its own message key (``<call id>@<journal id>``) makes a replay of the
    report change nothing."""
    i, hit = w.inbound, w.snap.exact
    if i.kind != "call" or hit is None or hit.journal_id == w.journal_id or hit.timeline_id is None:
        return
    w.commit.message_key = (i.channel, i.account, f"{i.external_id}@{w.journal_id}")
    w.commit.edit = TimelineEdit(timeline_id=hit.timeline_id, text=i.text, edited_at=w.now,
                                 call=msgspec.to_builtins(i.call) if i.call is not None else {})
    w.commit.ticket_id = hit.ticket_id
    w.reasons["call_update"] = {"stage": "call_update", "call": i.external_id, "timeline_id": hit.timeline_id}
    w.outbox.append(OutboxEvent("message.edited", {"timeline_id": hit.timeline_id}, hit.ticket_id))
    w.done = True


def stage_internal_call(w: Work) -> None:
    """An internal call (extension to extension) is no customer's: recorded
    on the source's "internal calls" contact, without a ticket."""
    if not calls.is_internal(w.inbound):
        return
    entry = _message_entry(w, "call", ticket_id=None)
    entry.data["why_no_ticket"] = "internal call"
    w.timeline.insert(0, entry)
    w.commit.message_entry_id = entry.id
    w.done = True


def stage_events(w: Work) -> None:
    """Events (subscribe, menu clicks, session changes) join the contact's
    timeline without opening a ticket; so do bounces whose original is unknown."""
    i = w.inbound
    unthreadable_bounce = i.auto == "bounce" and not any(r in w.snap.ref_tickets for r in w.look.refs)
    if i.kind != "event" and not unthreadable_bounce:
        return
    kind = "event" if i.kind == "event" else "message_in"
    entry = _message_entry(w, kind, ticket_id=None)
    entry.data["why_no_ticket"] = "event" if i.kind == "event" else "bounce of an unknown message"
    target = _session_end_target(w) if i.kind == "event" else None
    if target is not None:
        status = i.meta["ticket_status"]
        reason = f"{i.channel} session {i.raw_type or 'event'}: {status}"
        w.commit.status_change = (target.id, status, reason)
        entry.ticket_id = target.id
        entry.data["status_change"] = {"ticket": target.id, "to": status}
    w.timeline.append(entry)
    w.commit.message_entry_id = entry.id
    w.done = True


def _session_end_target(w: Work) -> TicketState | None:
    """The ticket a channel's "conversation ended" event closes: the contact's
    most recent open ticket that came through this channel. (A session
    *starting* changes nothing: the customer's next message threads as usual.)"""
    status = w.inbound.meta.get("ticket_status")
    if status not in ("solved", "closed"):
        return None
    for t in w.snap.tickets:  # most recent activity first
        if t.contact_id == w.contact_id and w.inbound.channel in t.channels and t.status in OPEN_STATUSES:
            return t
    return None


def stage_near_dedupe(w: Work) -> None:
    hit = w.snap.near_duplicate
    if hit is None or hit.contact_id != w.contact_id:
        return
    entry = _message_entry(w, "duplicate", ticket_id=hit.ticket_id)
    entry.linked_to = hit.timeline_id
    entry.data["reason"] = {"stage": "dedupe", "near_duplicate_of": hit.timeline_id,
                            "window_s": w.settings.near_window_s}
    w.timeline.append(entry)
    w.commit.message_entry_id = entry.id
    w.commit.ticket_id = hit.ticket_id
    w.commit.counted = "near_duplicate"
    w.done = True


def stage_threading(w: Work) -> None:
    i = w.inbound
    assert w.contact_id is not None
    w.thread = threads.decide(
        i, w.contact_id, w.snap, list(w.look.numbers), list(w.look.refs),
        w.settings.reopen_window_s(i.channel),
        ref_requires_same_contact=w.settings.ref_requires_same_contact,
        cross_channel=w.settings.cross_channel,
    )
    w.reasons["threading"] = w.thread.reason


def stage_rules(w: Work) -> None:
    """The YAML routing tree: priority, team, skills, tags, assignee,
    auto-reply, webhooks, spam/ignore — one ``rule`` entry per matched rule.

    A new ticket takes every setting; a follow-up on an existing ticket only
    raises its priority and adds tags (re-routing work in progress would
    surprise the agent who has it)."""
    rules, t, i = w.settings.rules, w.thread, w.inbound
    if rules is None or t is None or _outbound(i):  # an agent's own message is not routed
        return
    contact = w.snap.contacts.get(w.contact_id or "")
    if (i.sender.kind, i.sender.value) != (w.look.sender.kind, w.look.sender.value):
        # rules match the normalized identity ("+8613800138000", not "138 0013 8000")
        i = msgspec.structs.replace(i, sender=Sender(w.look.sender.kind, w.look.sender.value, i.sender.name))
    ri = RuleInput(
        inbound=i, now=w.now, contact_name=(contact.name if contact else None) or i.sender.name,
        contact_tier=contact.tier if contact else None, contact_tags=contact.tags if contact else (),
        is_new_ticket=t.action == "new", ticket_number=t.ticket.number if t.ticket else None,
        ticket_status=t.ticket.status if t.ticket else None,
    )
    outcome: RuleOutcome | None = rules.evaluate(ri)
    if outcome is None:
        return
    w.reasons["rules"] = {"stage": "rules", "path": list(outcome.path), "rule": outcome.rule}
    for m in outcome.matched:
        w.timeline.append(TimelineEntry(
            id=w.new_id(), contact_id=w.contact_id or "", kind="rule", at=w.now, channel=i.channel,
            text=f"rule {m.id}: {m.title}" + (f" — {'; '.join(m.matched)}" if m.matched else ""),
            data={"rule": m.id, "title": m.title, "owner": m.owner, "matched": list(m.matched), "depth": m.depth},
        ))
    f = w.ticket_fields
    if t.action == "new":
        f["priority"] = outcome.priority
        if outcome.team or outcome.assign_team:
            f["team"] = outcome.assign_team or outcome.team
        if outcome.skills:
            f["skills"] = dict(outcome.skills)
        if outcome.assignee:
            f["assignee"] = outcome.assignee
    elif t.ticket is not None and PRIORITY_RANK.get(outcome.priority, 9) < PRIORITY_RANK.get(t.ticket.priority, 9):
        f["priority"] = outcome.priority
    if outcome.tags:
        f["tags"] = list(outcome.tags)
    for hook in outcome.webhooks:
        w.outbox.append(OutboxEvent("webhook.notify", {"webhook": hook, "rule": outcome.rule,
                                                       "contact_id": w.contact_id}, None))
    if outcome.spam or outcome.ignore:
        f["drop"] = "spam" if outcome.spam else "ignore"
    elif outcome.auto_reply is not None:
        w.commit.auto_reply = (outcome.auto_reply.template, ri)
    if outcome.auto_reply_suppressed:
        w.reasons["rules"]["auto_reply_suppressed"] = outcome.auto_reply_suppressed


def stage_dropped(w: Work) -> None:
    """Spam and ignored messages are kept on the contact's timeline, without a ticket."""
    drop = w.ticket_fields.get("drop")
    if drop is None:
        return
    entry = _message_entry(w, "call" if w.inbound.kind == "call" else "message_in", ticket_id=None)
    entry.data["why_no_ticket"] = f"marked {drop} by rule {w.reasons['rules']['rule']}"
    w.timeline.insert(0, entry)
    w.commit.message_entry_id = entry.id
    w.done = True


def stage_compose(w: Work) -> None:
    """Turn the decisions into the ticket change, timeline entries and events."""
    i, c, t = w.inbound, w.commit, w.thread
    assert t is not None
    # in a group chat the sender is a person but the reply goes to the chat
    to = Identity(w.look.sender.kind, i.meta["chat_id"]) if i.meta.get("chat_id") else w.look.sender
    reply_to = ReplyTarget(
        channel=i.channel, account=i.account, to=to,
        thread=ThreadHints(message_id=i.thread.message_id,
                           references=[*i.thread.references, *([i.thread.message_id] if i.thread.message_id else [])][-20:],
                           session_id=i.thread.session_id),
    )
    at = _arrival(w)
    f = w.ticket_fields
    if t.action == "new":
        ticket_id = w.new_id()
        c.new_ticket = NewTicket(
            id=ticket_id, subject=i.subject or _subject_from(i), channel=i.channel, created_at=w.now,
            reply_to=reply_to, follow_up_of=t.follow_up_of,
            priority=f.get("priority", "normal"), team=f.get("team"), skills=f.get("skills", {}),
            tags=tuple(f.get("tags", ())), assignee=f.get("assignee"),
        )
        w.outbox.append(OutboxEvent("ticket.created", {"ticket_id": ticket_id, "contact_id": w.contact_id,
                                                        "channel": i.channel}, ticket_id))
    else:
        assert t.ticket is not None
        ticket_id = t.ticket.id
        reopen = t.action == "reopen" or (_outbound(i) and t.ticket.status == "new")
        c.ticket_change = TicketChange(
            id=ticket_id, expect_version=t.ticket.version,
            status="open" if reopen else None,
            responded_at=at if _outbound(i) else None,
            last_message_at=max(at, t.ticket.last_message_at),
            add_channel=i.channel if i.channel not in t.ticket.channels else None,
            # the reply address follows the ticket's own contact only: a
            # participant's or a bounce's message never redirects the replies
            reply_to=reply_to if w.contact_id == t.ticket.contact_id else None,
            priority=f.get("priority"), team=f.get("team"), skills=f.get("skills"),
            add_tags=tuple(f.get("tags", ())), assignee=f.get("assignee"),
        )
        changes = _ticket_changes(t.ticket, f)
        if changes:  # a follow-up's rule raised the priority or added tags
            w.outbox.append(OutboxEvent("ticket.updated", {"ticket_id": ticket_id, "changes": changes,
                                                           "reason": "rules"}, ticket_id))
        if t.action == "reopen":
            w.outbox.append(OutboxEvent("ticket.status_changed", {"ticket_id": ticket_id, "from": t.ticket.status,
                                                                  "to": "open", "actor": "customer"}, ticket_id))
            w.timeline.append(TimelineEntry(
                id=w.new_id(), contact_id=w.contact_id or "", ticket_id=ticket_id, kind="status", at=w.now,
                channel=i.channel, text=f"reopened: {t.ticket.status} → open by a new customer message",
                data={"from": t.ticket.status, "to": "open", "reason": t.reason},
            ))
            w.outbox.append(OutboxEvent("ticket.reopened", {"ticket_id": ticket_id}, ticket_id))
    c.ticket_id = ticket_id
    if t.mentions is not None:
        _mention_entries(w, t.mentions, ticket_id)
    c.participants = _participants(w)
    for e in w.timeline:
        if e.kind == "rule":
            e.ticket_id = ticket_id
    w.outbox = [OutboxEvent(e.topic, {**e.payload, "ticket_id": ticket_id}, ticket_id)
                if e.topic == "webhook.notify" else e for e in w.outbox]
    kind = "call" if i.kind == "call" else "message_out" if _outbound(i) else "message_in"
    entry = _message_entry(w, kind, ticket_id)
    if kind == "message_out":  # written by an agent in the platform's own client
        entry.data.update(author=i.meta.get("agent") or f"{i.channel}:agent", auto=False, public=True,
                          delivery={"status": "sent", "via": f"{i.channel} client"})
    w.timeline.insert(0, entry)
    c.message_entry_id = entry.id
    c.thread_refs = threads.own_refs(i)
    w.outbox.append(OutboxEvent("message.created", {"timeline_id": entry.id, "ticket_id": ticket_id,
                                                     "contact_id": w.contact_id, "channel": i.channel}, ticket_id))


def _ticket_changes(ticket: Any, f: dict) -> dict:
    """What the rules change on an existing ticket (for ``ticket.updated``)."""
    changes: dict = {}
    if not f:  # most follow-ups: the rules changed nothing
        return changes
    for key in ("priority", "team", "assignee"):
        if f.get(key) is not None and f[key] != getattr(ticket, key, None):
            changes[key] = {"from": getattr(ticket, key, None), "to": f[key]}
    if f.get("tags"):  # (no tags: none added)
        added = sorted(set(f["tags"]) - set(getattr(ticket, "tags", ()) or ()))
        if added:
            changes["tags"] = {"added": added}
    return changes


#: The pipeline, in order. Each stage is a pure function of the Work.
STAGES: tuple[Callable[[Work], None], ...] = (
    stage_exact_dedupe,
    stage_delivery_status,
    stage_identity,
    stage_edit,
    stage_call_update,
    stage_internal_call,
    stage_events,
    stage_near_dedupe,
    stage_threading,
    stage_rules,
    stage_dropped,
    stage_compose,
)


def decide(inbound: Inbound, journal_id: str, snap: Snapshot, settings: Settings, look: Lookup | None = None) -> Commit:
    """Run the stages; the Commit to apply. Pure: the same inputs (and a
    deterministic ``settings.new_id``) give an equal Commit; times come from
    ``snap.now``, never from the clock."""
    look = look or lookup(inbound, settings)
    w = Work(
        inbound=inbound, journal_id=journal_id, snap=snap, settings=settings, look=look, now=snap.now,
        now_ms=int(snap.now.timestamp() * 1000),
        commit=Commit(journal_id=journal_id, outcome="processed", message_key=look.message_key,
                      key_taken_conflicts=inbound.kind == "call"),
    )
    for stage in STAGES:
        stage(w)
        if w.done:
            break
    c = w.commit
    for e in w.timeline:
        if not e.contact_id:
            e.contact_id = w.contact_id or ""
    c.timeline = w.timeline
    c.outbox = w.outbox
    return c


# ---------------------------------------------------------------- helpers


def _mention_entries(w: Work, other: TicketState, ticket_id: str) -> None:
    """A message that quoted another contact's ticket in its thread headers
    opened its own ticket: say so on both, for an agent to merge."""
    i, why = w.inbound, w.thread.reason.get("why", "") if w.thread else ""
    sender = w.look.sender.key()
    w.timeline.append(TimelineEntry(
        id=w.new_id(), contact_id=w.contact_id or "", ticket_id=ticket_id, kind="event", at=w.now, channel=i.channel,
        text=f"mentions ticket #{other.number}: {sender} replied to it but is neither its contact nor a "
             "participant, so this message opened its own ticket; merge if it belongs there",
        data={"mentions": {"ticket_id": other.id, "number": other.number}, "reason": why, "sender": sender},
    ))
    w.timeline.append(TimelineEntry(
        id=w.new_id(), contact_id=other.contact_id, ticket_id=other.id, kind="event", at=w.now, channel=i.channel,
        text=f"mentioned by a message from {sender} (not this ticket's contact nor a participant): "
             "it opened its own ticket",
        data={"mentioned_by": {"ticket_id": ticket_id, "contact_id": w.contact_id}, "sender": sender},
    ))


def _participants(w: Work) -> list[tuple[Identity, str]]:
    """Addresses a person-written email brings into the conversation (its To
    and Cc, less our own mailboxes and the sender): later mail from them may
    thread onto the ticket by its headers."""
    i = w.inbound
    if i.channel != "email" or i.auto or _outbound(i) or not i.recipients:
        return []
    ours = {a.strip().lower() for a in i.meta.get("envelope_to", "").split(",") if a.strip()}
    ours.add(i.account.lower())
    out: list[tuple[Identity, str]] = []
    for addr in i.recipients:
        try:
            value = identity.normalize("email", addr, w.settings.region)
        except ValueError:
            continue
        if value in ours or value == w.look.sender.value:
            continue
        out.append((Identity("email", value), "recipient"))
    return out



def _subject_from(i: Inbound) -> str | None:
    text = (i.text or "").strip().splitlines()
    if text and text[0].strip():
        first = text[0].strip()
        return first if len(first) <= 80 else first[:79] + "…"
    if i.kind == "call" and i.call is not None:
        return f"Call from {i.call.from_ or i.sender.value}"
    return None


def _public_attachments(attachments: list[Attachment]) -> list[Attachment]:
    return [
        Attachment(name=a.name, content_type=a.content_type, size=a.size, sha256=a.sha256,
                   storage_ref=a.storage_ref, inline=a.inline, content_id=a.content_id, url=a.url)
        for a in attachments
    ]


def _outbound(i: Inbound) -> bool:
    """An agent's message the channel reports (``meta["direction"] == "outbound"``):
    it joins the customer's conversation as a reply, not as a new question."""
    return i.meta.get("direction") == "outbound"


def _arrival(w: Work) -> datetime:
    """Where a message sits on the timeline: when it reached us. A sender's
    own clock (an email Date header) can be anything, so it is kept in
    ``data.sent_at`` but does not order the timeline; a call sits at its start."""
    i = w.inbound
    if i.kind == "call" and i.call is not None and i.call.started_at is not None:
        return i.call.started_at
    return i.received_at or w.now


def _message_entry(w: Work, kind: str, ticket_id: str | None) -> TimelineEntry:
    i = w.inbound
    data: dict = {"sender": {"kind": w.look.sender.kind, "value": w.look.sender.value, "name": i.sender.name},
                  "reasons": dict(w.reasons), "account": i.account}
    for key in ("raw_type", "auto", "language", "html", "full_text"):
        value = getattr(i, key)
        if value:
            data[key] = value
    if i.sent_at is not None:
        data["sent_at"] = i.sent_at.isoformat()
    if i.defects:
        data["defects"] = list(i.defects)
    if i.meta:
        data["meta"] = dict(i.meta)
    if i.call is not None:
        data["call"] = msgspec.to_builtins(i.call)
    if w.look.text_hash:
        data["text_hash"] = w.look.text_hash
    return TimelineEntry(
        id=w.new_id(), contact_id=w.contact_id or "", kind=kind, at=_arrival(w), ticket_id=ticket_id,
        channel=i.channel, journal_id=w.journal_id, external_id=i.external_id, subject=i.subject, text=i.text,
        attachments=_public_attachments(i.attachments), data=data,
    )
