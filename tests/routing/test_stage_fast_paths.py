"""Shortcuts of the pipeline's stages give what the plain definitions give
(oracle tests on generated input, pure)."""

from __future__ import annotations

import random
from datetime import datetime, timezone

from routing.model import Inbound, Sender, ThreadHints
from routing.pipeline import Settings, _ticket_changes
from routing.state import TicketState
from routing.threads import ticket_numbers


def _plain_ticket_changes(ticket, f: dict) -> dict:
    """What the rules change on an existing ticket, as first defined (no shortcuts)."""
    changes: dict = {}
    for key in ("priority", "team", "assignee"):
        if f.get(key) is not None and f[key] != getattr(ticket, key, None):
            changes[key] = {"from": getattr(ticket, key, None), "to": f[key]}
    added = sorted(set(f.get("tags", ())) - set(getattr(ticket, "tags", ()) or ()))
    if added:
        changes["tags"] = {"added": added}
    return changes


def test_ticket_changes_and_ticket_numbers_equal_their_plain_definitions():
    """Two shortcuts of the stages: a follow-up whose rules set nothing (or no
    tags) skips the comparisons; a ref pattern that does not match is not iterated."""
    rng = random.Random(5)
    at = datetime(2026, 1, 2, tzinfo=timezone.utc)
    for _ in range(3000):
        t = TicketState(id="T", number=1, contact_id="C", status="open", version=1, created_at=at, last_message_at=at,
                        priority=rng.choice(["normal", "high"]), team=rng.choice([None, "a"]),
                        assignee=rng.choice([None, "x"]))
        f = {k: rng.choice(v) for k, v in (("priority", ["high", "urgent", None]), ("team", ["a", "b", None]),
                                            ("assignee", ["x", None]), ("tags", [[], ["vip"], ["b", "a", "b"]]))
             if rng.random() < 0.4}
        assert _ticket_changes(t, f) == _plain_ticket_changes(t, f), f
    patterns = Settings().ref_patterns
    for _ in range(3000):
        words = ["工单号 12", "[#7]", "工单：3", "订单 5", "hello", "[#x]", "工单#12", " "]
        subject, text_ = ("".join(rng.choice(words) for _ in range(rng.randint(0, 4))) for _ in range(2))
        i = Inbound(channel="api", account="a", external_id="e", kind="message", sender=Sender("email", "a@b.cn"),
                    subject=subject or None, text=text_, thread=ThreadHints(ticket_ref=rng.choice([None, "#12", "9"])))
        plain = [int(i.thread.ticket_ref.lstrip("#"))] if i.thread.ticket_ref else []
        for s in (i.subject, i.text):
            for pat in patterns:
                for m in pat.finditer(s or ""):
                    if int(m.group(1)) not in plain:
                        plain.append(int(m.group(1)))
        assert ticket_numbers(i, patterns) == plain, (subject, text_)


def test_normalized_identities_kept_are_what_normalizing_gives():
    """routing.identity keeps its last results: a kept value (read twice) is
    what normalizing gives, a refusal is refused every time, and the memo
    stays bounded."""
    import pytest

    from routing import identity

    rng = random.Random(9)
    parts = ["A", "b", "@", "example.cn", " ", "<", ">", "+86", "138", "0013", "8000", "00", "-", "\x01", "x" * 330]
    kinds = ["email", "phone", "whatsapp", "wechat_openid"]
    for _ in range(3 * identity.MEMO_ENTRIES):
        kind, value = rng.choice(kinds), "".join(rng.choice(parts) for _ in range(rng.randint(0, 5)))
        region = rng.choice(["CN", "US"])
        try:
            expected = identity._normalize(kind, value, region)
        except ValueError:
            for _ in range(2):
                with pytest.raises(ValueError):
                    identity.normalize(kind, value, region)
            continue
        assert identity.normalize(kind, value, region) == expected == identity.normalize(kind, value, region)
        assert len(identity._memo) <= identity.MEMO_ENTRIES
    assert all(len(value) <= identity.MAX_IDENTITY_CHARS for _, value, _ in identity._memo)
