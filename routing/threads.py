"""Threading: which ticket does this message belong to?

In order, the first that applies wins, and the reason is recorded:

1. an explicit ticket reference in the subject or text (``[#1234]``,
   ``工单号 1234``), when that ticket belongs to the same contact (configurable);
2. thread headers (email ``In-Reply-To`` / ``References``, a channel's session
   id) naming a message that belongs to a ticket — only when the sender is
   that ticket's contact or a known participant (an address the ticket has
   corresponded with: a Cc of an earlier message, a Cc an agent added).
   Anyone else who quotes a ticket's Message-ID opens a ticket of their own
   that *mentions* the referenced one (``ThreadDecision.mentions``), for an
   agent to merge: a Message-ID is no credential;
3. an open ticket of the contact whose last activity is within the
   channel's reopen window (a solved one inside the window is reopened);
4. otherwise a new ticket — linked as a follow-up to the contact's latest
   ticket when that one is solved or closed.

A closed ticket is never reopened: a message that names one opens a
follow-up linked to it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Iterable

import msgspec

from routing.model import OPEN_STATUSES, Inbound
from routing.state import Snapshot, TicketState
from routing.text import int64


def compile_ref_patterns(patterns: Iterable[str]) -> list[re.Pattern[str]]:
    return [re.compile(p, re.IGNORECASE) for p in patterns]


def ticket_numbers(inbound: Inbound, patterns: list[re.Pattern[str]]) -> list[int]:
    """Ticket display numbers the message names, subject first, in order."""
    out: list[int] = []
    ref = int64((inbound.thread.ticket_ref or "").strip().lstrip("#"))
    if ref is not None:
        out.append(ref)
    for text in (inbound.subject, inbound.text):
        if not text:
            continue
        for pat in patterns:
            if pat.search(text) is None:  # the usual case, answered without building an iterator
                continue
            for m in pat.finditer(text):
                n = int(m.group(1))
                if n not in out:
                    out.append(n)
    return out


def thread_refs(inbound: Inbound) -> list[str]:
    """The references a message makes to earlier ones, nearest first."""
    t = inbound.thread
    refs: list[str] = []
    if t.in_reply_to:
        refs.append(t.in_reply_to)
    refs.extend(reversed(t.references))
    if t.session_id:
        refs.append(f"session:{inbound.channel}:{t.session_id}")
    seen: set[str] = set()
    return [r for r in refs if r and not (r in seen or seen.add(r))]


def own_refs(inbound: Inbound) -> list[str]:
    """References later messages may use to name this one."""
    refs = []
    if inbound.thread.message_id:
        refs.append(inbound.thread.message_id)
    if inbound.thread.session_id:
        refs.append(f"session:{inbound.channel}:{inbound.thread.session_id}")
    return refs


class ThreadDecision(msgspec.Struct, frozen=True):
    action: str  # append | reopen | new
    ticket: TicketState | None  # the existing ticket for append/reopen
    follow_up_of: str | None
    reason: dict
    #: A ticket the message referenced by headers but may not join (the
    #: sender is neither its contact nor a participant).
    mentions: TicketState | None = None


def decide(
    inbound: Inbound,
    contact_id: str,
    snap: Snapshot,
    numbers: list[int],
    refs: list[str],
    window_s: float,
    *,
    ref_requires_same_contact: bool = True,
    cross_channel: bool = True,
) -> ThreadDecision:
    now = snap.now
    horizon = now - timedelta(seconds=window_s)
    ignored: list[dict] = []

    def on(ticket: TicketState, reason: dict) -> ThreadDecision:
        if ticket.status in OPEN_STATUSES:
            return ThreadDecision("append", ticket, None, reason)
        if ticket.status == "solved" and (ticket.solved_at or ticket.last_message_at) >= horizon:
            return ThreadDecision("reopen", ticket, None, {**reason, "reopened": True})
        return ThreadDecision("new", None, ticket.id, {**reason, "follow_up": True,
                              "why": f"ticket #{ticket.number} is {ticket.status}"})

    for n in numbers:
        t = snap.numbered.get(n)
        if t is None:
            ignored.append({"ref": n, "why": "no such ticket"})
            continue
        if ref_requires_same_contact and t.contact_id != contact_id:
            ignored.append({"ref": n, "why": "ticket belongs to another contact"})
            continue
        return on(t, {"stage": "threading", "by": "ticket_ref", "ref": f"#{n}", "ticket": t.id,
                      **({"ignored": ignored} if ignored else {})})
    mentioned: TicketState | None = None
    for ref in refs:
        t = snap.ref_tickets.get(ref)
        if t is not None:
            header = "in_reply_to" if ref == inbound.thread.in_reply_to else (
                "session" if ref.startswith("session:") else "references")
            # a bounce names our own outgoing mail: it joins (as a notice; it
            # changes no reply address), whoever the mailer daemon is
            if t.contact_id != contact_id and t.id not in snap.participating and inbound.auto != "bounce":
                ignored.append({"ref": ref, "by": header, "ticket": t.id,
                                "why": f"sender is neither the contact nor a participant of ticket #{t.number}"})
                mentioned = mentioned or t
                continue
            return on(t, {"stage": "threading", "by": header, "ref": ref, "ticket": t.id,
                          **({"ignored": ignored} if ignored else {}),
                          **({"participant": True} if t.contact_id != contact_id else {})})
    if mentioned is not None:
        return ThreadDecision("new", None, None, {
            "stage": "threading", "by": "new_ticket", "ignored": ignored, "mentions": mentioned.id,
            "why": f"mentions ticket #{mentioned.number}, whose contact is not the sender; merge if it belongs there",
        }, mentions=mentioned)
    mine = [t for t in snap.tickets if t.contact_id == contact_id]
    for t in mine:  # most recent activity first
        if not cross_channel and inbound.channel not in t.channels:
            continue
        if t.status in OPEN_STATUSES and t.last_message_at >= horizon:
            return ThreadDecision("append", t, None, {"stage": "threading", "by": "open_ticket", "ticket": t.id,
                                                      "window_s": window_s, **({"ignored": ignored} if ignored else {})})
        if t.status == "solved" and (t.solved_at or t.last_message_at) >= horizon:
            return ThreadDecision("reopen", t, None, {"stage": "threading", "by": "reopen_window", "ticket": t.id,
                                                      "window_s": window_s, "reopened": True,
                                                      **({"ignored": ignored} if ignored else {})})
    latest = mine[0] if mine else None
    reason: dict = {"stage": "threading", "by": "new_ticket"}
    if ignored:
        reason["ignored"] = ignored
    follow = None
    if latest is not None and latest.status in ("solved", "closed"):
        follow = latest.id
        reason["follow_up"] = True
        reason["why"] = f"ticket #{latest.number} is {latest.status} and outside the {int(window_s)}s window"
    elif latest is not None:
        reason["why"] = f"open ticket #{latest.number} had no activity within the {int(window_s)}s window"
    return ThreadDecision("new", None, follow, reason)


