"""Calls on the timeline: whose contact a call is on, and how reports of one
call combine.

A call source reports a call once or several times (Asterisk forks CDRs,
Twilio posts ringing → in-progress → completed, a FreeSWITCH CSV repeats a
uuid). Every report is an Inbound of kind ``call`` with the call id as its
``external_id``; the first one committed is *the* call (its message key), a
later one updates that timeline entry's ``data.call`` with :func:`merge_call`
instead of adding a second call.

Whose timeline: the customer's phone number (the caller of an inbound call,
the callee of an outbound one). A number that is withheld or not a phone
number (empty, ``anonymous``, ``test``) gives a per-call anonymous contact,
never an empty identity; an internal call (extension to extension) is not a
customer's: it is recorded, without a ticket, on one "internal calls"
contact per call source.
"""

from __future__ import annotations

import re
from datetime import datetime

from routing.model import Identity, Inbound

_PHONE_LIKE = re.compile(r"\+?[0-9][0-9 ()./-]*")
#: When two reports disagree, the stronger disposition stands: a call that
#: was answered on one leg was answered (a forked CDR's other leg says NO ANSWER).
_DISPOSITION_RANK = {None: 0, "failed": 1, "missed": 2, "busy": 2, "voicemail": 3, "answered": 4}


def is_phone_number(value: str | None) -> bool:
    v = (value or "").strip()
    return bool(_PHONE_LIKE.fullmatch(v)) and any(c != "0" for c in re.sub(r"\D", "", v))


def call_identity(inbound: Inbound) -> Identity | None:
    """The identity a call is recorded on when it is not the sender's own
    (internal calls, withheld callers), or None."""
    if inbound.kind != "call" or inbound.call is None:
        return None
    if inbound.call.direction == "internal":
        return Identity("external", f"internal-calls:{inbound.account}")
    if inbound.sender.kind == "phone" and not is_phone_number(inbound.sender.value):
        return Identity("external", f"anonymous-call:{inbound.account}:{inbound.external_id}")
    return None


def is_internal(inbound: Inbound) -> bool:
    return inbound.kind == "call" and inbound.call is not None and inbound.call.direction == "internal"


def _t(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    return None


def merge_call(old: dict | None, new: dict) -> dict:
    """Two reports of one call (``data.call`` dicts, as stored) → one.

    Earliest start and answer, latest end, longest duration, the stronger
    disposition (ties: the later report; a report of the dialed leg,
    ``dialed``, over one of the parent leg), the first known numbers and
    direction, the latest recording URL."""
    if not old:
        return dict(new)
    out = dict(old)
    for key in ("direction", "from", "to"):
        if not out.get(key) and new.get(key):
            out[key] = new[key]
    for key, pick in (("started_at", min), ("answered_at", min), ("ended_at", max)):
        values = [(t, v) for v in (old.get(key), new.get(key)) if (t := _t(v)) is not None]
        if values:
            out[key] = pick(values, key=lambda tv: tv[0])[1]
    durations = [d for d in (old.get("duration_s"), new.get("duration_s")) if isinstance(d, int)]
    if durations:
        out["duration_s"] = max(durations)
    # a report of the dialed leg outranks the parent's own status (Twilio
    # answers a call to run its TwiML: "completed" there is no agent's answer)
    old_dialed, new_dialed = bool(old.get("dialed")), bool(new.get("dialed"))
    if new.get("disposition") and (new_dialed > old_dialed or (
            new_dialed == old_dialed
            and _DISPOSITION_RANK.get(new.get("disposition"), 0) >= _DISPOSITION_RANK.get(old.get("disposition"), 0))):
        out["disposition"] = new["disposition"]
    if new_dialed and new.get("disposition"):
        out["dialed"] = True
    if new.get("recording_url"):
        out["recording_url"] = new["recording_url"]
    return out


def call_text(call: dict) -> str:
    """The timeline line of a call: ``Inbound call from +86…, missed, 0 s``."""
    direction = call.get("direction") or "inbound"
    who = call.get("to") if direction == "outbound" else call.get("from")
    parts = [f"{direction.capitalize()} call {'to' if direction == 'outbound' else 'from'} {who or 'an unknown number'}"]
    if call.get("disposition"):
        parts.append(call["disposition"])
    if call.get("duration_s") is not None:
        parts.append(f"{call['duration_s']} s")
    return ", ".join(parts)
