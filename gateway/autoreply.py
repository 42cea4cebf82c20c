"""Where an automatic reply may go (RFC 3834), decided where the inbound's
envelope is known: after the commit, before the reply is queued.

For email the answer is the envelope sender — the SMTP ``MAIL FROM`` the
gateway received, or the ``Return-Path`` the delivering server wrote (the
parser keeps it as ``meta["return_path"]``) — and only it:

- a null sender (``MAIL FROM:<>``: bounces, other auto-replies) gets nothing;
- no known envelope sender gets nothing (the ``From`` alone can be forged:
  an auto-reply to it would be a reflection attack);
- the reply goes to the Return-Path's address, never to a ``From`` that
  differs from it;
- a message the parser marked automatic (bounce, auto-reply, bulk) gets
  nothing.

Pacing (one per address per window, a global hourly budget) is the store's
``auto_reply(…, limits=…)``, checked and recorded in the reply's own
transaction. Other channels keep the ticket's reply target; their platforms
have no envelope to forge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from routing.model import Identity, Inbound


@dataclass(frozen=True)
class Verdict:
    send: bool
    #: The address to answer, overriding the ticket's reply target (email).
    to: Identity | None
    why: str


def verdict(inbound: Inbound) -> Verdict:
    """May ``inbound`` be answered automatically, and where to (pure)."""
    if inbound.auto:
        return Verdict(False, None, f"the message is automatic ({inbound.auto})")
    if inbound.channel != "email":
        return Verdict(True, None, "not email: the ticket's reply target")
    path = inbound.meta.get("return_path")
    if path is None:
        return Verdict(False, None, "no envelope sender known (RFC 3834 answers the Return-Path only)")
    if path == "<>" or not path:
        return Verdict(False, None, "null envelope sender (MAIL FROM:<>)")
    return Verdict(True, Identity("email", path), "the envelope sender (Return-Path)")


def limits_from(channel_config: Mapping[str, Any]) -> tuple[float, int]:
    """``(window seconds, global per hour)`` from the ``email`` section."""
    window = float(channel_config.get("auto_reply_window", 86400.0))
    budget = int(channel_config.get("auto_replies_global_per_hour", 200))
    return window, budget
