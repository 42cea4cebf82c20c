"""Typed keys of the aiohttp application's state (``app[keys.STORE]``)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from aiohttp import web

if TYPE_CHECKING:
    from gateway.admission import Load
    from gateway.config import Config
    from gateway.ingest import Ingest
    from gateway.metrics import Metrics
    from gateway.store.sqlite import SQLiteStore
    from gateway.worker import Worker

CONFIG: web.AppKey["Config"] = web.AppKey("config")
#: the daemon's one clock (gateway.clock): aware UTC ``datetime`` now
CLOCK: web.AppKey[Callable[[], datetime]] = web.AppKey("clock")
STORE: web.AppKey["SQLiteStore"] = web.AppKey("store")
METRICS: web.AppKey["Metrics"] = web.AppKey("metrics")
WORKER: web.AppKey["Worker"] = web.AppKey("worker")
INGEST: web.AppKey["Ingest"] = web.AppKey("ingest")
#: gateway/admission.py: backlog estimate, optional backlog limit, fair-share gate
LOAD: web.AppKey["Load"] = web.AppKey("load")
#: the hot-reloaded routing tree (gateway.rules_runtime.RulesRuntime), or None
RULES: web.AppKey[Any] = web.AppKey("rules")
#: agents, teams, SLA policies and calendars (routing.directory.Directory), or None
DIRECTORY: web.AppKey[Any] = web.AppKey("directory")
#: runs connector loops with back-off (gateway.supervisor.Supervisor)
SUPERVISOR: web.AppKey[Any] = web.AppKey("supervisor")
#: channel → running connector instance
CONNECTORS: web.AppKey[dict[str, Any]] = web.AppKey("connectors")
#: name → zero-argument callable returning (ok: bool, detail: dict), for /readyz
READINESS: web.AppKey[dict[str, Any]] = web.AppKey("readiness")
