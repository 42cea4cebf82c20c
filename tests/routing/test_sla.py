"""SLA policies, due times with pauses, warning/breach events (pure tests).

The calendar is Monday-Friday 09:00-18:00 in Asia/Shanghai with mainland
China's holidays (chinesecalendar); Monday 2025-11-17 is an ordinary workday.
"""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest

from routing.calendar import BusinessCalendar, CalendarConfig, CalendarError
from routing.model import TimelineEntry
from routing.sla import (
    NotifyWebhook,
    Pause,
    RaisePriority,
    ReassignToLead,
    SlaClock,
    SlaEvent,
    SlaPolicy,
    StatusChange,
    due_at,
    due_events,
    escalation_actions,
    evaluate,
    pause_intervals,
    reply_counts_at,
    response_verdict,
    responses_in,
    select_policy,
    sla_state,
    steady_span,
    warning_and_due_at,
)

SH = ZoneInfo("Asia/Shanghai")
OFFICE = BusinessCalendar.from_config("office", CalendarConfig(hours={"weekdays": "09:00-18:00"}))


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SH)


def policy(**fields) -> SlaPolicy:
    base = {"id": "standard", "calendar": "office", "targets": {"first_response": "2h", "resolution": "8h"}}
    return msgspec.convert(base | fields, SlaPolicy)


POLICIES = [
    policy(id="off", enabled=False, match={"priority": ["urgent"]}, targets={"first_response": 1}),
    policy(id="vip-urgent", match={"priority": ["urgent"], "tier": ["vip"]}, targets={"first_response": "15m"}),
    policy(id="urgent", match={"priority": ["urgent"]}, targets={"first_response": "30m"}),
    policy(id="chat", match={"channel": ["wechat", "webchat"]}, targets={"first_response": "1h"}),
    policy(id="standard"),
]


@pytest.mark.parametrize(
    "priority, tier, channel, chosen, reason",
    [
        ("urgent", "vip", "email", "vip-urgent", "policy vip-urgent: priority urgent, tier vip"),
        ("urgent", None, "email", "urgent", "policy urgent: priority urgent"),
        ("normal", "vip", "wechat", "chat", "policy chat: channel wechat"),
        ("low", None, "email", "standard", "policy standard: matches every ticket"),
    ],
)
def test_select_policy(priority, tier, channel, chosen, reason):
    match = select_policy(POLICIES, priority, tier, channel)
    assert match is not None and (match.policy.id, match.reason) == (chosen, reason)


def test_no_policy_matches():
    assert select_policy(POLICIES[:3], "low", None, "email") is None


def test_pause_intervals_from_status_history():
    history = [
        StatusChange(t("2025-11-17 09:00"), "new"),
        StatusChange(t("2025-11-17 10:00"), "pending"),
        StatusChange(t("2025-11-17 11:00"), "pending"),
        StatusChange(t("2025-11-17 14:00"), "open"),
        StatusChange(t("2025-11-17 16:00"), "pending"),
    ]
    assert pause_intervals(history, frozenset({"pending"})) == [
        Pause(t("2025-11-17 10:00"), t("2025-11-17 14:00")),
        Pause(t("2025-11-17 16:00"), None),
    ]


@pytest.mark.parametrize(
    "since, minutes, pauses, due",
    [
        ("2025-11-17 09:00", 120, [], "2025-11-17 11:00"),
        ("2025-11-17 09:00", 120, [("2025-11-17 10:00", "2025-11-17 14:00")], "2025-11-17 15:00"),
        ("2025-11-17 16:00", 120, [("2025-11-17 17:00", "2025-11-18 10:00")], "2025-11-18 11:00"),
        ("2025-11-17 09:00", 120, [("2025-11-17 12:00", "2025-11-17 14:00")], "2025-11-17 11:00"),
        ("2025-11-17 09:00", 120, [("2025-11-17 08:00", "2025-11-17 09:30")], "2025-11-17 11:30"),
        ("2025-11-17 09:00", 120, [("2025-11-17 10:00", None)], None),
        ("2025-11-17 09:00", 120, [("2025-11-17 12:00", None)], "2025-11-17 11:00"),
        # paused over the 2025 National Day: the pause ends on a closed day, the clock resumes on 10-09
        ("2025-09-30 16:00", 180, [("2025-09-30 17:00", "2025-10-05 12:00")], "2025-10-09 11:00"),
    ],
)
def test_due_at_with_pauses(since, minutes, pauses, due):
    ps = [Pause(t(a), t(b) if b else None) for a, b in pauses]
    assert due_at(OFFICE, t(since), minutes, ps) == (t(due) if due else None)



#: calendars for the one-walk oracle, as configs: each test builds two of
#: each, so that neither computation reads what the other memoized
ORACLE_CALENDARS: dict[str, CalendarConfig] = {
    # mainland China's holidays and make-up workdays (2025 National Day, 2026 Spring Festival)
    "cn-split": CalendarConfig(hours={"weekdays": ["09:00-12:00", "13:30-18:00"]}),
    # open across midnight (22:00-02:00 as two intervals), with custom closed and open dates
    "night": CalendarConfig(hours={"weekdays": ["00:00-02:00", "22:00-24:00"], "sat": "00:00-02:00"},
                            closed={date(2025, 11, 19): "stocktake"}, open={date(2025, 10, 4): "duty"}),
    # DST: spring forward 2025-03-30, fall back 2025-10-26 (and 2026-03-29) in the small hours
    "berlin-dst": CalendarConfig(timezone="Europe/Berlin", hours={"daily": ["01:00-04:00", "09:00-17:00"]},
                                 holidays="none"),
    "new-york": CalendarConfig(timezone="America/New_York", hours={"weekdays": "08:30-17:30"}, holidays="none"),
    "24x7": CalendarConfig(always_open=True),
}


def _oracle_case(rng: random.Random) -> tuple[datetime, float, float, list[Pause]]:
    """A start around the holidays and DST changes, a target, a warning
    fraction and 0-3 pauses (the last maybe still open), in random zones."""
    zone = ZoneInfo(rng.choice(("Asia/Shanghai", "Europe/Berlin", "America/New_York", "UTC")))
    origin = datetime(2025, 3, 20, tzinfo=ZoneInfo("UTC")) + timedelta(days=rng.choice((0, 185, 320, 364)))
    since = origin + timedelta(minutes=rng.randrange(0, 60 * 24 * 20), microseconds=rng.choice((0, 0, 1, 500_000)))
    minutes = rng.choice((1, 15, 30, 60, 120, 240, 480, 1440, 2880, 12.5))
    warn_at = rng.choice((0.8, 0.75, 0.5, 0.9, 0.1, 1 / 3))
    pauses, at = [], since + timedelta(minutes=rng.randrange(-120, 600))
    for i in range(rng.choice((0, 0, 1, 2, 3))):
        length = timedelta(minutes=rng.randrange(1, 60 * 30), seconds=rng.randrange(60))
        still_open = i == 2 or rng.random() < 0.15
        pauses.append(Pause(at.astimezone(zone), None if still_open else (at + length).astimezone(zone)))
        if still_open:
            break
        at += length + timedelta(minutes=rng.randrange(1, 900))
    rng.shuffle(pauses)  # due_at sorts them
    return since.astimezone(zone), minutes * warn_at, minutes, pauses


@pytest.mark.parametrize("name", ORACLE_CALENDARS)
def test_warning_and_due_in_one_walk_are_the_two_walks(name):
    """The oracle: a target's warning and due time from one walk are the
    instants two ``due_at`` walks give, in the same zone, and the same error
    when there is one; over generated starts, targets and pauses."""
    one = BusinessCalendar.from_config(name, ORACLE_CALENDARS[name])
    two = BusinessCalendar.from_config(name, ORACLE_CALENDARS[name])
    rng = random.Random(name)
    split = 0  # cases where the warning falls before a pause and the due time after it
    for _ in range(1500):
        since, warn_minutes, minutes, pauses = _oracle_case(rng)
        try:
            expected: object = (due_at(two, since, warn_minutes, pauses), due_at(two, since, minutes, pauses))
        except CalendarError as e:
            expected = str(e)
        try:
            got: object = warning_and_due_at(one, since, warn_minutes, minutes, pauses)
        except CalendarError as e:
            got = str(e)
        assert got == expected and repr(got) == repr(expected), (since, warn_minutes, minutes, pauses)
        first = min((p.start for p in pauses), default=None)
        split += isinstance(got, tuple) and got[0] is not None and first is not None and got[0] <= first < (
            got[1] or first + timedelta(days=1))
    assert split > 10  # the case where the two clocks part is covered
    # asked again, the memo gives the same answer
    since, warn_minutes, minutes, pauses = _oracle_case(random.Random(0))
    assert warning_and_due_at(one, since, warn_minutes, minutes, pauses) == warning_and_due_at(
        two, since, warn_minutes, minutes, pauses)


def test_warning_and_due_in_one_walk_raise_as_the_walks_do():
    never = BusinessCalendar("never", SH, ((),) * 7, holidays="none")
    with pytest.raises(CalendarError, match="no open hours"):
        warning_and_due_at(never, t("2025-11-17 09:00"), 1, 2, [])
    with pytest.raises(CalendarError, match="must not be negative"):
        OFFICE.add_business_minutes_pair(t("2025-11-17 09:00"), -1, 2)
    # the two minutes in either order
    assert OFFICE.add_business_minutes_pair(t("2025-11-17 09:00"), 120, 60) == (t("2025-11-17 11:00"),
                                                                              t("2025-11-17 10:00"))

def clock(*statuses: tuple[str, str], **fields) -> SlaClock:
    return SlaClock(
        ticket_id="T1",
        policy="standard",
        opened_at=t("2025-11-17 09:00"),
        statuses=[StatusChange(t(at), s) for at, s in (("2025-11-17 09:00", "new"), *statuses)],
        **fields,
    )


def events(c: SlaClock, now: str, p: SlaPolicy | None = None) -> list[tuple[str, str, datetime]]:
    return [(e.kind, e.target, e.at) for e in due_events(c, t(now), p or policy(), OFFICE)]


def test_warning_and_breach_events():
    assert events(clock(), "2025-11-17 09:05") == [
        ("warning", "first_response", t("2025-11-17 10:36")),  # 0.8 × 120 min
        ("breach", "first_response", t("2025-11-17 11:00")),
        ("warning", "resolution", t("2025-11-17 15:24")),  # 0.8 × 480 min
        ("breach", "resolution", t("2025-11-17 17:00")),
    ]


def test_warning_fraction_is_configurable_and_business_timed():
    p = policy(warn_at=0.5, targets={"first_response": "8h"})
    c = clock()
    c.opened_at = t("2025-11-14 17:55")  # a Friday: the clock sleeps over the weekend
    assert events(c, "2025-11-14 18:00", p) == [
        ("warning", "first_response", t("2025-11-17 12:55")),
        ("breach", "first_response", t("2025-11-17 16:55")),
    ]


def test_pending_pauses_the_clock_when_the_policy_says_so():
    paused = clock(("2025-11-17 10:00", "pending"), ("2025-11-17 14:00", "open"))
    assert ("breach", "first_response", t("2025-11-17 15:00")) in events(paused, "2025-11-17 14:00")
    no_pause = policy(pause_on_pending=False)
    assert ("breach", "first_response", t("2025-11-17 11:00")) in events(paused, "2025-11-17 14:00", no_pause)


def test_open_pause_schedules_nothing_and_shows_as_paused():
    paused = clock(("2025-11-17 10:00", "pending"))
    assert events(paused, "2025-11-17 10:30") == []
    state = sla_state(paused, t("2025-11-17 10:30"), policy(), OFFICE)
    assert state.paused_at == t("2025-11-17 10:00")
    assert state.first_response_due is None and state.breached == []
    # resumed: the core re-evaluates and the due time has moved by the pause
    resumed = clock(("2025-11-17 10:00", "pending"), ("2025-11-17 11:00", "open"))
    assert sla_state(resumed, t("2025-11-17 11:00"), policy(), OFFICE).first_response_due == t("2025-11-17 12:00")


def test_events_already_fired_are_not_returned_again():
    c = clock()
    first = due_events(c, t("2025-11-17 09:05"), policy(), OFFICE)[0]
    assert first.key == "warning:first_response:2025-11-17T09:00:00+08:00"
    c.fired.append(first.key)
    assert [(e.kind, e.target) for e in due_events(c, t("2025-11-17 10:40"), policy(), OFFICE)][0] == (
        "breach",
        "first_response",
    )


def test_past_events_are_returned_for_the_scheduler_to_fire_at_once():
    late = events(clock(), "2025-11-17 12:00")
    assert ("breach", "first_response", t("2025-11-17 11:00")) in late


def test_first_response_met_in_time_and_late():
    on_time = clock(first_response_at=t("2025-11-17 10:00"))
    assert [e[1] for e in events(on_time, "2025-11-17 10:00")] == ["resolution", "resolution"]
    assert sla_state(on_time, t("2025-11-17 10:00"), policy(), OFFICE).breached == []
    late = clock(first_response_at=t("2025-11-17 11:30"))
    state = sla_state(late, t("2025-11-17 11:30"), policy(), OFFICE)
    assert state.breached == ["first_response"] and state.first_response_due is None
    assert state.resolution_due == t("2025-11-17 17:00")


def test_next_response_runs_from_the_unanswered_customer_message():
    p = policy(targets={"next_response": "1h"})
    waiting = clock(first_response_at=t("2025-11-17 10:00"), awaiting_since=t("2025-11-17 17:30"))
    assert events(waiting, "2025-11-17 17:30", p) == [
        ("warning", "next_response", t("2025-11-18 09:18")),
        ("breach", "next_response", t("2025-11-18 09:30")),
    ]
    assert events(clock(first_response_at=t("2025-11-17 10:00")), "2025-11-17 17:30", p) == []


def test_resolution_stops_when_solved_and_excludes_solved_time_on_reopen():
    p = policy(targets={"resolution": "4h"})
    solved = clock(("2025-11-17 10:00", "open"), ("2025-11-17 11:00", "solved"))
    assert events(solved, "2025-11-17 11:00", p) == []
    assert [s.met_at for s in evaluate(solved, t("2025-11-17 11:00"), p, OFFICE)] == [t("2025-11-17 11:00")]
    reopened = clock(("2025-11-17 11:00", "solved"), ("2025-11-17 15:00", "open"))
    assert events(reopened, "2025-11-17 15:00", p)[-1] == ("breach", "resolution", t("2025-11-17 17:00"))



@pytest.mark.parametrize("now", ["2025-11-17 09:30", "2025-11-17 10:40", "2025-11-17 11:00", "2025-11-17 12:00",
                                 "2025-11-17 12:20", "2025-11-18 10:00"])
def test_the_answer_holds_over_its_steady_span(now):
    # a pause that began, one still to come (the clock is behind), a met target, unmet ones
    c = clock(("2025-11-17 10:00", "pending"), ("2025-11-17 11:00", "open"), ("2025-11-17 15:00", "pending"),
              first_response_at=t("2025-11-17 11:30"), awaiting_since=t("2025-11-17 11:45"))
    p = policy(targets={"first_response": "1h", "next_response": "30m", "resolution": "4h"})
    statuses = evaluate(c, t(now), p, OFFICE)
    since, until = steady_span(c, statuses, t(now))
    assert since is not None and since <= t(now) and (until is None or t(now) < until)
    tick = timedelta(microseconds=1)
    for at in (since, t(now), until - tick if until else t(now) + timedelta(days=30)):
        assert evaluate(c, at, p, OFFICE) == statuses
        assert sla_state(c, at, p, OFFICE) == sla_state(c, t(now), p, OFFICE)

ESCALATING = policy(
    escalations=[
        {"when": "warning", "actions": [{"action": "webhook", "name": "sla-alerts"}]},
        {
            "when": "breach",
            "targets": ["first_response"],
            "actions": [{"action": "reassign_to_lead"}, {"action": "raise_priority", "to": "urgent"}],
        },
    ]
)


@pytest.mark.parametrize(
    "kind, target, actions",
    [
        ("warning", "first_response", [NotifyWebhook("sla-alerts")]),
        ("warning", "resolution", [NotifyWebhook("sla-alerts")]),
        ("breach", "first_response", [ReassignToLead(), RaisePriority("urgent")]),
        ("breach", "resolution", []),
    ],
)
def test_escalation_actions(kind, target, actions):
    event = SlaEvent(kind, target, t("2025-11-17 11:00"), t("2025-11-17 09:00"))
    assert escalation_actions(ESCALATING, event) == actions


def entry(kind: str, **data) -> TimelineEntry:
    return TimelineEntry(id="E1", contact_id="C1", kind=kind, at=t("2025-11-17 10:00"), data=data)


@pytest.mark.parametrize(
    "e, counts, reason",
    [
        (entry("message_out", author="a-lilei"), True, "public reply by agent a-lilei"),
        (entry("note", author="a-lilei"), False, "internal note"),
        (entry("message_out", author=None, auto=True), False, "auto-reply"),
        (entry("message_out", author="a-lilei", auto=True), False, "auto-reply"),
        (entry("message_out"), False, "sent by the system, not an agent"),
        (entry("message_out", author="a-lilei", public=False), False, "not public"),
        (entry("message_in"), False, "not an outgoing message (message_in)"),
        (entry("status", author="a-lilei"), False, "not an outgoing message (status)"),
    ],
)
def test_what_counts_as_a_response(e, counts, reason):
    assert tuple(response_verdict(e)) == (counts, reason)


@pytest.mark.parametrize("data, expected", [
    ({"author": "a-lilei"}, "written"),  # no delivery recorded: counts when written
    ({"author": "a-lilei", "delivery": {"status": "sent", "at": "2026-03-03T10:05:00+08:00"}}, "delivered"),
    ({"author": "a-lilei", "delivery": {"status": "sent"}}, "written"),
    ({"author": "a-lilei", "delivery": {"status": "retrying", "at": "2026-03-03T10:05:00+08:00"}}, None),
    ({"author": "a-lilei", "delivery": {"status": "failed"}}, None),
    ({"author": "a-lilei", "auto": True, "delivery": {"status": "sent"}}, None),
    ({"delivery": {"status": "sent"}}, None),  # the system's
])
def test_when_a_reply_counts(data, expected):
    written = datetime(2026, 3, 3, 10, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    at = reply_counts_at(written, data)
    assert at == {"written": written, "delivered": written + timedelta(minutes=5), None: None}[expected]


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"warn_at": 1.5}, "warn_at must be between 0 and 1"),
        ({"targets": {}}, "has no target"),
        ({"targets": {"first_response": "soon"}}, "bad duration 'soon'"),
        ({"match": {"priority": ["asap"]}}, "Invalid enum value 'asap'"),
        ({"escalations": [{"when": "breach", "actions": [{"action": "email"}]}]}, "Invalid value 'email'"),
        ({"calender": "office"}, "unknown field `calender`"),
    ],
)
def test_policy_validation(fields, error):
    with pytest.raises(msgspec.ValidationError, match=error):
        policy(**fields)


def test_responses_in_a_ticket():
    """First response and the first message unanswered since the last one;
    taken by time, whatever the order given; nothing unanswered before the
    first response (only the first-response clock runs then)."""
    t = [datetime(2026, 3, 3, 10, m, tzinfo=ZoneInfo("Asia/Shanghai")) for m in range(6)]
    assert responses_in(None, [(t[0], False)]) == (None, None)
    assert responses_in(None, [(t[2], True), (t[0], False), (t[3], False), (t[4], False)]) == (t[2], t[3])
    assert responses_in(None, [(t[0], False), (t[2], True), (t[5], True)]) == (t[2], None)
    assert responses_in(t[1], [(t[0], False)]) == (t[1], None)  # asked before the known first response
    assert responses_in(t[1], [(t[3], False)]) == (t[1], t[3])
