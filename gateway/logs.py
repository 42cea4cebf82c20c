"""structlog set-up: key=value on a terminal, JSON otherwise.

``merge_contextvars`` comes first, so fields bound per request or per
message (``journal_id``, ``channel``) appear on every line logged while it
is handled. Message bodies and secrets are never logged at info level:
log ids, kinds and sizes, not text.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar

import msgspec
import structlog

#: (request id, path) of the HTTP request being handled. One ContextVar set
#: per request is far cheaper than structlog's clear+bind (which showed as
#: ~20 µs per request on the ingest path in ``omnigate bench``).
REQUEST: ContextVar[tuple[str, str] | None] = ContextVar("omnigate_request", default=None)


def add_request(logger: object, method: str, event: dict) -> dict:
    """Processor: the current request's id and path on every line logged for it."""
    current = REQUEST.get()
    if current is not None:
        event.setdefault("request_id", current[0])
        event.setdefault("path", current[1])
    return event


#: (whole second, its ISO text) of the last timestamp: most lines share it
_second: tuple[int, str] = (-1, "")


def add_timestamp(logger: object, method: str, event: dict) -> dict:
    """Processor: ``timestamp``, exactly as structlog's ``TimeStamper(fmt="iso",
    utc=True)`` writes it (``2026-01-05T10:00:00.123456Z``; no fraction on a
    whole second), the date and time formatted once per second — the
    per-message ``pipeline.done`` line spent more on its timestamp than on
    its JSON."""
    global _second
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    if _second[0] != seconds:
        _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)))
    event["timestamp"] = f"{_second[1]}.{micros:06d}Z" if micros else f"{_second[1]}Z"
    return event


#: this module's frame is not the caller the stack starts from
_stack_info = structlog.processors.StackInfoRenderer(additional_ignores=[__name__])


def render_extras(logger: object, method: str, event: dict) -> dict:
    """Processor: structlog's ``StackInfoRenderer`` and ``format_exc_info``,
    in that order, called only for a line that asks for them (both do
    nothing without their key): two fewer calls on every other line."""
    if "stack_info" in event:
        event = _stack_info(logger, method, event)
    if "exc_info" in event:
        event = structlog.processors.format_exc_info(logger, method, event)
    return event


_encoder = msgspec.json.Encoder(enc_hook=repr)


def _json(event: dict, **_: object) -> str:
    """One JSON line, UTF-8 kept as is (``ensure_ascii=False``); values JSON
    cannot carry are given as their ``repr``, as structlog's default does.
    msgspec renders the per-message ``pipeline.done`` line several times
    faster than ``json.dumps``."""
    return _encoder.encode(event).decode()


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "auto", stream: object | None = None) -> None:
    """Set up structlog; lines go to ``stream`` (default stderr)."""
    lvl = _LEVELS.get(level.lower(), logging.INFO)
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_json)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_request,
            structlog.processors.add_log_level,
            add_timestamp,
            render_extras,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # write + flush per line, as PrintLogger's print(..., flush=True) does, without print's own work
        logger_factory=structlog.WriteLoggerFactory(stream or sys.stderr),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    # aiohttp / asyncio speak stdlib logging; send warnings and up to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.server").addFilter(MALFORMED_REQUESTS)


class _MalformedRequests(logging.Filter):
    """aiohttp's server logs a request it cannot parse (a header line past
    8190 bytes, too many headers, a bad URL or chunk) at ERROR with a
    traceback — any client could fill the log with them. Such a request has
    had its 400 already: one info line naming the error's kind instead,
    without the bytes (a header line may be a credential)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from aiohttp.http_exceptions import HttpProcessingError

        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            structlog.get_logger("aiohttp.server").info("http.malformed_request", error=type(exc).__name__,
                                                         status=exc.code)
            return False
        return True


MALFORMED_REQUESTS = _MalformedRequests()
