"""The evaluator's shortcuts decide exactly as the plain way (oracle tests
on generated trees and messages, pure): the actions of a route path applied
once per path and kept on the tree (``CompiledTree.settled``)."""

from __future__ import annotations

import random

import pytest

from routing.rules import evaluate
from tests.rules.helpers import ROOT, message, tree_of

CHANNELS = ("email", "wechat", "api")
WORDS = ("refund", "outage", "invoice", "退款", "发票")


def _rule(rng: random.Random, name: str, depth: int) -> list[str]:
    lines = [f"- id: {name}", "  title: t", "  owner: o"]
    kind = rng.choice(("channel", "tier", "keywords", "none"))
    if kind == "channel":
        lines.append(f"  matchers: ['channel = {rng.choice(CHANNELS)}']")
    elif kind == "tier":
        lines.append(f"  matchers: ['tier in [{rng.choice(('vip', 'gold'))}]']")
    elif kind == "keywords":
        lines.append(f"  keywords: {{any: [{rng.choice(WORDS)}]}}")
    if rng.random() < 0.6:
        lines.append(f"  priority: {rng.choice(('low', 'normal', 'high', 'urgent'))}")
    if rng.random() < 0.5:
        lines.append(f"  team: {rng.choice(('t1', 't2', 't3'))}")
    if rng.random() < 0.4:
        lines.append(f"  skills: {{{rng.choice(('s1', 's2'))}: {rng.randint(1, 3)}}}")
    if rng.random() < 0.5:
        lines.append(f"  tags: [{rng.choice(('a', 'b', 'c'))}, {rng.choice(('b', 'd'))}]")
    if rng.random() < 0.2:
        lines.append(f"  assign: {{agent: {rng.choice(('x', 'y'))}}}")
    elif rng.random() < 0.2:
        lines.append(f"  assign: {{team: {rng.choice(('t1', 't2'))}}}")
    if rng.random() < 0.2:
        lines.append(f"  webhooks: [{rng.choice(('crm', 'pager'))}]")
    if rng.random() < 0.1:
        lines.append(f"  {rng.choice(('spam', 'ignore'))}: true")
    if kind == "none" or rng.random() < 0.5:  # a catch-all that stopped would hide its later siblings
        lines.append("  continue: true")
    if depth < 2 and rng.random() < 0.4:
        lines.append("  routes:")
        for i in range(rng.randint(1, 3)):
            lines.extend("    " + line for line in _rule(rng, f"{name}-{i}", depth + 1))
    return lines


def _tree_text(rng: random.Random) -> str:
    lines = ["routes:"]
    for i in range(rng.randint(2, 6)):
        lines.extend("  " + line for line in _rule(rng, f"r{i}", 0))
    return ROOT + "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(40))
def test_settled_paths_decide_as_applying_each_time(seed: int):
    rng = random.Random(seed)
    text = _tree_text(rng)
    warm, cold = tree_of(text), tree_of(text)
    for _ in range(60):
        ri = message(channel=rng.choice(CHANNELS), tier=rng.choice(("vip", "gold", None)),
                     text=" ".join(rng.choice(WORDS + ("hello", "订单")) for _ in range(3)))
        cold.settled.clear()  # the plain way: every action applied for this message
        expected = evaluate(cold, ri)
        got = evaluate(warm, ri)
        assert got == expected, text
        got.skills["mutated"] = 9  # each outcome has its own skills: the kept path is not changed
        assert evaluate(warm, ri) == expected
    assert warm.settled  # the paths were kept
