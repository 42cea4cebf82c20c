"""The pure pipeline stages, on hand-built snapshots (no store, no I/O)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from routing.dedupe import normalized_text, text_hash
from routing.identity import normalize
from routing.model import Inbound, Sender, ThreadHints
from routing.pipeline import Settings, decide, lookup
from routing.state import ContactState, Hit, Snapshot, TicketState

NOW = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)


def msg(**kw) -> Inbound:
    base = dict(channel="email", account="support", external_id="m1", kind="message",
                sender=Sender("email", "li@example.cn", "李雷"), subject="订单问题", text="我的订单还没到")
    base.update(kw)
    return Inbound(**base)


def ticket(tid="T1", number=1001, contact="C1", status="open", last=NOW - timedelta(hours=1), solved=None,
           channels=("email",)) -> TicketState:
    return TicketState(id=tid, number=number, contact_id=contact, status=status, version=3,
                       created_at=last - DAY, last_message_at=last, channels=channels, solved_at=solved)


def snap(owners=None, tickets=(), **kw) -> Snapshot:
    owners = owners or {}
    contacts = {c: ContactState(id=c, version=7) for c in set(owners.values())}
    return Snapshot(now=NOW, owners=owners, contacts=contacts, tickets=list(tickets), **kw)


KNOWN = {"email:li@example.cn": "C1"}


def test_normalization_of_identities():
    assert normalize("email", " <Li@Example.CN> ") == "li@example.cn"
    assert normalize("phone", "138 0013 8000") == "+8613800138000"
    assert normalize("phone", "+1 (415) 555-2671") == "+14155552671"
    assert normalize("phone", "1001") == "1001"  # a PBX extension stays digits
    with pytest.raises(ValueError):
        normalize("email", "not-an-address")


def test_near_duplicate_key_ignores_width_case_and_punctuation():
    assert normalized_text("ＡＰＰ  Crashes!!") == normalized_text("app crashes")
    assert text_hash("The app crashes") == text_hash("the APP crashes.")
    assert text_hash("ok") is None and text_hash("") is None


def test_new_sender_gets_a_new_contact_and_ticket():
    c = decide(msg(), "J1", snap(), Settings())
    assert c.new_contact is not None and c.contact_id == c.new_contact.id
    assert [l.identity.key() for l in c.link_identities] == ["email:li@example.cn"]
    assert c.new_ticket is not None and c.new_ticket.subject == "订单问题"
    assert c.ticket_id == c.new_ticket.id and c.timeline[0].kind == "message_in"
    assert c.timeline[0].data["reasons"]["threading"] == {"stage": "threading", "by": "new_ticket"}
    assert {e.topic for e in c.outbox} == {"ticket.created", "message.created"}


def test_exact_redelivery_is_dropped_and_replay_is_a_no_op():
    hit = Hit(journal_id="J0", timeline_id="E0", ticket_id="T0", contact_id="C0")
    c = decide(msg(), "J1", snap(exact=hit), Settings())
    assert (c.outcome, c.counted, c.timeline, c.new_ticket) == ("duplicate", "deduped", [], None)
    same = decide(msg(), "J0", snap(exact=hit), Settings())
    assert (same.outcome, same.counted, same.message_key) == ("processed", None, None)


def test_unionid_links_a_new_openid_to_the_known_contact():
    m = msg(channel="wechat", account="wxB", sender=Sender("wechat_openid", "wxB:oB1"), meta={"unionid": "U9"})
    c = decide(m, "J1", snap(owners={"wechat_unionid:U9": "C1"}), Settings())
    assert c.contact_id == "C1" and c.new_contact is None and c.contact_expect_version == 7
    assert [l.identity.key() for l in c.link_identities] == ["wechat_openid:wxB:oB1"]
    [linked] = [e for e in c.timeline if e.kind == "identity"]
    assert linked.data["match"] == "linked" and "wechat_unionid" in linked.text


def test_two_contacts_sharing_a_linking_identity_are_suggested_not_merged():
    m = msg(meta={"phone": "13800138000"})
    c = decide(m, "J1", snap(owners={**KNOWN, "phone:+8613800138000": "C2"}), Settings())
    assert c.contact_id == "C1"
    assert any(e.data.get("suggest_merge") == "C2" for e in c.timeline)


def test_near_duplicate_is_linked_to_the_first_not_a_new_ticket():
    near = Hit(journal_id="J0", timeline_id="E0", ticket_id="T1", contact_id="C1")
    c = decide(msg(channel="wechat"), "J1", snap(owners=KNOWN, near_duplicate=near), Settings())
    assert c.new_ticket is None and c.ticket_change is None and c.counted == "near_duplicate"
    [e] = c.timeline
    assert (e.kind, e.linked_to, e.ticket_id) == ("duplicate", "E0", "T1")


@pytest.mark.parametrize("subject", ["Re: 订单 [#1001]", "工单号 1001 的进展", "工单号：1001"])
def test_explicit_ticket_ref_threads_first(subject):
    other = ticket("T2", 1002, last=NOW - timedelta(minutes=5))
    s = snap(owners=KNOWN, tickets=[other], numbered={1001: ticket()})
    c = decide(msg(subject=subject), "J1", s, Settings())
    assert c.ticket_change.id == "T1"
    assert c.timeline[0].data["reasons"]["threading"]["by"] == "ticket_ref"


@pytest.mark.parametrize("ref", ["\u00b2", "#" + "9" * 30, "9" * 19])
def test_an_explicit_ticket_ref_that_is_no_ticket_number_is_no_reference(ref):
    # the API channel's ticket_ref: "²" (a digit to isdigit(), not to int()) failed the message with a
    # ValueError, thirty nines with SQLite's OverflowError in the lookup
    i = msg(thread=ThreadHints(ticket_ref=ref))
    assert lookup(i, Settings()).numbers == ()
    c = decide(i, "J1", snap(owners=KNOWN), Settings())
    assert c.new_ticket is not None


@pytest.mark.parametrize("watermark", ["\u00b2", "9" * 16, "9" * 25])
def test_a_read_watermark_no_datetime_holds_is_a_status_without_one_not_a_failure(watermark):
    # a signed Messenger read/delivery: '²' was a ValueError, a year past 9999 an OverflowError — the
    # pipeline failed the entry with a traceback
    i = msg(channel="messenger", kind="event", raw_type="status", sender=Sender("messenger", "1:2"),
            meta={"status_of": "", "status": "read", "watermark": watermark})
    c = decide(i, "J1", snap(owners=KNOWN), Settings())
    assert c.delivery is not None and c.delivery.watermark is None and c.delivery.status == "read"


def test_ticket_ref_of_another_contact_is_ignored_with_reason():
    s = snap(owners=KNOWN, numbered={1001: ticket(contact="C9")})
    c = decide(msg(subject="[#1001]"), "J1", s, Settings())
    assert c.new_ticket is not None
    assert c.timeline[0].data["reasons"]["threading"]["ignored"] == [
        {"ref": 1001, "why": "ticket belongs to another contact"}]


def test_email_headers_thread_before_the_open_ticket_window():
    s = snap(owners=KNOWN, tickets=[ticket("T2", 1002)], ref_tickets={"orig@mail": ticket()})
    c = decide(msg(thread=ThreadHints(in_reply_to="orig@mail")), "J1", s, Settings())
    assert c.ticket_change.id == "T1"
    assert c.timeline[0].data["reasons"]["threading"]["by"] == "in_reply_to"


def test_open_ticket_within_window_takes_the_message():
    c = decide(msg(), "J1", snap(owners=KNOWN, tickets=[ticket()]), Settings())
    assert c.ticket_change.id == "T1" and c.ticket_change.expect_version == 3 and c.ticket_change.status is None


def test_open_ticket_outside_the_window_gives_a_new_ticket():
    settings = Settings(reopen_window_s=lambda ch: 3600.0)
    c = decide(msg(), "J1", snap(owners=KNOWN, tickets=[ticket(last=NOW - DAY)]), settings)
    assert c.new_ticket is not None and c.new_ticket.follow_up_of is None
    assert "no activity" in c.timeline[0].data["reasons"]["threading"]["why"]


def test_solved_ticket_inside_the_window_is_reopened():
    t = ticket(status="solved", solved=NOW - DAY)
    c = decide(msg(), "J1", snap(owners=KNOWN, tickets=[t]), Settings())
    assert c.ticket_change.status == "open"
    assert [e.kind for e in c.timeline] == ["message_in", "status"]
    assert any(e.topic == "ticket.reopened" for e in c.outbox)


@pytest.mark.parametrize("status,age", [("solved", 30), ("closed", 1)])
def test_after_the_window_or_when_closed_a_follow_up_is_opened(status, age):
    t = ticket(status=status, solved=NOW - age * DAY, last=NOW - age * DAY)
    c = decide(msg(), "J1", snap(owners=KNOWN, tickets=[t]), Settings())
    assert c.new_ticket is not None and c.new_ticket.follow_up_of == "T1"


def test_events_join_the_timeline_without_a_ticket_and_flag_blocking():
    m = msg(channel="telegram", kind="event", raw_type="my_chat_member", sender=Sender("telegram", "42"),
            meta={"blocked": "true"}, text="")
    c = decide(m, "J1", snap(owners={"telegram:42": "C1"}), Settings())
    assert c.new_ticket is None and c.ticket_id is None
    assert [e.kind for e in c.timeline] == ["event"] and c.add_flags == ("blocked:telegram",)


def test_an_edit_updates_the_earlier_entry():
    m = msg(channel="telegram", external_id="1:5:edit:9", edits="1:5", text="fixed typo")
    hit = Hit(journal_id="J0", timeline_id="E5", ticket_id="T1", contact_id="C1")
    c = decide(m, "J1", snap(owners=KNOWN, edited=hit), Settings())
    assert c.edit.timeline_id == "E5" and c.edit.text == "fixed typo" and c.timeline == []


def test_bounce_threads_onto_the_bounced_messages_ticket_or_stays_ticketless():
    bounce = msg(sender=Sender("email", "mailer-daemon@mx.example.cn"), auto="bounce",
                 meta={"dsn_original_message_id": "<out-1@omnigate>"})
    s = snap(ref_tickets={"out-1@omnigate": ticket(contact="C5")})
    c = decide(bounce, "J1", s, Settings())
    assert c.ticket_change is not None and c.ticket_change.id == "T1"
    lost = decide(bounce, "J2", snap(), Settings())
    assert lost.ticket_id is None and lost.timeline[0].data["why_no_ticket"] == "bounce of an unknown message"


def test_group_chat_replies_go_to_the_chat():
    m = msg(channel="telegram", sender=Sender("telegram", "42"), meta={"chat_id": "-1001"})
    c = decide(m, "J1", snap(), Settings())
    assert c.new_ticket.reply_to.to.value == "-1001"


def test_lookup_collects_what_the_store_must_read():
    m = msg(subject="Re: [#77]", thread=ThreadHints(in_reply_to="a@x", references=["r1@x", "a@x"]))
    look = lookup(m, Settings())
    assert look.numbers == (77,) and look.refs == ("a@x", "r1@x")
    assert look.message_key == ("email", "support", "m1") and look.text_hash


def test_a_session_that_ended_solves_the_open_ticket_of_that_channel():
    end = msg(channel="wecom", kind="event", raw_type="session_status_change", text="",
              meta={"ticket_status": "solved"})
    wecom, email = ticket("T1", channels=("wecom",)), ticket("T2", 1002, channels=("email",),
                                                             last=NOW - timedelta(minutes=1))
    c = decide(end, "J1", snap(owners=KNOWN, tickets=[email, wecom]), Settings())
    assert c.status_change == ("T1", "solved", "wecom session session_status_change: solved")
    assert c.new_ticket is None and c.timeline[0].ticket_id == "T1"
    start = msg(channel="wecom", kind="event", raw_type="enter_session", text="", meta={"ticket_status": "open"})
    assert decide(start, "J2", snap(owners=KNOWN, tickets=[wecom]), Settings()).status_change is None


def test_an_agents_message_from_the_platform_client_is_a_reply_on_the_customers_ticket():
    m = msg(channel="wecom", sender=Sender("wecom_external", "wmC1"), text="您好，请提供订单号",
            meta={"direction": "outbound", "agent": "corp:zhangsan"})
    new = ticket(status="new", channels=("wecom",))
    c = decide(m, "J1", snap(owners={"wecom_external:wmC1": "C1"}, tickets=[new]), Settings())
    [entry] = [e for e in c.timeline if e.kind == "message_out"]
    assert entry.ticket_id == "T1" and entry.data["author"] == "corp:zhangsan" and entry.data["public"] is True
    assert c.ticket_change.status == "open" and c.ticket_change.responded_at is not None
    assert lookup(m, Settings()).text_hash is None  # never a near-duplicate of the customer's words


# ---------------------------------------------------------------- determinism (issue 10, item 1)


def _counting_ids():
    """A deterministic id source: ``<ms of snapshot.now>-<n>``."""
    import itertools

    counter = itertools.count(1)
    return lambda now_ms: f"{now_ms}-{next(counter)}"


def _shipped_rules():
    from pathlib import Path

    from routing.rules import check, evaluate

    tree, errors = check(Path(__file__).resolve().parents[2] / "rules")
    assert tree is not None, errors

    class Tree:  # what Settings.rules takes: the gateway's RulesRuntime has the same method
        def evaluate(self, rule_input):
            return evaluate(tree, rule_input, {})

    return Tree()


def test_decide_is_deterministic_and_reads_no_clock(monkeypatch):
    """Same Inbound, snapshot and settings → an equal Commit; ids and times
    come from the snapshot and the injected id source, never from the clock."""
    import time

    rules = _shipped_rules()

    def decision(at: datetime):
        settings = Settings(rules=rules, new_id=_counting_ids())
        return decide(msg(text="我要申请退款"), "J1", Snapshot(now=at), settings)

    def no_clock():
        raise AssertionError("routing read the clock")

    with monkeypatch.context() as m:
        m.setattr(time, "time", no_clock)
        m.setattr(time, "time_ns", no_clock)
        morning = NOW - timedelta(hours=7)  # Monday 11:00 in Shanghai
        first, second = decision(morning), decision(morning)
        evening = decision(NOW + timedelta(hours=4))  # 22:00 in Shanghai
    assert first == second
    ids = [first.new_ticket.id, first.new_contact.id, *(e.id for e in first.timeline)]
    assert all(i.startswith(f"{int(morning.timestamp() * 1000)}-") for i in ids) and len(set(ids)) == len(ids)
    assert {e.at for e in first.timeline} == {morning}
    assert "after-hours" not in first.new_ticket.tags and "after-hours" in evening.new_ticket.tags


# ------------------------------------------------- header threading cannot be hijacked (issue 10, item 2)


def test_a_stranger_quoting_another_customers_message_id_opens_a_ticket_that_mentions_it():
    stranger = {"email:mallory@evil.example": "C9"}
    s = snap(owners=stranger, ref_tickets={"orig@mail": ticket(number=1012, contact="C1")})
    c = decide(msg(sender=Sender("email", "mallory@evil.example"), thread=ThreadHints(in_reply_to="orig@mail")),
               "J1", s, Settings())
    assert c.ticket_change is None and c.new_ticket is not None  # T1 is untouched: no append, no reply_to
    assert c.new_ticket.reply_to.to.value == "mallory@evil.example"
    reason = c.timeline[0].data["reasons"]["threading"]
    assert reason["mentions"] == "T1" and "#1012" in reason["why"]
    assert reason["ignored"][0]["by"] == "in_reply_to"
    [mine, theirs] = [e for e in c.timeline if e.kind == "event"]
    assert mine.ticket_id == c.new_ticket.id and mine.data["mentions"] == {"ticket_id": "T1", "number": 1012}
    assert "mentions ticket #1012" in mine.text
    assert theirs.ticket_id == "T1" and theirs.contact_id == "C1"
    assert theirs.data["mentioned_by"]["ticket_id"] == c.new_ticket.id


def test_a_known_participant_joins_by_headers_without_taking_the_reply_address():
    cc = {"email:boss@example.cn": "C2"}
    s = snap(owners=cc, ref_tickets={"orig@mail": ticket(contact="C1")}, participating=frozenset({"T1"}))
    c = decide(msg(sender=Sender("email", "boss@example.cn"), thread=ThreadHints(references=["orig@mail"])),
               "J1", s, Settings())
    assert c.ticket_change is not None and c.ticket_change.id == "T1"
    assert c.ticket_change.reply_to is None  # the replies still go to the ticket's own contact
    assert c.timeline[0].data["reasons"]["threading"]["participant"] is True


def test_the_contacts_own_reply_by_headers_moves_the_reply_address():
    s = snap(owners=KNOWN, ref_tickets={"orig@mail": ticket(contact="C1")})
    c = decide(msg(thread=ThreadHints(in_reply_to="orig@mail", message_id="new@mail")), "J1", s, Settings())
    assert c.ticket_change.reply_to is not None and c.ticket_change.reply_to.thread.message_id == "new@mail"


def test_recipients_of_a_message_become_participants_of_its_ticket():
    m = msg(recipients=["support@corp.example", "Boss@Example.cn", "li@example.cn"],
            meta={"envelope_to": "support@corp.example"})
    c = decide(m, "J1", snap(owners=KNOWN, tickets=[ticket()]), Settings())
    assert [(i.key(), src) for i, src in c.participants] == [("email:boss@example.cn", "recipient")]
    auto = decide(msg(recipients=["x@example.cn"], auto="auto_reply"), "J2", snap(owners=KNOWN), Settings())
    assert auto.participants == []


# ------------------------------------------------- no identity with an empty or invalid value (issue 10, item 4)


@pytest.mark.parametrize("kind,value", [("email", ""), ("email", "not-an-address"), ("phone", "abc"),
                                        ("telegram", "  "), ("wechat_openid", "o\x00x")])
def test_unusable_sender_identities_are_never_stored_and_never_shared(kind, value):
    a = decide(msg(sender=Sender(kind, value), external_id="m1"), "J1", snap(), Settings())
    b = decide(msg(sender=Sender(kind, value), external_id="m2"), "J2", snap(), Settings())
    [la], [lb] = a.link_identities, b.link_identities
    assert la.identity.kind == "external" and la.identity.value and la.identity != lb.identity
    assert a.add_flags == ("sender_unknown",)
    assert "sender_unknown" in a.timeline[0].data["reasons"]["identity"]


def test_normalize_refuses_values_that_identify_nobody():
    for kind, value in (("phone", "abc"), ("email", "a b@c"), ("email", "@x"), ("phone", "")):
        with pytest.raises(ValueError):
            normalize(kind, value)
    assert normalize("phone", "100") == "100"  # a PBX extension stays valid


def test_a_reused_message_id_with_another_body_is_kept_and_flagged_not_dropped():
    first = Hit(journal_id="J0", timeline_id="E0", ticket_id="T1", contact_id="C1",
                journal_key="mid:<same@mail>#aaaaaaaaaaaaaaaa")
    m = msg(external_id="same@mail", meta={"content_sha": "bbbbbbbbbbbbbbbb"})
    c = decide(m, "J1", snap(owners=KNOWN, exact=first), Settings())
    assert c.outcome == "processed" and c.counted is None
    assert c.message_key == ("email", "support", "same@mail#bbbbbbbbbbbbbbbb")
    assert "message-id reused with different content" in c.timeline[0].data["defects"]
    assert c.timeline[0].data["reasons"]["dedupe"]["first_journal_id"] == "J0"
    same = decide(msg(external_id="same@mail", meta={"content_sha": "aaaaaaaaaaaaaaaa"}), "J2",
                  snap(owners=KNOWN, exact=first), Settings())
    assert (same.outcome, same.counted) == ("duplicate", "deduped")  # the same body: a redelivery
