"""structlog set-up: key=value on a terminal, JSON otherwise.

``merge_contextvars`` comes first, so fields bound per request or per
message (``journal_id``, ``channel``) appear on every line logged while it
is handled. Message bodies and secrets are never logged at info level:
log ids, kinds and sizes, not text.
"""

from __future__ import annotations

import logging
import sys
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
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    # aiohttp / asyncio speak stdlib logging; send warnings and up to stderr.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
