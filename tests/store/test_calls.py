"""Calls through the pure pipeline and a real store: one call of many
reports, anonymous and internal callers, threading of missed calls, the call
matchers deciding priority and ignore."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from gateway.store.base import Conflict
from routing.calls import merge_call
from routing.model import CallInfo, Inbound, Sender
from routing.pipeline import Settings, decide, lookup
from routing.rules import evaluate
from tests.rules.helpers import with_rules

T0 = datetime(2026, 11, 30, 2, 0, tzinfo=timezone.utc)


def call(ext: str, number: str = "+8613800138000", disposition: str | None = "missed", *, direction="inbound",
         duration: int | None = 0, start: datetime = T0, end: datetime | None = None, account="asterisk:pbx1") -> Inbound:
    info = CallInfo(direction=direction, from_=number, to="4008001234", started_at=start, ended_at=end or start,
                    duration_s=duration, disposition=disposition)
    return Inbound(channel="phone", account=account, external_id=ext, kind="call", sender=Sender("phone", number),
                   text=f"call {ext}", call=info)


_keys = iter(range(1_000_000))


async def run(store, msg: Inbound, settings: Settings | None = None):
    settings = settings or Settings()
    jid = (await store.journal_append("phone", msg.account, f"row-{next(_keys)}", b"{}")).journal_id
    look = lookup(msg, settings)
    snap = await store.snapshot(look, T0 + timedelta(minutes=5))
    return jid, await store.commit(decide(msg, jid, snap, settings, look))


async def calls_of(store, contact_id: str) -> list:
    page = await store.timeline(contact_id=contact_id)
    return [e for e in page.items if e.kind == "call"]


async def test_a_later_report_updates_the_call_and_a_replay_changes_nothing(store):
    _, first = await run(store, call("u1", disposition="missed", duration=0))
    jid, second = await run(store, call("u1", disposition="answered", duration=42, end=T0 + timedelta(seconds=42)))
    assert (second.contact_id, second.ticket_id) == (first.contact_id, first.ticket_id)
    (entry,) = await calls_of(store, first.contact_id)
    c = entry.data["call"]
    assert (c["disposition"], c["duration_s"], c["ended_at"]) == ("answered", 42, "2026-11-30T02:00:42Z")
    assert entry.text == "Inbound call from +8613800138000, answered, 42 s"
    assert [r["journal_id"] for r in entry.data["call_reports"]] == [jid]
    # the update's journal entry replayed (a crash before it was marked): nothing changes
    msg = call("u1", disposition="answered", duration=42, end=T0 + timedelta(seconds=42))
    look = lookup(msg, Settings())
    await store.commit(decide(msg, jid, await store.snapshot(look, T0), Settings(), look))
    (entry,) = await calls_of(store, first.contact_id)
    assert len(entry.data["call_reports"]) == 1
    assert len((await store.get_contact(first.contact_id)).identities) == 1


async def test_two_first_reports_racing_make_one_call(store):
    settings = Settings()
    a, b = call("race", disposition="missed"), call("race", disposition="answered", duration=9)
    ja = (await store.journal_append("phone", a.account, "ra", b"{}")).journal_id
    jb = (await store.journal_append("phone", b.account, "rb", b"{}")).journal_id
    snap_a = await store.snapshot(lookup(a, settings), T0)
    snap_b = await store.snapshot(lookup(b, settings), T0)
    result = await store.commit(decide(a, ja, snap_a, settings))
    with pytest.raises(Conflict):  # decided on a snapshot without the call: decide again
        await store.commit(decide(b, jb, snap_b, settings))
    await store.commit(decide(b, jb, await store.snapshot(lookup(b, settings), T0), settings))
    (entry,) = await calls_of(store, result.contact_id)
    assert entry.data["call"]["disposition"] == "answered"


async def test_withheld_callers_get_one_anonymous_contact_per_call(store):
    results = [await run(store, call(f"a{n}", number=number)) for n, number in enumerate(["", "anonymous", "test"])]
    contacts = {r.contact_id for _, r in results}
    assert len(contacts) == 3
    for (_, r), n in zip(results, range(3)):
        contact = await store.get_contact(r.contact_id)
        assert [(i.kind, i.value) for i in contact.identities] == [("external", f"anonymous-call:asterisk:pbx1:a{n}")]
        assert r.ticket_id is not None  # a missed call from an unknown number opens a ticket


async def test_internal_calls_are_recorded_without_a_ticket_on_no_customer(store):
    _, r1 = await run(store, call("i1", number="1001", direction="internal", disposition="answered"))
    _, r2 = await run(store, call("i2", number="1002", direction="internal", disposition="answered"))
    assert r1.ticket_id is None and r1.contact_id == r2.contact_id
    contact = await store.get_contact(r1.contact_id)
    assert [(i.kind, i.value) for i in contact.identities] == [("external", "internal-calls:asterisk:pbx1")]
    entries = await calls_of(store, r1.contact_id)
    assert [e.data["why_no_ticket"] for e in entries] == ["internal call", "internal call"]


async def test_a_missed_call_from_a_known_customer_threads_onto_their_open_ticket(store):
    msg = Inbound(channel="api", account="api", external_id="m1", kind="message",
                  sender=Sender("phone", "138 0013 8000"), text="where is my order?")
    jid = (await store.journal_append("api", "api", "m1", b"{}")).journal_id
    look = lookup(msg, Settings())
    first = await store.commit(decide(msg, jid, await store.snapshot(look, T0), Settings(), look))
    _, missed = await run(store, call("k1"))
    assert (missed.contact_id, missed.ticket_id) == (first.contact_id, first.ticket_id)


class Tree:
    def __init__(self, rules: str):
        self.tree = with_rules(rules)

    def evaluate(self, ri):
        return evaluate(self.tree, ri, None)


RULES = """
- id: missed-calls
  title: missed calls first
  owner: ops
  matchers: ['call.direction = inbound', 'call.disposition = missed']
  priority: high
- id: short-calls
  title: misdials
  owner: ops
  matchers: ['call.disposition = answered', 'call.duration < 5']
  ignore: true
"""


async def test_call_matchers_raise_a_missed_call_and_ignore_a_short_one(store):
    settings = Settings(rules=Tree(RULES))
    _, missed = await run(store, call("r1", number="+8613911112222"), settings)
    ticket = await store.get_ticket(missed.ticket_id)
    assert ticket.priority == "high"
    _, short = await run(store, call("r2", number="+8613933334444", disposition="answered", duration=2), settings)
    assert short.ticket_id is None
    (entry,) = await calls_of(store, short.contact_id)
    assert entry.data["why_no_ticket"].startswith("marked ignore by rule short-calls")


def test_merge_call_keeps_the_stronger_disposition_and_the_widest_times():
    old = {"from": "+861", "disposition": "answered", "started_at": "2026-11-30T02:00:00Z",
           "ended_at": "2026-11-30T02:01:00Z", "duration_s": 60}
    new = {"disposition": "missed", "started_at": "2026-11-30T10:00:05+08:00", "ended_at": "2026-11-30T10:02:00+08:00",
           "duration_s": 30, "recording_url": "https://r/1.wav"}
    m = merge_call(old, new)
    assert m["disposition"] == "answered" and m["from"] == "+861" and m["duration_s"] == 60
    assert m["started_at"] == "2026-11-30T02:00:00Z" and m["ended_at"] == "2026-11-30T10:02:00+08:00"
    assert m["recording_url"] == "https://r/1.wav"
    assert merge_call({"disposition": None}, {"disposition": "busy"})["disposition"] == "busy"
    assert merge_call({"disposition": "missed"}, {"disposition": "busy"})["disposition"] == "busy"  # later, same rank


def test_merge_call_lets_the_dialed_leg_decide_the_disposition():
    # Twilio: the <Dial action> says the agent did not answer; the parent's own
    # status callback ("completed": Twilio answered to run the TwiML) comes after
    dial = {"disposition": "missed", "dialed": True}
    parent = {"disposition": "answered", "duration_s": 35, "ended_at": "2026-11-30T02:05:40Z"}
    m = merge_call(merge_call(None, dial), parent)
    assert (m["disposition"], m["duration_s"], m["dialed"]) == ("missed", 35, True)
    assert merge_call(parent, dial)["disposition"] == "missed"  # the other order
    # a second <Dial> that reached someone: the stronger of the dialed legs
    assert merge_call(m, {"disposition": "answered", "dialed": True, "duration_s": 60})["disposition"] == "answered"
