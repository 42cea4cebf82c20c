"""The pure rule-set diff, on real Inbounds parsed from the email corpus and
on synthetic ones."""

from __future__ import annotations

import re
from datetime import datetime

from connectors.base import PayloadRejected
from connectors.registry import parser_for
from routing.model import Inbound, Sender
from routing.rules import RuleInput, diff
from tests.corpus import require_corpus, rows
from tests.rules.helpers import ROOT, tree_of

NOW = datetime.fromisoformat("2025-03-04T10:00:00+08:00")
LIVE = ROOT + """
routes:
  - {id: refund, title: t, owner: o, keywords: {any: [refund, 退款]}, team: billing}
  - {id: vip, title: t, owner: o, matchers: ['tier = vip'], priority: high}
"""


def inbound(n: int, subject: str, text: str = "") -> Inbound:
    return Inbound(channel="email", account="support", external_id=f"m{n}", kind="message",
                   sender=Sender("email", f"c{n}@x.cn"), subject=subject, text=text)  # fmt: skip


def test_only_changed_decisions_are_listed_with_counts():
    live = tree_of(LIVE)
    candidate = tree_of(LIVE.replace("team: billing", "team: payments").replace("priority: high", "priority: urgent"))
    inputs = [
        RuleInput(inbound=inbound(1, "refund"), now=NOW),
        RuleInput(inbound=inbound(2, "退款"), now=NOW),
        RuleInput(inbound=inbound(3, "hello"), now=NOW),
        RuleInput(inbound=inbound(4, "hello"), now=NOW, contact_tier="vip"),
    ]
    report = diff(live, candidate, inputs)
    assert report.total == 4
    assert [m.key for m in report.changed] == ["m1", "m2", "m4"]
    assert report.counts == {"team: billing → payments": 2, "priority: high → urgent": 1}
    assert str(report.changed[2].changes[0]) == "priority: high → urgent"


def test_a_new_rule_changes_rule_team_and_auto_reply():
    live = tree_of(LIVE)
    candidate = tree_of(
        LIVE + "  - {id: hello, title: t, owner: o, keywords: {any: [hello]}, team: greeters, auto_reply: hi}\n"
        "templates: {hi: {en: {text: hi}}}\n"
    )
    report = diff(live, candidate, [RuleInput(inbound=inbound(1, "hello"), now=NOW)])
    assert [str(c) for c in report.changed[0].changes] == [
        "rule: root → hello", "team: frontline → greeters", "auto_reply: - → hi",
    ]  # fmt: skip


def test_identical_rule_sets_change_nothing_on_the_email_corpus():
    require_corpus()
    inputs = list(_corpus_inputs())
    assert len(inputs) >= 30
    tree = tree_of(LIVE)
    report = diff(tree, tree_of(LIVE), inputs)
    assert (report.total, report.changed, report.counts) == (len(inputs), (), {})


def test_a_candidate_over_the_email_corpus():
    require_corpus()
    inputs = list(_corpus_inputs())
    live = tree_of(LIVE)
    # the candidate sends every delivery report (a bounce) to a mail-ops team
    dsn = "(?i)(delivery|undeliver|returned mail)"
    candidate = tree_of(LIVE + f"  - {{id: dsn, title: t, owner: o, matchers: ['subject =~ \"{dsn}\"'], team: mail-ops}}\n")
    report = diff(live, candidate, inputs)
    # messages the live tree already sends elsewhere (refunds) stay there: first match wins
    subjects = [i.inbound.subject or "" for i in inputs]
    expected = sum(1 for s in subjects if re.search(dsn, s) and not re.search(r"(?i)\brefund\b|退款", s))
    assert expected >= 1  # the corpus has delivery-status reports
    assert len(report.changed) == expected
    assert report.counts == {"rule: root → dsn": expected, "team: frontline → mail-ops": expected}


def _corpus_inputs():
    parse = parser_for("email")
    for row in rows("email"):
        if row.invalid:
            continue
        try:
            inbounds = parse(row.read(), {**row.context, "channel": "email", "account": "support"})
        except PayloadRejected:  # a payload the parser refuses is not this test's subject
            continue
        for ib in inbounds:
            yield RuleInput(inbound=ib, now=NOW)
