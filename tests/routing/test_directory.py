"""The directory YAML: the shipped example loads, and mistakes fail with file, line and path."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from routing.directory import DirectoryError, calendar_from_text, parse_directory
from routing.sla import select_policy

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "directory.example.yaml"


def test_the_shipped_example_loads(cn_holidays_until_2026):
    d = parse_directory(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert set(d.calendars) == {"24x7", "cn-office", "cn-long-day", "berlin", "always"}
    assert {a.id for a in d.agent_models()} == {"a-lilei", "a-hanmeimei", "a-wang", "a-zhao", "a-chen", "a-anna"}
    match = select_policy(d.sla_policies, "high", None, "email")
    assert match is not None and match.policy.id == "high" and d.policy("high") is match.policy
    office = d.calendars[d.teams["billing"].calendar or ""]
    assert office.add_business_minutes(datetime(2026, 12, 31, 10, 0), 60).isoformat() == "2027-01-01T10:00:00+08:00"
    assert d.channel_classes["sms"] == "chat" and d.channel_classes["wechat"] == "chat"


VALID = """\
calendars:
  office:
    hours: {weekdays: [09:00-12:00, 13:30-18:00]}
teams:
  billing:
    calendar: office
agents:
  - id: a1
    name: One
    teams: [billing]
    skills: {billing: 3}
    capacity: {email: 20}
sla_policies:
  - id: standard
    calendar: office
    targets: {first_response: 2h}
"""


def test_valid_minimal_directory_and_empty_file():
    assert parse_directory(VALID).agents[0].capacity == {"email": 20}
    assert parse_directory("").agents == []


@pytest.mark.parametrize(
    "old, new, line, message",
    [
        (
            "    name: One",
            "    name: One\n    skils: {billing: 3}",
            10,
            "agents[0]: Object contains unknown field `skils`",
        ),
        (
            "    teams: [billing]",
            "    teams: [billing, sales]",
            10,
            "agents[0].teams[1]: undefined team 'sales' (defined: billing)",
        ),
        ("{billing: 3}", "{billing: three}", 11, "agents[0].skills: Expected `int`, got `str`"),
        ("{billing: 3}", "{billing: 0}", 8, "agents[0]: skill billing level must be 1 or more, got 0"),
        ("{email: 20}", "{emial: 20}", 12, "agents[0].capacity: undefined capacity class 'emial'"),
        (
            "    calendar: office\n    targets",
            "    calendar: ofice\n    targets",
            15,
            "sla_policies[0].calendar: undefined calendar 'ofice'",
        ),
        ("first_response: 2h", "first_response: 2 hours", 16, "sla_policies[0].targets: bad duration '2 hours'"),
        (
            "    calendar: office\nagents",
            "    calendar: nope\nagents",
            6,
            "teams.billing.calendar: undefined calendar 'nope'",
        ),
        (
            "[09:00-12:00, 13:30-18:00]",
            "[09:00-12:00, 11:30-18:00]",
            2,
            "calendars.office: hours 09:00-12:00 and 11:30-18:00 overlap",
        ),
        (
            "    hours:",
            "    timezone: Asia/Shanhai\n    hours:",
            2,
            "calendars.office: unknown time zone 'Asia/Shanhai'",
        ),
        ("{weekdays:", "{workdays:", 2, "calendars.office: unknown day 'workdays'"),
        (
            "  billing:\n    calendar",
            "  billing:\n    overflow: [{after: 5m, widen_to: [sales]}]\n    calendar",
            6,
            "teams.billing.overflow[0].widen_to: undefined team 'sales'",
        ),
        ("calendars:", "calender: {}\ncalendars:", 1, "Object contains unknown field `calender`"),
        (
            "  - id: standard",
            "  - id: standard\n    escalations: [{when: breach, actions: [{action: reassign_to_lead, team: x}]}]",
            15,
            "sla_policies[0].escalations[0]: undefined team 'x'",
        ),
    ],
)
def test_mistakes_fail_with_line_and_path(old, new, line, message):
    assert old in VALID
    with pytest.raises(DirectoryError) as err:
        parse_directory(VALID.replace(old, new, 1), "dir.yaml")
    assert err.value.line == line, str(err.value)
    assert str(err.value).startswith(f"dir.yaml:{line}: {message}")


def test_duplicate_ids():
    text = VALID + "  - id: standard\n    targets: {first_response: 1h}\n"
    with pytest.raises(DirectoryError, match=r"dir.yaml:17: sla_policies\[1\].id: duplicate policy id 'standard'"):
        parse_directory(text, "dir.yaml")


def test_yaml_syntax_error_has_a_line():
    with pytest.raises(DirectoryError, match="dir.yaml:3: not valid YAML"):
        parse_directory("agents:\n  - id: a\n   name: [", "dir.yaml")


def test_always_open_takes_no_hours():
    with pytest.raises(DirectoryError, match="always_open calendars take no hours"):
        parse_directory("calendars:\n  x: {always_open: true, hours: {daily: 00:00-24:00}}\n")


def test_calendar_from_text():
    assert calendar_from_text(VALID, "office").name == "office"
    assert calendar_from_text("", "24x7").always_open
    with pytest.raises(DirectoryError, match="undefined calendar 'nope'"):
        calendar_from_text(VALID, "nope", "dir.yaml")
