"""Every console string has zh-CN and English text: a key used in a template
or a view but missing from either catalogue fails here (and, at run time,
``t()`` raises rather than show a key)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.console import i18n, views

CONSOLE = Path(views.__file__).parent
LITERAL = re.compile(r"""\bt\(\s*["']([a-z_]+\.[a-z_.]+|logout|signed_in_as)["']""")
PREFIXED = re.compile(r"""\bt\(\s*["']([a-z_]+\.)["']\s*~""")


def used_keys() -> set[str]:
    keys: set[str] = set()
    for path in [*CONSOLE.glob("templates/*.html"), *CONSOLE.glob("*.py")]:
        keys |= set(LITERAL.findall(path.read_text(encoding="utf-8")))
    return keys


def test_both_catalogues_have_the_same_keys() -> None:
    assert set(i18n.EN) ^ set(i18n.ZH) == set()


def test_every_key_used_is_translated() -> None:
    used = used_keys()
    assert len(used) > 50
    for lang, cat in i18n.CATALOGUES.items():
        assert sorted(used - set(cat)) == [], f"untranslated in {lang}"


@pytest.mark.parametrize("prefix,values", [
    ("status.", views.STATUSES), ("priority.", views.PRIORITIES), ("presence.", ("online", "away", "offline")),
    ("queue.", ("mine", "teams", "unassigned", "all")),
    ("delivery.", ("queued", "sending", "sent", "delivered", "read", "retrying", "failed")),
    ("entry.", ("rule", "assignment", "status", "update", "sla", "identity", "merge", "call")),
])
def test_keys_built_from_values_are_translated(prefix: str, values: tuple) -> None:
    for path in CONSOLE.glob("templates/*.html"):
        text = path.read_text(encoding="utf-8")
        if prefix != "entry." and f't("{prefix}" ~' not in text:
            continue
    for lang, cat in i18n.CATALOGUES.items():
        missing = [v for v in values if prefix + v not in cat]
        assert missing == [], f"{lang}: {prefix}{missing}"


def test_a_missing_key_raises_instead_of_showing_the_key() -> None:
    with pytest.raises(i18n.Untranslated):
        i18n.translator("zh-CN")("no.such.key")


def test_the_language_comes_from_the_switch_then_the_browser() -> None:
    assert i18n.choose(None, "en-US,en;q=0.9") == "en"
    assert i18n.choose(None, "zh-CN,zh;q=0.9,en;q=0.8") == "zh-CN"
    assert i18n.choose(None, "fr;q=1,en;q=0.5") == "en"
    assert i18n.choose("en", "zh-CN") == "en"
    assert i18n.choose(None, None) == "zh-CN"
    assert i18n.choose(None, "en;q=abc,zh") == "zh-CN"
