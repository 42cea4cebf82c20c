"""Benchmark of rule evaluation: µs per message at 100, 1,000 and 10,000 keyword rules.

The workload: a root with N keyword rules under it (each with two keywords:
one made-up Latin word, one two-character Chinese word; every tenth rule also
draws on a shared 50-word list), plus the shipped-style rules that are not
keyword rules (a channel matcher, a tier matcher, an after-hours interval).
Two messages of ~400 characters, mixed Chinese and English: one that matches
no keyword rule (falls through to the root — the common case), one whose
keywords belong to rules near the end of the list. Measured: the whole
:func:`routing.rules.evaluate` — folding subject and text (NFKC + casefold),
one automaton scan per field, the tree walk with every matcher, the
decision and its reasons.

The baseline is the obvious engine on the same rules and the same already
folded text: for each rule in order, one ``str.find`` (``in``) per keyword,
stopping at the first rule that has one — no folding, no word boundaries,
no reasons. ``ratio`` is value / baseline (below 1: faster than the naive
loop). Deterministic (seeded); ``figures()`` takes a few seconds.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timezone

from routing.model import Inbound, Sender
from routing.rules import CompiledTree, RuleInput, check_texts, evaluate
from routing.rules.syntax import fold

SIZES = (100, 1_000, 10_000)
NOW = datetime(2025, 3, 4, 2, 0, tzinfo=timezone.utc)  # Tuesday 10:00 in Shanghai
_SYLLABLES = ["ka", "lo", "mi", "ne", "tru", "po", "zen", "qua", "bri", "sto", "vel", "dor", "fin", "gra", "hul"]
_HANZI = "退款发票订单物流账号密码登录支付优惠售后投诉维修安装配送价格会员积分升级取消更换保修咨询地址电话"


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(3))


def _rules_yaml(n: int, rng: random.Random) -> tuple[str, list[tuple[str, str]]]:
    """A rule file with ``n`` keyword rules, and each rule's two keywords."""
    shared = sorted({_word(rng) + "x" for _ in range(50)})
    keywords = [(f"{_word(rng)}{i}", rng.choice(_HANZI) + rng.choice(_HANZI) + str(i)) for i in range(n)]
    lines = [
        "lists:",
        f"  shared: [{', '.join(shared)}]",
        "intervals:",
        "  business_hours: {times: [{weekdays: [mon-fri], hours: ['09:00-18:00']}]}",
        "route: {id: root, title: root, owner: bench, team: frontline}",
        "routes:",
        "  - {id: after-hours, title: t, owner: o, matchers: ['time not in business_hours'], tags: [ah], continue: true}",
        "  - {id: vip, title: t, owner: o, matchers: ['tier = vip'], priority: high}",
    ]
    for i, (latin, han) in enumerate(keywords):
        lists = ", lists: [shared]" if i % 10 == 0 else ""
        lines.append(f"  - {{id: r{i}, title: t, owner: o, keywords: {{any: [{latin}, {han}]{lists}}}, team: t{i % 50}}}")
    lines.append("  - {id: social, title: t, owner: o, matchers: ['channel in [whatsapp, line]'], team: social}")
    return "\n".join(lines) + "\n", keywords


def _message(rng: random.Random, keywords: list[str]) -> Inbound:
    filler = [_word(rng) for _ in range(40)] + ["您好，我想咨询一下上周的那个问题，麻烦尽快回复，谢谢。"] * 3
    rng.shuffle(filler)
    text = " ".join(filler[:20] + keywords + filler[20:])
    return Inbound(channel="email", account="support", external_id="bench", kind="message",
                   sender=Sender("email", "a@b.cn"), subject="Question 关于订单", text=text)  # fmt: skip


def _naive(rules: list[tuple[str, ...]], text: str) -> int:
    for i, words in enumerate(rules):
        for w in words:
            if w in text:
                return i
    return -1


def _per_call(fn, min_seconds: float = 0.3) -> float:
    """Seconds per call, timing batches until ``min_seconds`` have passed."""
    calls, start = 0, time.perf_counter()
    batch = 1
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls
        batch *= 2


def _figure(n: int) -> dict:
    rng = random.Random(n)
    text, keywords = _rules_yaml(n, rng)
    t0 = time.perf_counter()
    tree, errors = check_texts({"bench.yaml": text})
    compile_s = time.perf_counter() - t0
    assert tree is not None, errors
    late = [keywords[-3][0], keywords[-2][1]]  # rules near the end of the list
    messages = {"miss": _message(rng, []), "hit": _message(rng, late)}
    naive_rules = [tuple(fold(w) for w in pair) + (tuple(_shared(tree)) if i % 10 == 0 else ()) for i, pair in enumerate(keywords)]
    ours, base, paths = {}, {}, {}
    for name, inbound in messages.items():
        ri = RuleInput(inbound=inbound, now=NOW)
        folded = fold(inbound.text)
        ours[name] = _per_call(lambda: evaluate(tree, ri))
        base[name] = _per_call(lambda: _naive(naive_rules, folded))
        paths[name] = "/".join(evaluate(tree, ri).path)
    value = sum(ours.values()) / len(ours) * 1e6
    baseline = sum(base.values()) / len(base) * 1e6
    return {
        "value": round(value, 2),
        "unit": "µs/msg",
        "baseline": round(baseline, 2),
        "baseline_label": "per rule in order, one str.find per keyword over the already folded text, stop at the first hit",
        "ratio": round(value / baseline, 4),
        "detail": {
            "keyword_rules": n,
            "keywords": len(tree.keywords),
            "text_chars": len(messages["miss"].text),
            "compile_ms": round(compile_s * 1000, 1),
            "us_per_msg": {k: round(v * 1e6, 2) for k, v in ours.items()},
            "baseline_us_per_msg": {k: round(v * 1e6, 2) for k, v in base.items()},
            "paths": paths,
        },
    }


def _shared(tree: CompiledTree) -> list[str]:
    return [fold(w) for w in tree.lists["shared"]]


def figures() -> dict[str, dict]:
    return {f"rules_eval_{n}": _figure(n) for n in SIZES}


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(figures(), ensure_ascii=False, indent=2))
