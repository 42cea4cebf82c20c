"""How the Redis backend writes values: JSON text, milliseconds since the
epoch, and strings from redis-py's bytes; how a guarded program that
met a concurrent change is tried again, and how a script joins a pipeline
(one copy for every mixin)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import msgspec

from gateway.store.base import Conflict

T = TypeVar("T")

_enc = msgspec.json.Encoder()


def j(value: Any) -> str:
    """``value`` as JSON text."""
    return _enc.encode(value).decode()


def ms(d: datetime | None) -> int | None:
    """Milliseconds since the epoch (None stays None)."""
    return None if d is None else int(d.timestamp() * 1000)


def dt(value: Any) -> datetime | None:
    """An aware UTC datetime from stored milliseconds (None or empty: None)."""
    if value is None or value == b"" or value == "":
        return None
    return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)


def s(value: Any) -> str | None:
    """A stored value as text (None stays None)."""
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


async def retry_conflicts(attempt: Callable[[], Awaitable[T]], tries: int, what: str) -> T:
    """``attempt()`` again while its guards find ``what`` changed by another
    writer (:class:`Conflict`), at most ``tries`` times; then Conflict."""
    for _ in range(tries):
        try:
            return await attempt()
        except Conflict:
            continue
    raise Conflict(f"{what} kept changing; try again")


def evalsha(pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
    """``script`` (a registered redis-py Script) queued on ``pipe`` as a bare
    ``EVALSHA`` — sent through ``RedisStore._pipelined``, which loads the
    scripts again when Redis forgot them."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)
