"""Every matcher field and operator, keywords and time (pure tests)."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.rules.helpers import route, with_rules

LISTS = """
lists:
  vip_senders: [boss@big.example, "+8613800138000"]
  refund_words: [退款, refund*, money back]
  gold_tiers: [gold, vip]
intervals:
  office:
    timezone: Asia/Shanghai
    times:
      - {weekdays: [mon-fri], hours: ["09:00-12:00", "13:00-18:00"]}
  night_shift:
    timezone: Europe/London
    times:
      - {weekdays: [mon-sun], hours: ["22:00-06:00"]}
"""


def one_rule(matchers: list[str]):
    quoted = ", ".join("'" + m.replace("'", "''") + "'" for m in matchers)
    return with_rules(f"- {{id: hit, title: t, owner: o, matchers: [{quoted}]}}\n", LISTS)


def matches(matchers: list[str], calendars=None, **fields) -> bool:
    return route(one_rule(matchers), calendars, **fields).rule == "hit"


@pytest.mark.parametrize(
    "matcher, fields, expected",
    [
        ("channel = email", {"channel": "email"}, True),
        ("channel = email", {"channel": "webchat"}, False),
        ("channel != email", {"channel": "webchat"}, True),
        ("channel in [whatsapp, line]", {"channel": "line"}, True),
        ("channel not in [whatsapp, line]", {"channel": "line"}, False),
        ("channel =~ ^we", {"channel": "webchat"}, True),
        ("channel !~ ^we", {"channel": "webchat"}, False),
        ("account = sales@shop.cn", {"account": "SALES@shop.cn"}, True),
        ("sender = boss@big.example", {"from": "boss@big.example"}, True),
        ("sender in vip_senders", {"from": "+8613800138000", "channel": "phone"}, True),
        ("sender not in vip_senders", {"from": "nobody@x.cn"}, True),
        ("sender.kind = phone", {"from": "+8613900000000", "channel": "phone"}, True),
        ("sender.kind = wechat_openid", {"from": "o6_bmjrPTlm6_2sgVt7hMZOPfL2M", "channel": "wechat"}, True),
        ("kind = call", {"kind": "call", "channel": "phone"}, True),
        ("kind != message", {"kind": "message"}, False),
        ("tier = vip", {"tier": "VIP"}, True),
        ("tier = vip", {}, False),
        ("tier != vip", {}, True),
        ("tier in gold_tiers", {"tier": "gold"}, True),
        ("tags = wholesale", {"tags": ["retail", "wholesale"]}, True),
        ("tags != wholesale", {"tags": ["retail", "wholesale"]}, False),
        ("tags in [a, b]", {"tags": ["b"]}, True),
        ("tags not in [a, b]", {"tags": ["c"]}, True),
        ("tags =~ ^key-", {"tags": ["key-account"]}, True),
        ("tags !~ ^key-", {"tags": ["key-account"]}, False),
        ("language = zh", {"language": "zh-CN"}, True),
        ("language = en", {"language": "zh-CN"}, False),
        ("language = zh-cn", {"language": "zh-CN"}, True),
        ("language in [en, ja]", {"contact_language": "en-US"}, True),
        ('subject =~ "(?i)^re:"', {"subject": "RE: order 42"}, True),
        ('subject =~ "(?i)^re:"', {"subject": "order 42"}, False),
        ('subject !~ "(?i)^re:"', {}, True),
        ('subject = "hello world"', {"subject": "Hello World"}, True),
        (r'text =~ "订单\s*\d{6,}"', {"text": "我的订单 202503 没收到"}, True),
        (r'text =~ "order #\d+"', {"text": "ｏｒｄｅｒ ＃１２"}, True),  # regexes see width-folded text
        ("attachments = true", {"attachments": 2}, True),
        ("attachments = true", {}, False),
        ("attachments != true", {}, True),
        ("attachments = false", {"attachments": ["a.png"]}, False),
        ("ticket = new", {}, True),
        ("ticket = follow_up", {"ticket": "follow_up"}, True),
        ("ticket_status in [solved, closed]", {"ticket": "follow_up", "ticket_status": "solved"}, True),
        ("ticket_status = open", {}, False),
        ("weekday in [sat-sun]", {"now": "2025-03-08T10:00:00+08:00"}, True),
        ("weekday in [sat-sun]", {}, False),
        ("weekday = tue", {}, True),
        ("weekday != tue", {}, False),
        # 2025-03-03T20:00 UTC is Tuesday 04:00 in Shanghai: the rule's time zone decides
        ("weekday = tue", {"now": "2025-03-03T20:00:00+00:00"}, True),
        ("time in [09:00-18:00]", {}, True),
        ("time in [09:00-18:00]", {"now": "2025-03-04T18:00:00+08:00"}, False),
        ("time in [22:00-06:00]", {"now": "2025-03-04T05:59:00+08:00"}, True),
        ("time not in [22:00-06:00]", {"now": "2025-03-04T23:00:00+08:00"}, False),
        ("time in office", {}, True),
        ("time in office", {"now": "2025-03-04T12:30:00+08:00"}, False),  # lunch break
        ("time in office", {"now": "2025-03-09T10:00:00+08:00"}, False),  # Sunday
        ("time not in office", {"now": "2025-03-04T20:00:00+08:00"}, True),
        # 23:30 in London is inside the night shift, whatever the time in Shanghai
        ("time in night_shift", {"now": "2025-03-04T23:30:00+00:00"}, True),
        ("time in night_shift", {"now": "2025-03-04T12:00:00+00:00"}, False),
    ],
)
def test_matcher(matcher, fields, expected):
    assert matches([matcher], **fields) is expected


def test_all_matchers_of_a_rule_must_match():
    assert matches(["channel = email", "tier = vip"], tier="vip")
    assert not matches(["channel = email", "tier = vip"], channel="webchat", tier="vip")


def test_a_naive_now_is_read_in_the_rules_time_zone():
    tree = one_rule(["time in [09:00-10:00]"])
    from routing.rules import RuleInput, evaluate
    from routing.model import Inbound, Sender

    ib = Inbound(channel="email", account="a", external_id="x", kind="message", sender=Sender("email", "a@b.cn"))
    assert evaluate(tree, RuleInput(inbound=ib, now=datetime(2025, 3, 4, 9, 30))).rule == "hit"


class _Calendar:
    """What the SLA work supplies: ``is_open(dt)``; here, open on the 4th only."""

    def __init__(self):
        self.asked: list[datetime] = []

    def is_open(self, dt: datetime) -> bool:
        self.asked.append(dt)
        return dt.day == 4


def test_a_calendar_of_the_same_name_overrides_the_interval():
    cal = _Calendar()
    # Tuesday 20:00 is outside the `office` interval, but the calendar says open
    fields = {"now": "2025-03-04T20:00:00+08:00"}
    assert not matches(["time in office"], **fields)
    outcome = route(one_rule(["time in office"]), {"office": cal}, **fields)
    assert outcome.rule == "hit"
    assert outcome.matched[-1].matched == ("time in office (calendar office)",)
    assert cal.asked and cal.asked[0].utcoffset() is not None


def test_a_calendar_known_only_at_run_time_is_accepted_by_the_checker():
    from tests.rules.helpers import ROOT, tree_of

    rules = ROOT + "routes:\n  - {id: hit, title: t, owner: o, matchers: ['time in support_cal']}\n"
    tree = tree_of(rules, calendars=["support_cal"])
    assert route(tree, {"support_cal": _Calendar()}).rule == "hit"
    assert route(tree, {"support_cal": _Calendar()}, now="2025-03-05T10:00:00+08:00").rule == "root"
    # without the calendar at run time the rule cannot match (fails closed)
    assert route(tree).rule == "root"


def test_matcher_reasons_are_readable():
    outcome = route(one_rule(["channel = email", "tier in gold_tiers", "time in office"]), tier="gold")
    assert outcome.matched[-1].matched == (
        "channel = email",
        "tier in gold_tiers",
        "time in office (interval, Asia/Shanghai: tue 10:00)",
    )


# ---------------------------------------------------------------- keywords


def kw_tree(spec: str):
    return with_rules(f"- {{id: hit, title: t, owner: o, keywords: {spec}}}\n", LISTS)


@pytest.mark.parametrize(
    "spec, fields, expected",
    [
        ("{any: [退款]}", {"text": "我要申请退款，谢谢"}, True),
        ("{any: [退款]}", {"subject": "退款"}, True),
        ("{any: [退款]}", {"text": "我要退货"}, False),
        ("{any: [refund]}", {"text": "REFUND NOW"}, True),
        ("{any: [refund]}", {"text": "ＲＥＦＵＮＤ"}, True),  # full-width
        ("{any: [ＲＥＦＵＮＤ]}", {"text": "refund"}, True),  # the keyword is folded too
        ("{any: [refund]}", {"text": "refunded"}, False),  # whole words for Latin keywords
        ("{any: [refund*]}", {"text": "it was refunded?"}, True),  # prefix
        ("{any: [ai]}", {"text": "he said so"}, False),
        ("{any: [ai]}", {"text": "the AI is wrong"}, True),
        ("{any: [money back]}", {"text": "I want my Money  back"}, False),
        ("{any: [money back]}", {"text": "I want my money back!"}, True),
        ("{any: [wi-fi]}", {"text": "No Wi-Fi in room 3"}, True),
        ("{any: [崩溃]}", {"text": "app崩溃了"}, True),  # CJK: no word boundaries
        ("{lists: [refund_words]}", {"text": "请帮我退款"}, True),
        ("{lists: [refund_words]}", {"text": "nothing here"}, False),
        ("{any: [退款], in: [subject]}", {"text": "退款"}, False),
        ("{any: [退款], in: [subject]}", {"subject": "退款"}, True),
        ("{any: [退款], in: [text]}", {"subject": "退款"}, False),
        ("{any: [ß]}", {"text": "STRASSE"}, False),
        ("{any: [straße]}", {"text": "STRASSE"}, True),  # casefold, not lower()
    ],
)
def test_keywords(spec, fields, expected):
    assert (route(kw_tree(spec), **fields).rule == "hit") is expected


def test_keyword_reason_names_the_word_and_its_list():
    outcome = route(kw_tree("{lists: [refund_words]}"), subject="申请退款")
    assert outcome.matched[-1].matched == ('subject contains "退款" (list refund_words)',)
    outcome = route(kw_tree("{any: [refund*]}"), text="Refunded?")
    assert outcome.matched[-1].matched == ('text contains "refund"',)


def test_keywords_and_matchers_combine():
    tree = with_rules("- {id: hit, title: t, owner: o, matchers: ['channel = email'], keywords: {any: [退款]}}\n")
    assert route(tree, text="退款").rule == "hit"
    assert route(tree, channel="webchat", text="退款").rule == "root"
    assert route(tree, text="你好").rule == "root"


def test_first_matching_keyword_rule_wins_among_many():
    rules = "".join(f"- {{id: r{i}, title: t, owner: o, keywords: {{any: [word{i}]}}, team: t{i}}}\n" for i in range(300))
    tree = with_rules(rules)
    outcome = route(tree, text="about word250 and word120 and word299")
    assert outcome.path == ("root", "r120")
    assert outcome.team == "t120"
    assert route(tree, text="no keyword here").path == ("root",)


def test_a_keyword_rule_under_a_disabled_parent_never_matches():
    tree = with_rules(
        """
        - id: parent
          title: t
          owner: o
          enabled: false
          routes:
            - {id: child, title: t, owner: o, keywords: {any: [退款]}}
        - {id: other, title: t, owner: o, keywords: {any: [退款]}}
        """
    )
    assert route(tree, text="退款").path == ("root", "other")


MISSED = {"channel": "phone", "from": "+8613800138000", "call": {"direction": "inbound", "disposition": "missed", "duration": 0}}
SHORT = {"channel": "phone", "from": "+8613800138000", "call": {"direction": "inbound", "disposition": "answered", "duration": 8}}


@pytest.mark.parametrize(
    "matcher, fields, expected",
    [
        ("call.disposition = missed", MISSED, True),
        ("call.disposition = missed", SHORT, False),
        ("call.disposition in [missed, busy]", MISSED, True),
        ("call.disposition != missed", SHORT, True),
        ("call.direction = inbound", MISSED, True),
        ("call.direction = outbound", MISSED, False),
        ("call.duration < 10", SHORT, True),
        ("call.duration < 10s", {**SHORT, "call": {**SHORT["call"], "duration": 10}}, False),
        ("call.duration <= 10", {**SHORT, "call": {**SHORT["call"], "duration": 10}}, True),
        ("call.duration >= 1m", {**SHORT, "call": {**SHORT["call"], "duration": 60}}, True),
        ("call.duration > 1m", {**SHORT, "call": {**SHORT["call"], "duration": 60}}, False),
        ("call.duration = 8", SHORT, True),
        ("call.duration != 8", SHORT, False),
        # a call matcher never matches what is not a call
        ("call.disposition != missed", {"channel": "email", "from": "a@b.cn"}, False),
        ("call.duration < 10", {"channel": "email", "from": "a@b.cn"}, False),
        ("call.duration < 10", {**SHORT, "call": {"direction": "inbound"}}, False),  # duration unknown
    ],
)
def test_call_matchers(matcher, fields, expected):
    assert matches([matcher], **fields) is expected


@pytest.mark.parametrize(
    "matcher, problem",
    [
        ("call.disposition = hungup", "call.disposition is one of answered, missed, busy, failed, voicemail"),
        ("call.duration < soon", "call.duration compares with a number of seconds"),
        ("call.duration =~ 1", "operator '=~' does not apply to 'call.duration'"),
        ("channel < email", "operator '<' does not apply to 'channel'"),
    ],
)
def test_call_matcher_errors(matcher, problem):
    from tests.rules.helpers import errors_of, ROOT

    quoted = "'" + matcher + "'"
    errors = errors_of(ROOT + f"routes:\n  - {{id: hit, title: t, owner: o, matchers: [{quoted}]}}\n")
    assert any(problem in e for e in errors), errors
