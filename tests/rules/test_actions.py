"""Every action, the tree semantics (first match, continue, inheritance) and
auto-reply rendering (pure tests)."""

from __future__ import annotations

from tests.rules.helpers import ROOT, route, tree_of, with_rules

TEMPLATES = """
templates:
  ack:
    default_language: zh-CN
    zh-CN:
      subject: 已收到 {ticket_number}
      fallback_name: 客户
      text: "{contact_name}您好，工单号 {ticket_number}。"
    en:
      subject: Received {ticket_number}
      fallback_name: there
      text: "Hello {contact_name}, ticket {{#{ticket_number}}}."
"""


def test_actions_are_set():
    tree = with_rules(
        """
        - id: all
          title: everything
          owner: o
          matchers: ['channel = email']
          priority: urgent
          team: billing
          skills: {billing: 2, english: 1}
          tags: [refund, email]
          assign: {agent: a-lilei}
          auto_reply: ack
          webhooks: [crm, pager]
          spam: true
          ignore: true
        """,
        TEMPLATES,
    )
    o = route(tree)
    assert (o.priority, o.team, o.skills, o.tags) == ("urgent", "billing", {"billing": 2, "english": 1}, ("refund", "email"))
    assert (o.assignee, o.assign_team, o.webhooks, o.spam, o.ignore) == ("a-lilei", None, ("crm", "pager"), True, True)
    assert o.auto_reply is None and o.auto_reply_suppressed == "the message is spam"


def test_root_settings_apply_when_nothing_else_matches():
    o = route(tree_of(ROOT))
    assert (o.path, o.team, o.priority, o.tags, o.auto_reply) == (("root",), "frontline", "normal", (), None)
    assert o.matched[0].id == "root" and o.matched[0].title == "Root" and o.matched[0].owner == "ops"


def test_assign_team_replaces_an_earlier_agent():
    tree = with_rules(
        """
        - {id: a, title: t, owner: o, assign: {agent: a-lilei}, continue: true}
        - {id: b, title: t, owner: o, assign: {team: billing}}
        """
    )
    o = route(tree)
    assert (o.path, o.assignee, o.assign_team) == (("root", "a", "b"), None, "billing")


def test_first_match_wins_unless_continue():
    tree = with_rules(
        """
        - {id: a, title: t, owner: o, matchers: ['channel = email'], team: ta}
        - {id: b, title: t, owner: o, matchers: ['channel = email'], team: tb}
        """
    )
    assert route(tree).path == ("root", "a")
    tree = with_rules(
        """
        - {id: a, title: t, owner: o, matchers: ['channel = email'], team: ta, tags: [x], continue: true}
        - {id: b, title: t, owner: o, matchers: ['channel = email'], tags: [y]}
        - {id: c, title: t, owner: o, team: never}
        """
    )
    o = route(tree)
    assert o.path == ("root", "a", "b")
    assert (o.team, o.tags) == ("ta", ("x", "y"))  # b inherits a's team, tags accumulate


def test_children_inherit_and_the_deepest_match_decides():
    tree = with_rules(
        """
        - id: billing
          title: billing
          owner: o
          matchers: ['channel = email']
          team: billing
          priority: high
          skills: {billing: 1}
          routes:
            - {id: billing-vip, title: t, owner: o, matchers: ['tier = vip'], priority: urgent, skills: {billing: 3}}
            - {id: billing-low, title: t, owner: o, matchers: ['tags = newsletter'], priority: low}
        """
    )
    o = route(tree, tier="vip")
    assert (o.path, o.team, o.priority, o.skills) == (("root", "billing", "billing-vip"), "billing", "urgent", {"billing": 3})
    o = route(tree, tags=["newsletter"])
    assert (o.rule, o.priority) == ("billing-low", "low")  # a child may lower its parent's priority
    o = route(tree)
    assert (o.rule, o.priority, o.skills) == ("billing", "high", {"billing": 1})  # no child matched: the parent decides


def test_a_later_branch_never_lowers_an_escalation():
    tree = with_rules(
        """
        - {id: outage, title: t, owner: o, keywords: {any: [outage]}, priority: urgent, continue: true}
        - {id: low, title: t, owner: o, priority: low}
        """
    )
    assert route(tree, text="outage!").priority == "urgent"
    assert route(tree, text="hello").priority == "low"


def test_a_disabled_rule_is_skipped_and_does_not_hide_later_ones():
    tree = with_rules(
        """
        - {id: disabled, title: t, owner: o, enabled: false, team: never}
        - {id: enabled, title: t, owner: o, matchers: ['channel = email'], team: b}
        """
    )
    assert route(tree).path == ("root", "enabled")


def test_auto_reply_in_chinese_by_default_with_variables():
    tree = with_rules("- {id: r, title: t, owner: o, auto_reply: ack}\n", TEMPLATES)
    o = route(tree, contact_name="王芳", ticket_number=1042)
    assert o.auto_reply is not None
    assert (o.auto_reply.template, o.auto_reply.language) == ("ack", "zh-CN")
    assert (o.auto_reply.subject, o.auto_reply.text) == ("已收到 1042", "王芳您好，工单号 1042。")


def test_auto_reply_language_from_message_then_contact_then_default():
    tree = with_rules("- {id: r, title: t, owner: o, auto_reply: ack}\n", TEMPLATES)
    assert route(tree, language="en-GB").auto_reply.language == "en"
    assert route(tree, contact_language="en").auto_reply.language == "en"
    assert route(tree, language="zh-TW", contact_language="en").auto_reply.language == "zh-CN"
    assert route(tree, language="fr").auto_reply.language == "zh-CN"


def test_auto_reply_name_falls_back_to_sender_name_then_template():
    tree = with_rules("- {id: r, title: t, owner: o, auto_reply: ack}\n", TEMPLATES)
    o = route(tree, language="en", name="John Smith", ticket_number=7)
    assert o.auto_reply.text == "Hello John Smith, ticket {#7}."
    assert route(tree, language="en").auto_reply.text == "Hello there, ticket {#}."


def test_no_auto_reply_to_auto_replies_bounces_or_ignored_messages():
    tree = with_rules("- {id: r, title: t, owner: o, auto_reply: ack, webhooks: [crm]}\n", TEMPLATES)
    for auto in ("auto_reply", "bounce", "bulk"):
        o = route(tree, auto=auto)
        assert o.auto_reply is None
        assert o.auto_reply_suppressed == f"the message is itself automatic ({auto})"
        assert o.webhooks == ("crm",)  # other actions still apply
    ignored = with_rules("- {id: r, title: t, owner: o, auto_reply: ack, ignore: true}\n", TEMPLATES)
    assert route(ignored).auto_reply_suppressed == "the message is ignored"


def test_a_later_rule_can_unset_spam():
    tree = with_rules(
        """
        - {id: s, title: t, owner: o, spam: true, continue: true}
        - {id: w, title: t, owner: o, matchers: ['sender = friend@x.cn'], spam: false}
        """
    )
    assert route(tree).spam is True
    assert route(tree, **{"from": "friend@x.cn"}).spam is False


def test_outcome_serialises_for_the_timeline():
    tree = with_rules("- {id: r, title: Refunds, owner: billing, keywords: {any: [退款]}, team: billing}\n")
    d = route(tree, text="退款").to_dict()
    assert d["path"] == ["root", "r"]
    assert d["matched"][1] == {"id": "r", "title": "Refunds", "owner": "billing", "matched": ['text contains "退款"'], "depth": 1}


def test_a_customer_chosen_name_is_plain_short_text_without_a_working_link():
    """Issue 10, item 4: the display name is the customer's to choose, not to weaponise."""
    tree = with_rules("- {id: r, title: t, owner: o, auto_reply: ack}\n", TEMPLATES)
    o = route(tree, language="en", name="Win a prize at http://evil.example/x\r\nBcc: all", ticket_number=7)
    text = o.auto_reply.text
    assert "http://" not in text and "evil.example" not in text and "\n" not in text and "\r" not in text
    assert "http[:]//evil[.]example/x" in text
    long = route(tree, language="en", name="A" * 500 + "\u202e", ticket_number=7).auto_reply.text
    name = long.removeprefix("Hello ").removesuffix(", ticket {#7}.")
    assert len(name) <= 64 and name.endswith("…") and "\u202e" not in long
    assert route(tree, language="en", name="\x00\x07", ticket_number=7).auto_reply.text.startswith("Hello there")
    assert route(tree, language="en", name="José Müller", ticket_number=7).auto_reply.text.startswith("Hello José Müller,")
    assert "Hello J.R.R. Tolkien," in route(tree, language="en", name="J.R.R. Tolkien", ticket_number=7).auto_reply.text
