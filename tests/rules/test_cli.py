"""``omnigate rules check|test|diff`` end to end, and the dry-run API."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from gateway.commands.rules import main
from routing.rules import InputError, dry_run, load

RULES = Path(__file__).resolve().parents[2] / "rules"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv), prog="omnigate rules")
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- check


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch, tmp_path):
    """``rules check`` reads the configuration serve would: none here."""
    monkeypatch.delenv("OMNIGATE_CONFIG", raising=False)
    monkeypatch.delenv("OMNIGATE_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)


def test_the_shipped_rules_pass_check_with_their_tests(capsys):
    code, out, err = run(capsys, "check", str(RULES))
    assert code == 0, err
    assert "rule tests: 23 passed, 0 failed, 0 errors in test files" in out
    assert err == ("omnigate rules check: warning: no directory (no --directory, no directory: in the "
                   "configuration): could not check teams, agents and skills\n")


def test_the_shipped_rules_agree_with_the_shipped_example_directory(capsys):
    example = RULES.parent / "deploy" / "directory.example.yaml"
    code, out, err = run(capsys, "check", str(RULES), "--directory", str(example))
    assert (code, err) == (0, "")
    assert f"teams, agents and skills checked against {example}" in out


def test_check_reads_the_directory_of_the_configuration_by_default(tmp_path, capsys, monkeypatch):
    (tmp_path / "directory.yaml").write_text(
        "teams: {frontline: {title: F}, billing: {title: B}, senior: {title: S}, social-media: {title: M}}\n"
        "agents: [{id: a-1, name: A, teams: [billing], skills: {billing: 2, vip: 1, social: 1}}]\n"
    )
    (tmp_path / "omnigate.yaml").write_text("directory: directory.yaml\n")
    code, out, err = run(capsys, "check", str(RULES), "--no-tests")  # ./omnigate.yaml, as serve reads it
    assert code == 1
    assert f"{RULES}/50-billing.yaml:17:30: undefined skill 'disputes'; defined: billing, social, vip" in err.splitlines()
    (tmp_path / "other.yaml").write_text("directory: nowhere.yaml\n")
    monkeypatch.setenv("OMNIGATE_CONFIG", str(tmp_path / "other.yaml"))
    code, _, err = run(capsys, "check", str(RULES), "--no-tests")
    assert code == 2 and "nowhere.yaml" in err


def test_check_lists_every_error_and_fails(tmp_path, capsys):
    (tmp_path / "00.yaml").write_text("route: {id: root, title: R, owner: o, tema: x}\nlists: {a: 1}\n")
    code, out, err = run(capsys, "check", str(tmp_path))
    assert code == 1
    assert err.splitlines() == [
        f"{tmp_path}/00.yaml:1:39: unknown key 'tema' in the root route (did you mean 'team'?)",
        f"{tmp_path}/00.yaml:2:12: list 'a' must be a list, got an integer",
        f"omnigate rules check: {tmp_path}: 2 errors",
    ]


def test_a_failing_rule_test_prints_expected_and_got_per_field(tmp_path, capsys):
    shutil.copytree(RULES, tmp_path / "rules")
    (tmp_path / "rules" / "tests" / "wrong.yaml").write_text(
        "tests:\n"
        "  - name: whatsapp to billing\n"
        "    now: 2025-03-04T10:00:00+08:00\n"
        "    input: {channel: whatsapp, from: '+8613900000001', text: hi}\n"
        "    expect: {path: [root, social], team: billing, priority: high, tags: [x]}\n",
        encoding="utf-8",
    )
    code, out, err = run(capsys, "check", str(tmp_path / "rules"))
    assert code == 1
    assert err.splitlines()[1:] == [
        f"{tmp_path}/rules/tests/wrong.yaml:2:5: FAIL whatsapp to billing",
        "    team:     expected billing, got social-media",
        "    priority: expected high, got normal",
        "    tags:     expected [x], got []",
    ]
    assert "rule tests: 23 passed, 1 failed, 0 errors in test files" in out


def test_malformed_rule_tests_are_errors_with_positions(tmp_path, capsys):
    shutil.copytree(RULES, tmp_path / "rules", ignore=shutil.ignore_patterns("tests"))
    (tmp_path / "rules" / "tests").mkdir()
    (tmp_path / "rules" / "tests" / "bad.yaml").write_text(
        "tests:\n"
        "  - name: no clock\n"
        "    input: {channel: email}\n"
        "    expect: {team: billing}\n"
        "  - name: typo\n"
        "    now: 2025-03-04T10:00:00+08:00\n"
        "    input: {channel: email, teir: vip}\n"
        "    expect: {teem: billing}\n"
        "  - name: naive clock\n"
        "    now: 2025-03-04T10:00:00\n"
        "    input: {channel: email}\n"
        "    expect: {team: billing}\n"
    )
    code, out, err = run(capsys, "check", str(tmp_path / "rules"))
    assert code == 1
    bad = f"{tmp_path}/rules/tests/bad.yaml"
    assert err.splitlines()[1:] == [
        f"{bad}:2:5: test case lacks `now:` (a fixed clock), here or at the top of the file",
        f"{bad}:7:12: input: Object contains unknown field `teir`",
        f"{bad}:8:14: unknown key 'teem' in expect (did you mean 'team'?)",
        f"{bad}:10:10: now '2025-03-04T10:00:00' needs a UTC offset (e.g. +08:00)",
    ]
    (tmp_path / "rules" / "tests" / "bad.yaml").write_text(
        "tests:\n  - name: typo\n    now: 2025-03-04T10:00:00+08:00\n    input: {channel: email, teir: vip}\n    expect: {team: x}\n"
    )
    code, out, err = run(capsys, "check", str(tmp_path / "rules"))
    assert err.splitlines()[1:] == [f"{bad}:4:12: input: Object contains unknown field `teir`"]


def test_check_against_a_directory_file(tmp_path, capsys):
    (tmp_path / "directory.yaml").write_text(
        "teams: {frontline: {title: Front line}}\n"
        "agents: [{id: a-lilei, name: 李雷, teams: [frontline]}]\n"
    )
    code, out, err = run(capsys, "check", str(RULES), "--directory", str(tmp_path / "directory.yaml"), "--no-tests")
    assert code == 1
    assert f"{RULES}/50-billing.yaml:9:11: undefined team 'billing'; defined: frontline" in err.splitlines()


# ---------------------------------------------------------------- test (dry run)


def test_dry_run_from_flags_prints_the_path_and_decision(capsys):
    code, out, err = run(
        capsys, "test", str(RULES), "--channel", "email", "--from", "a@b.cn", "--subject", "申请退款",
        "--attachments", "1", "--now", "2025-03-04T10:00:00+08:00",
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[:7] == [
        "route path:",
        "  root  (Everything not routed below goes to the front line)",
        "  └─ billing-refund  (Refund requests go to billing)",
        '        • subject contains "申请退款" (list refund_words)',
        "     └─ billing-refund-evidence  (Refunds with a receipt or screenshot need dispute handling)",
        "           • attachments = true",
        "decision:",
    ]
    assert "  team         billing" in out and "  skills       billing:2, disputes:1" in out


def test_dry_run_tree_marks_the_path(capsys):
    code, out, _ = run(capsys, "test", str(RULES), "--channel", "line", "--from", "U123", "--text", "hello",
                       "--now", "2025-03-04T10:00:00+08:00", "--tree")  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == "* root"
    assert "* └─ social  [channel in social_channels]" in lines
    assert "  ├─ billing-refund  [subject/text contains any of list refund_words]" in lines


def test_dry_run_json(capsys):
    code, out, _ = run(capsys, "test", str(RULES), "--channel", "email", "--from", "a@b.cn", "--subject", "重置密码",
                       "--language", "en", "--contact-name", "Ann", "--ticket-number", "1042",
                       "--now", "2025-03-04T10:00:00+08:00", "--json", "--tree")  # fmt: skip
    d = json.loads(out)
    assert d["path"] == ["root", "password-reset"]
    assert d["auto_reply"]["language"] == "en" and d["auto_reply"]["text"].startswith("Hello Ann,")
    assert "(ticket 1042)" in d["auto_reply"]["text"].replace("\n", " ")
    assert d["tree"].startswith("* root")


def test_dry_run_of_a_recorded_payload(tmp_path, capsys):
    # the generic API channel's body (CONTRACTS.md); synthetic, written here
    payload = tmp_path / "body.json"
    payload.write_text(json.dumps({"external_id": "m-1", "sender": {"kind": "whatsapp", "value": "+8613900000001"},
                                   "text": "忘记密码了", "sent_at": "2025-03-04T21:00:00+08:00"}))  # fmt: skip
    code, out, err = run(capsys, "test", str(RULES), "--file", str(payload), "--channel", "api", "--tier", "vip", "--json")
    assert code == 0, err
    d = json.loads(out)
    # the payload's sent_at is the clock: 21:00 is after hours; the contact flags apply
    assert d["path"] == ["root", "after-hours", "vip-tier"]
    assert d["team"] == "senior" and d["auto_reply"]["template"] == "opening_hours"


def test_dry_run_of_a_payload_the_parser_refuses(tmp_path, capsys):
    payload = tmp_path / "body.json"
    payload.write_text("{not json")
    code, _, err = run(capsys, "test", str(RULES), "--file", str(payload), "--channel", "api")
    assert code == 1 and err.startswith(f"omnigate rules test: {payload}: error: malformed JSON")


def test_dry_run_rejects_a_bad_value(capsys):
    code, _, err = run(capsys, "test", str(RULES), "--channel", "email", "--now", "yesterday")
    assert code == 2 and "now" in err


def test_dry_run_api_for_the_http_endpoint():
    tree = load(RULES)
    body = {"channel": "email", "from": "a@b.cn", "subject": "系统崩溃", "tree": True}
    answer = dry_run(tree, body, now=__import__("datetime").datetime.fromisoformat("2025-03-04T10:00:00+08:00"))
    assert answer["path"] == ["root", "outage"] and answer["priority"] == "urgent" and answer["webhooks"] == ["incident"]
    assert answer["matched"][1]["matched"] == ['subject contains "系统崩溃" (list outage_words)']
    assert "* ├─ outage" in answer["tree"]
    with pytest.raises(InputError) as info:
        dry_run(tree, {"channel": "email", "tier": 3, "now": "2025-03-04T10:00:00+08:00"})
    assert info.value.field == "$.tier"
    with pytest.raises(InputError) as info:
        dry_run(tree, {"channel": "email"})
    assert info.value.field == "$.now"
    with pytest.raises(InputError):
        dry_run(tree, ["not", "an", "object"])


# ---------------------------------------------------------------- diff


def _journal(data_dir: Path, bodies: list[dict]) -> None:
    from gateway.store.sqlite import SQLiteStore

    async def fill() -> None:
        store = SQLiteStore.in_dir(data_dir)
        try:
            for body in bodies:
                await store.journal_append("api", "api", body["external_id"], json.dumps(body).encode(), {})
        finally:
            await store.close()

    asyncio.run(fill())


@pytest.fixture
def restore_logging():
    """``rules diff`` configures structlog for a terminal (bound to this test's
    captured stderr, cached): put the defaults back for the tests after it."""
    import structlog

    yield
    structlog.reset_defaults()


def test_diff_replays_the_journal(tmp_path, capsys, monkeypatch, restore_logging):
    monkeypatch.chdir(tmp_path)
    candidate = tmp_path / "candidate"
    shutil.copytree(RULES, candidate)
    billing = candidate / "50-billing.yaml"
    billing.write_text(billing.read_text().replace("team: billing", "team: payments"))
    data = tmp_path / "data"
    data.mkdir()
    _journal(data, [
        {"external_id": "1", "sender": {"kind": "email", "value": "a@b.cn"}, "subject": "退款", "text": "请退款"},
        {"external_id": "2", "sender": {"kind": "email", "value": "c@d.cn"}, "subject": "refund", "text": "refund please"},
        {"external_id": "3", "sender": {"kind": "email", "value": "e@f.cn"}, "subject": "hello", "text": "hi"},
    ])  # fmt: skip
    capsys.readouterr()  # the store's own start-up log while filling the journal
    code, out, err = run(capsys, "diff", str(candidate), "--rules", str(RULES), "--data-dir", str(data), "--since", "2000-01-01")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("replayed 3 messages since 2000-01-01 00:00 +0800: 2 would be routed differently")
    assert lines[1] == "  team: billing → payments  × 2"
    assert len(lines) == 4 and all("team: billing → payments" in line for line in lines[2:])
    code, out, _ = run(capsys, "diff", str(candidate), "--rules", str(RULES), "--data-dir", str(data), "--since", "2000-01-01", "--json")
    report = json.loads(out)
    assert report["total"] == 3 and report["counts"] == {"team: billing → payments": 2} and report["skipped"] == []


def test_check_needs_only_the_directory_of_the_configuration(tmp_path, capsys):
    """The daemon's secrets live in its own environment: check reads directory: alone."""
    example = RULES.parent / "deploy" / "directory.example.yaml"
    (tmp_path / "omnigate.yaml").write_text(
        f"directory: {example}\nwechat:\n  accounts:\n    main: {{appid: wx1}}\n")  # token only in the daemon's env
    code, out, err = run(capsys, "check", str(RULES), "--no-tests")
    assert (code, err) == (0, "") and f"checked against {example}" in out
