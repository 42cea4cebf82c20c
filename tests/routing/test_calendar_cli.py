"""``omnigate calendar due|show``: run ``main([...])`` and read what it prints."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from gateway.commands.calendar import main

EXAMPLE = str(Path(__file__).resolve().parents[2] / "deploy" / "directory.example.yaml")
ADHOC = ["--hours", "09:00-18:00", "--holidays", "CN", "--tz", "Asia/Shanghai"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv, printed",
    [
        ([*ADHOC, "2025-09-30 17:00", "120"], "2025-10-09T10:00:00+08:00"),
        ([*ADHOC, "2025-09-26 17:55", "480"], "2025-09-28T16:55:00+08:00"),
        ([*ADHOC, "2026-02-14 17:30", "1h"], "2026-02-24T09:30:00+08:00"),
        (["--hours", "09:00-12:00,13:30-18:00", "2025-11-14 17:00", "8h"], "2025-11-17T17:30:00+08:00"),
        (
            ["--hours", "09:00-17:00", "--holidays", "none", "--tz", "Europe/Berlin", "2025-03-28 16:00", "120"],
            "2025-03-31T10:00:00+02:00",
        ),
        (["--calendar", "cn-office", "--config", EXAMPLE, "2026-02-13 17:00", "8h"], "2026-02-14T17:30:00+08:00"),
        (["--calendar", "always", "--config", EXAMPLE, "2026-02-15 23:30", "60"], "2026-02-16T00:30:00+08:00"),
        (["--calendar", "24x7", "2026-02-15 23:30", "90"], "2026-02-16T01:00:00+08:00"),
        ([*ADHOC, "2025-09-30T09:30:00+00:00", "60"], "2025-10-09T09:30:00+08:00"),
    ],
)
def test_due(capsys, argv, printed):
    assert run(capsys, "due", *argv) == (0, printed + "\n", "")


def test_show_2026_lists_closed_days_with_names_and_makeup_workdays(capsys):
    code, out, _ = run(capsys, "show", "--calendar", "cn-office", "--config", EXAMPLE, "--year", "2026")
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == f"2026: holidays and make-up workdays from chinesecalendar {version('chinesecalendar')}"
    closed = lines[lines.index("closed days (34):") + 1 : lines.index("make-up workdays (6):")]
    assert "  2026-02-15 sun  CN      Spring Festival 春节" in closed
    assert "  2026-10-01 thu  CN      National Day 国庆节" in closed
    assert "  2026-12-31 thu  custom  year-end stocktake" in closed
    makeup = lines[lines.index("make-up workdays (6):") + 1 :]
    assert makeup[1:3] == [
        "  2026-02-14 sat  CN      Spring Festival 春节",
        "  2026-02-28 sat  CN      Spring Festival 春节",
    ]


def test_show_an_uncovered_year_says_it_falls_back(capsys, cn_holidays_until_2026):
    code, out, _ = run(capsys, "show", *ADHOC, "--year", "2027")
    assert code == 0
    assert "2027: not covered (chinesecalendar knows 2004-2026): weekly hours only" in out
    assert "closed days (0):" in out


@pytest.mark.parametrize(
    "argv, error",
    [
        (["due", "--calendar", "nope", "--config", EXAMPLE, "2026-02-13 17:00", "60"], "undefined calendar 'nope'"),
        (["due", "--hours", "9-18", "2026-02-13 17:00", "60"], "bad hours '9-18'"),
        (["due", *ADHOC, "2026-02-13 17:00", "soon"], "bad duration 'soon'"),
        (["due", *ADHOC, "Friday", "60"], "Invalid isoformat string"),
        (
            ["due", "--calendar", "x", "--config", "/nonexistent/directory.yaml", "2026-02-13 17:00", "60"],
            "No such file",
        ),
    ],
)
def test_errors_exit_1_with_a_reason(capsys, argv, error):
    code, out, err = run(capsys, *argv)
    assert (code, out) == (1, "") and err.startswith("omnigate calendar: error: ") and error in err


def test_calendar_or_hours_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["due", "2026-02-13 17:00", "60"])
    assert exc.value.code == 2
    assert "one of the arguments --calendar --hours is required" in capsys.readouterr().err
