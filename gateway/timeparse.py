"""Times given by people on the command line and in queries.

``--since`` takes ISO 8601 (``2026-11-20T08:00:00+08:00``, a date
``2026-11-20``, or a naive time read in the configured time zone) or a
duration back from now (``90m``, ``2h``, ``7d``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from gateway.config import ConfigError, parse_duration


def parse_time(text: str, tz: str = "Asia/Shanghai", now: datetime | None = None) -> datetime:
    s = text.strip()
    try:
        seconds = parse_duration(s)
    except ConfigError:
        seconds = None
    if seconds is not None and not s.replace(".", "").isdigit():
        try:
            return (now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)
        except (OverflowError, ValueError):
            raise ValueError(f"{text!r} reaches back before the year 1") from None
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time nor a duration like 2h or 7d") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=ZoneInfo(tz))
    return dt
