"""``omnigate calendar``: business-hours due times and a year's closed days.

``omnigate calendar due CAL START MINUTES`` prints, as ISO 8601 with the
calendar's offset, when MINUTES business minutes (or ``2h``, ``1h30m``) from
START (local ``YYYY-MM-DD HH:MM``) run out. ``omnigate calendar show CAL
--year 2026`` lists the year's closed days (holidays with their names) and
make-up workdays. CAL is ``--calendar NAME`` from the directory YAML
(``--config``, default ``./directory.yaml``; ``24x7`` needs no file) or an
ad-hoc calendar: ``--hours 09:00-12:00,13:30-18:00`` (Monday to Friday)
``--holidays CN|none --tz Asia/Shanghai``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from importlib.metadata import version
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from routing.calendar import BusinessCalendar

DEFAULT_CONFIG = "directory.yaml"


def _calendar_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    which = common.add_mutually_exclusive_group(required=True)
    which.add_argument("--calendar", metavar="NAME", help="a calendar of the directory YAML")
    which.add_argument("--hours", metavar="RANGES", help="ad hoc: Monday-Friday hours, e.g. 09:00-12:00,13:30-18:00")
    common.add_argument("--config", metavar="FILE", help=f"the directory YAML (default ./{DEFAULT_CONFIG})")
    common.add_argument("--holidays", choices=("CN", "none"), default="CN", help="with --hours: holiday source")
    common.add_argument("--tz", default=None, help="with --hours: IANA time zone (default Asia/Shanghai)")
    return common


def _parser(prog: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="action", required=True)
    common = _calendar_options()
    due = sub.add_parser("due", parents=[common], help="when MINUTES business minutes from START run out")
    due.add_argument("start", metavar="START", help="local time, YYYY-MM-DD HH:MM")
    due.add_argument("minutes", metavar="MINUTES", help="business minutes (90) or a duration (2h, 1h30m)")
    show = sub.add_parser("show", parents=[common], help="a year's closed days and make-up workdays")
    show.add_argument("--year", type=int, required=True)
    return ap


def _load_calendar(args: argparse.Namespace) -> BusinessCalendar:
    """The calendar the options name; raises CalendarError / DirectoryError / OSError."""
    from routing.calendar import DEFAULT_TIMEZONE, BusinessCalendar, CalendarConfig

    if args.hours is not None:
        if args.config:
            raise ValueError("--config goes with --calendar, not --hours")
        cfg = CalendarConfig(
            timezone=args.tz or DEFAULT_TIMEZONE, hours={"weekdays": args.hours}, holidays=args.holidays
        )
        return BusinessCalendar.from_config("ad hoc", cfg)
    from routing.directory import BUILTIN_24X7, calendar_from_text

    if args.calendar == BUILTIN_24X7 and not args.config:
        return BusinessCalendar.twenty_four_seven()
    path = args.config or DEFAULT_CONFIG
    with open(path, encoding="utf-8") as fh:
        return calendar_from_text(fh.read(), args.calendar, path)


def _minutes(text: str) -> int:
    from routing.calendar import parse_duration_minutes

    return int(text) if text.isdigit() else parse_duration_minutes(text)


def _due(cal: BusinessCalendar, args: argparse.Namespace) -> None:
    try:
        start = datetime.strptime(args.start, "%Y-%m-%d %H:%M")
    except ValueError:
        start = datetime.fromisoformat(args.start)  # an ISO 8601 time with offset is fine too
    print(cal.add_business_minutes(start, _minutes(args.minutes)).isoformat())


def _show(cal: BusinessCalendar, year: int) -> None:
    from routing.calendar import CN_FIRST_YEAR, CN_LAST_YEAR

    print(cal.describe())
    if cal.holidays == "CN":
        if cal.covers(year):
            source = (
                "entered by hand" if year in cal.arranged_years else f"chinesecalendar {version('chinesecalendar')}"
            )
            print(f"{year}: holidays and make-up workdays from {source}")
        else:
            print(f"{year}: not covered (chinesecalendar knows {CN_FIRST_YEAR}-{CN_LAST_YEAR}): weekly hours only")
    for title, notes in (("closed days", cal.closed_days(year)), ("make-up workdays", cal.makeup_workdays(year))):
        print(f"{title} ({len(notes)}):")
        for n in notes:
            name = " ".join(x for x in (n.name, n.name_zh) if x)
            print(f"  {n.date.isoformat()} {n.weekday}  {n.source:<6}  {name}".rstrip())


def main(argv: list[str], prog: str = "omnigate calendar") -> int:
    args = _parser(prog).parse_args(argv)
    try:
        cal = _load_calendar(args)
        if args.action == "due":
            _due(cal, args)
        else:
            _show(cal, args.year)
    except (OSError, ValueError) as exc:  # CalendarError and DirectoryError are ValueErrors
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    return 0
