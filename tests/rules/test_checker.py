"""Every error of the checker, with its exact ``file:line:column`` (pure tests)."""

from __future__ import annotations

import pytest

from routing.rules import KnownNames, RulesInvalid, check, check_texts, load
from tests.rules.checker_cases import CASES, ROOT


@pytest.mark.parametrize("files, expected", [pytest.param(f, e, id=n) for n, f, e in CASES])
def test_error(files, expected):
    tree, errors = check_texts({"00.yaml": ROOT, **files})
    assert tree is None
    assert sorted(map(str, errors)) == sorted(expected)


KNOWN = KnownNames(teams=frozenset({"billing", "senior"}), agents=frozenset({"a-lilei"}), webhooks=frozenset({"crm"}))
REFS = """\
route: {id: root, title: R, owner: o, team: billing}
routes:
  - {id: a, title: t, owner: o, matchers: ['tier = a'], team: biling}
  - {id: b, title: t, owner: o, matchers: ['tier = b'], assign: {agent: a-hanmeimei}}
  - {id: c, title: t, owner: o, matchers: ['tier = c'], assign: {team: seniors}, webhooks: [crm, pager]}
"""


def test_teams_agents_and_webhooks_are_checked_against_the_directory():
    _, errors = check_texts({"r.yaml": REFS}, known=KNOWN)
    assert list(map(str, errors)) == [
        "r.yaml:3:63: undefined team 'biling'; defined: billing, senior",
        "r.yaml:4:73: undefined agent 'a-hanmeimei'; defined: a-lilei",
        "r.yaml:5:72: undefined team 'seniors'; defined: billing, senior",
        "r.yaml:5:98: undefined webhook 'pager'; defined: crm",
    ]


def test_without_a_directory_those_names_are_not_checked():
    tree, errors = check_texts({"r.yaml": REFS})
    assert tree is not None and errors == []
    # and a kind the directory leaves out (None) is not checked either
    tree, _ = check_texts({"r.yaml": REFS}, known=KnownNames(teams=frozenset({"billing", "biling", "seniors"})))
    assert tree is not None


def test_all_errors_of_all_files_come_in_one_run():
    _, errors = check_texts({"00.yaml": ROOT, "10.yaml": "lists: {a: x}\n", "20.yaml": "routes: [{id: r, title: t, owner: o, tema: x}]\n"})
    assert [e.file for e in errors] == ["10.yaml", "20.yaml"]


def test_a_continue_rule_or_a_disabled_catch_all_hides_nothing():
    tree, errors = check_texts({"00.yaml": ROOT, "10.yaml": (
        "routes:\n"
        "  - {id: tag-all, title: t, owner: o, tags: [x], continue: true}\n"
        "  - {id: disabled, title: t, owner: o, enabled: false}\n"
        "  - {id: last, title: t, owner: o}\n"
    )})  # fmt: skip
    assert errors == [] and tree is not None


def test_unreachable_is_checked_at_every_depth():
    _, errors = check_texts({"00.yaml": ROOT, "10.yaml": (
        "routes:\n"
        "  - id: p\n    title: t\n    owner: o\n    matchers: ['tier = a']\n    routes:\n"
        "      - {id: all, title: t, owner: o}\n"
        "      - {id: late, title: t, owner: o, matchers: ['tier = b']}\n"
    )})  # fmt: skip
    assert [e.message.split(":")[0] for e in errors] == ["rule 'late' is unreachable"]


def test_folder_errors(tmp_path):
    assert list(map(str, check(tmp_path / "missing")[1])) == [f"{tmp_path / 'missing'}:1:1: not a directory"]
    (tmp_path / "00.yaml").write_bytes(b"route: {id: root, title: \xff, owner: o}\n")
    (_, errors) = check(tmp_path)
    assert len(errors) == 1 and errors[0].message.startswith("cannot read:")
    (tmp_path / "00.yaml").write_text("# only a comment\n")
    assert [e.message for e in check(tmp_path)[1]] == ["no root route: one file must define `route:`"]


def test_load_raises_with_every_error(tmp_path):
    (tmp_path / "00.yaml").write_text("route: {id: root, title: R, owner: o, priority: hgih}\nlists: {a: x}\n")
    with pytest.raises(RulesInvalid) as info:
        load(tmp_path)
    assert str(info.value).splitlines() == [
        f"{tmp_path}/00.yaml:1:49: priority is one of urgent, high, normal, low, got 'hgih'",
        f"{tmp_path}/00.yaml:2:12: list 'a' must be a list, got a string",
    ]


def test_yml_files_count_and_other_files_do_not(tmp_path):
    (tmp_path / "00.yml").write_text(ROOT)
    (tmp_path / "README.md").write_text("not rules")
    (tmp_path / "tests").mkdir()
    tree, errors = check(tmp_path)
    assert errors == [] and tree.files == (str(tmp_path / "00.yml"),)
