"""The application factory: wires store, pipeline, connectors and HTTP.

``create_app(config)`` builds everything that routes need synchronously (the
store, the ingest path, each configured connector and its routes); the
long-lived parts start and stop in ``app.cleanup_ctx`` in order — the store
is closed last, after the worker and the connectors have stopped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import structlog
from aiohttp import web

from connectors.registry import RegistryError, connector_class, validate_all
from gateway import api, api_tickets, assignment, auth, fast_refusal, keys, outbox, participants, replies
from gateway.clock import Clock, system_clock
from gateway.config import Config, parse_duration
from gateway.http_util import add_not_found, guarded_routes, json_response
from gateway.ingest import ChannelContext, Ingest
from gateway.metrics import Metrics
from gateway.store.sqlite import SQLiteStore
from gateway.supervisor import Supervisor
from gateway.worker import Pipeline, Worker
from routing.pipeline import Settings
from routing.threads import compile_ref_patterns

log = structlog.get_logger(__name__)

_ACCOUNT_SECTIONS = ("accounts", "bots", "mailboxes", "numbers", "pages", "sites")


class StartupError(Exception):
    """The daemon cannot start as configured; the message says why."""


def pipeline_settings(config: Config) -> Settings:
    return Settings(
        region=config.default_region,
        near_window_s=parse_duration(config.dedupe.near_window),
        reopen_window_s=config.reopen_window_s,
        ref_patterns=compile_ref_patterns(config.threading.ref_patterns),
        ref_requires_same_contact=config.threading.ref_requires_same_contact,
        cross_channel=config.threading.cross_channel,
    )


def account_secrets(section: Mapping[str, Any], account: str) -> dict:
    """The configuration of one account of a channel section, found by its
    name or by one of its identifying values (appid, corp_id, bot name…)."""
    for key in _ACCOUNT_SECTIONS:
        accounts = section.get(key)
        if not isinstance(accounts, dict):
            continue
        if isinstance(accounts.get(account), dict):
            return dict(accounts[account])
        for value in accounts.values():
            if isinstance(value, dict) and account in (str(v) for v in value.values() if isinstance(v, (str, int))):
                return dict(value)
    return {}


def context_factory(config: Config):
    """``(channel, account, journal meta) → parse context`` for the pipeline:
    the same shape ``omnigate parse --context`` takes."""

    def context_for(channel: str, account: str, meta: Mapping[str, Any]) -> dict:
        ctx = {"timezone": config.timezone, "default_region": config.default_region}
        ctx.update(account_secrets(config.channels.get(channel, {}), account))
        ctx.update(meta)
        ctx["account"], ctx["channel"] = account, channel
        return ctx

    return context_for


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    detail: dict[str, Any] = {}
    ok = True
    try:
        counts = await asyncio.wait_for(request.app[keys.STORE].journal_counts(), timeout=2)
        detail["store"] = {"ok": True, "backend": getattr(request.app[keys.STORE], "backend", "sqlite"),
                           "journal": counts}
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        ok = False
        detail["store"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    for name, check in request.app[keys.READINESS].items():
        try:
            part_ok, part = check()
        except Exception as exc:  # noqa: BLE001
            part_ok, part = False, {"error": f"{type(exc).__name__}: {exc}"}
        ok = ok and part_ok
        detail[name] = {"ok": part_ok, **part}
    return json_response({"status": "ready" if ok else "not ready", "detail": detail}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[keys.METRICS].render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def load_directory(config: Config):
    """The agents/teams/SLA/calendars YAML named by ``directory``, checked."""
    if not config.directory:
        return None
    from routing.directory import DirectoryError, parse_directory

    try:
        text = Path(config.directory).read_text(encoding="utf-8")
    except OSError as exc:
        raise StartupError(f"directory: cannot read {config.directory}: {exc.strerror or exc}") from None
    try:
        return parse_directory(text, config.directory)
    except DirectoryError as exc:
        raise StartupError(str(exc)) from None


def load_rules(config: Config, directory: Any, clock: Clock = system_clock):
    """The routing tree from ``rules_dir``, checked against the directory's
    teams, agents and calendars. No such folder: messages are not routed (and
    the start-up log says so). A tree with errors refuses the start: there is
    no last good tree yet."""
    rules_dir = config.rules_dir
    if not rules_dir or not Path(rules_dir).is_dir():
        log.warning("rules.none", rules_dir=rules_dir, hint="no rules folder: tickets are not routed")
        return None
    from gateway.rules_runtime import RulesRuntime
    from routing.rules import KnownNames

    known = None
    calendars = None
    if directory is not None:
        known = KnownNames(teams=frozenset(directory.teams), agents=frozenset(a.id for a in directory.agents),
                           skills=frozenset(s for a in directory.agents for s in a.skills))
        calendars = directory.calendars
    runtime = RulesRuntime(rules_dir, known=known, calendars=calendars, clock=lambda: clock().timestamp())
    if not runtime.reload("start"):
        errors = runtime.status().get("errors") or []
        raise StartupError(f"rules in {rules_dir} have errors:\n" + "\n".join(map(str, errors)))
    return runtime


def _auto_replier(store: SQLiteStore, email_config: Mapping[str, Any] | None = None):
    """A rule's auto-reply goes out like an agent's reply: a ``message_out``
    entry (auto, author "system") and a ``reply.send`` outbox row, sent by
    the dispatcher through the ticket's channel — for email only to the
    envelope sender, paced per address and globally (gateway/autoreply.py)."""
    from gateway import autoreply
    from gateway.store.sqlite_replies import AutoReplyLimits

    window, budget = autoreply.limits_from(email_config or {})
    limits = AutoReplyLimits(window_s=window, global_per_hour=budget)

    async def send(ticket_id: str, reply: Any, inbound: Any) -> None:
        v = autoreply.verdict(inbound)
        if not v.send:
            log.info("pipeline.auto_reply_suppressed", ticket_id=ticket_id, template=reply.template, why=v.why)
            return
        entry = await store.auto_reply(ticket_id, reply.text, subject=reply.subject, in_reply_to_auto=inbound.auto,
                                       to=v.to, limits=limits if v.to is not None else None)
        if entry is None:
            log.info("pipeline.auto_reply_suppressed", ticket_id=ticket_id, template=reply.template,
                     why="paced: this address had one within the window, or the hourly budget is spent")
            return
        log.info("pipeline.auto_reply", ticket_id=ticket_id, template=reply.template, timeline_id=entry.id)

    return send


def create_app(config: Config, *, store: SQLiteStore | None = None, clock: Clock | None = None) -> web.Application:
    """The daemon. ``clock`` (aware UTC ``datetime``; default the real time)
    is the one clock every time-dependent part reads (gateway/clock.py); a
    ``store`` given here should have been built with the same clock."""
    clock = clock or system_clock
    errors = validate_all(sorted(set(config.channels) | {"api"}))
    if errors:
        raise StartupError("connector registry: " + "; ".join(errors))
    app = web.Application(client_max_size=config.max_body_bytes)
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if store is None:  # Redis with redis_url (several instances, one state), else SQLite in data_dir
        from gateway.store.factory import open_store

        store = open_store(config, clock=clock)
    m = Metrics()
    m.register_collector(m.journal_families)
    m.register_collector(m.ingest_families)
    app[keys.CONFIG] = config
    app[keys.CLOCK] = clock
    app[keys.STORE] = store
    app[keys.METRICS] = m
    app[keys.READINESS] = {}
    from gateway.readiness import disk_check

    app[keys.READINESS]["disk"] = disk_check(data_dir)  # a full disk: not ready (gateway/readiness.py)
    connectors: dict[str, Any] = {}
    app[keys.CONNECTORS] = connectors
    app[keys.DIRECTORY] = directory = load_directory(config)
    app[keys.RULES] = rules = load_rules(config, directory, clock)
    settings = pipeline_settings(config)
    settings.rules = rules
    from gateway.store.redis_attachments import attachments_for

    attachments = attachments_for(config, store, data_dir / "attachments")  # with Redis: shared by every instance
    pipeline = Pipeline(store, settings, attachments=attachments,
                        metrics=m, context_for=context_factory(config), media_fetchers=connectors,
                        max_conflict_retries=config.pipeline.max_conflict_retries,
                        auto_replier=_auto_replier(store, config.channels.get("email")), clock=clock)
    assignment.setup(app, pipeline)
    auth.setup(app, clock=clock)  # tokens, roles, rate limits of /api/v1
    from gateway import console

    console.setup(app, pipeline)  # the agent console at /console (gateway/console/)
    worker = Worker(pipeline, concurrency=config.pipeline.workers)
    app[keys.WORKER] = worker
    from gateway.admission import Load

    app[keys.LOAD] = load = Load(store, config, worker)  # backlog estimate and limit, the fair-share gate
    ingest = Ingest(store, m, worker.wake, backlog=load.backlog, gate=load.gate if load.gate.enabled else None)
    app[keys.INGEST] = ingest
    app[keys.SUPERVISOR] = supervisor = Supervisor()
    from gateway.ownership import OWNERSHIP, ownership_for

    # one owner at a time across instances (Redis: a lease per name) for pollers and the scheduler
    ownership = app[OWNERSHIP] = ownership_for(store, getattr(store, "consumer", "local"),
                                               ttl_s=config.store.redis_lease_s)
    app[keys.READINESS]["leases"] = lambda: (True, {"holder": getattr(ownership, "holder", "local"),
                                                    "leases": ownership.states()})
    from gateway import shared

    # limits and access tokens shared by instances on Redis; in-process on SQLite (gateway/shared.py)
    def limiter(name: str, rate_per_s: float, burst: int) -> Any:
        return shared.limiter_for(store, name, rate_per_s, burst, wall_clock=lambda: clock().timestamp())

    token_store = shared.token_store_for(store)
    app[shared.RULES_SYNC] = shared.rules_sync_for(store)

    for channel in sorted(config.channels):
        try:
            cls = connector_class(channel)
        except RegistryError as exc:
            raise StartupError(str(exc)) from None
        if cls is None:
            continue
        ctx = ChannelContext(channel, config.channels[channel], str(data_dir), ingest, store, supervisor, clock=clock)
        ctx.trusted_proxies = tuple(config.trusted_proxies)  # the client IP behind a proxy (webchat's limits)
        ctx.public_url = config.public_url  # the gateway's outside address (signed URLs)
        ctx.ownership = ownership
        ctx.limiter = limiter
        ctx.token_store = token_store
        ctx.attachments = attachments  # with Redis: webchat files shared by every instance
        ctx.redis_store = store if getattr(store, "backend", None) == "redis" else None  # webchat's shared state
        try:
            conn = cls(ctx)
        except Exception as exc:
            raise StartupError(f"{channel}: {exc}") from None
        connectors[channel] = conn
        app.router.add_routes(guarded_routes(conn.routes()))

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_routes(guarded_routes(api.routes))
    app.router.add_routes(guarded_routes(replies.routes))
    app.router.add_routes(guarded_routes(api_tickets.routes))
    app.router.add_routes(guarded_routes(participants.routes))
    from gateway import live

    live.setup(app, pipeline)  # webchat's live hub: presence, ticket events, the agent socket
    app.router.add_routes(guarded_routes(live.routes))

    from collections import ChainMap

    from gateway.webhooks import service as webhooks
    from gateway.webhooks.api_reply import ApiReplySender

    hooks = webhooks.setup(app, store, config, clock)  # deliveries, /api/v1/webhooks, /readyz detail
    hooks.claim_period = ownership.claim_period  # retention pruning: one instance per period
    from gateway.desks import service as desks

    desks.setup(app, store, config, hooks, clock)  # help-desk sync: desk:<name> targets, /channels/desks/<name>
    senders = ChainMap(connectors, {"api": ApiReplySender(hooks, config.channels.get("api", {}))})
    app[outbox.DISPATCHER] = outbox.Dispatcher(store, senders, attachments, metrics=m, clock=clock)

    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(assignment.cleanup_ctx)  # the directory is in the store before the worker runs
    app.cleanup_ctx.append(_worker_ctx)
    app.cleanup_ctx.append(_connectors_ctx)
    app.cleanup_ctx.append(outbox.dispatcher_ctx)  # after the connectors: it stops before they close
    app.cleanup_ctx.append(desks.sync_ctx)  # registers the desks' endpoints before the webhook service claims
    app.cleanup_ctx.append(webhooks.service_ctx)
    app.cleanup_ctx.append(_gauges_ctx)
    from gateway import holidaycheck

    holidaycheck.setup(app, directory, rules, m.registry)  # warn when a calendar lacks holiday data
    if rules is not None:
        app[keys.READINESS]["rules"] = rules.readiness
        m.registry.register(rules.collector())
        app.cleanup_ctx.append(_rules_ctx)
    else:  # /readyz names the rules either way (CONTRACTS.md); routing is optional, so still ready
        app[keys.READINESS]["rules"] = lambda: (True, {"loaded": False, "dir": config.rules_dir,
                                                      "hint": "no rules folder: tickets are not routed"})
    from gateway import fanout

    fanout.setup(app)  # with Redis: the live buses reach every instance (after the store's ctx: it stops first)
    add_not_found(app)  # last: unknown routes answer problem+json
    fast_refusal.install(app)  # shed API intakes answered as parsed, before aiohttp builds a request
    return app


async def _rules_ctx(app: web.Application) -> AsyncIterator[None]:
    """Hot reload: poll the rules folder, and reload on SIGHUP."""
    from gateway.shared import RULES_SYNC

    rules = app[keys.RULES]
    sync = app[RULES_SYNC]  # a reload asked of one instance reaches every instance (Redis)
    tasks = [asyncio.create_task(rules.run(), name="omnigate-rules-reload")]
    if sync.shared:
        tasks.append(asyncio.create_task(sync.watch(rules.request_reload), name="omnigate-rules-sync"))

    def on_sighup() -> None:
        rules.request_reload()
        if sync.shared:
            tasks.append(asyncio.create_task(sync.announce()))

    try:
        rules.install_sighup(handler=on_sighup)
    except (NotImplementedError, RuntimeError):  # not the main thread (tests), or no signals here
        pass
    yield
    try:
        rules.remove_sighup()
    except (NotImplementedError, RuntimeError, ValueError):
        pass
    from gateway.tasks import cancel_and_wait

    await cancel_and_wait(*tasks)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[keys.STORE].close()


async def _worker_ctx(app: web.Application) -> AsyncIterator[None]:
    worker = app[keys.WORKER]
    await app[keys.LOAD].start()
    if app[keys.CONFIG].pipeline.workers > 0:  # 0: an ingest-only node
        await worker.start()
    yield
    await app[keys.LOAD].stop()
    await worker.stop()


async def _connectors_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run each connector's long-lived part under the one Supervisor
    (back-off, re-authentication, state for /readyz)."""
    import msgspec

    supervisor = app[keys.SUPERVISOR]

    from connectors.registry import manifests
    from gateway.supervisor import WEBHOOK_READY

    def readiness() -> tuple[bool, dict]:  # the api channel has no task: POSTs are all it takes
        return supervisor.ready(), {"tasks": {"api": {"status": WEBHOOK_READY},
                                              **msgspec.to_builtins(supervisor.states())}}

    app[keys.READINESS]["connectors"] = readiness
    tasks = {channel: conn.run for channel, conn in app[keys.CONNECTORS].items()}
    supervisor.webhook_tasks = frozenset(
        ch for ch in tasks if ch in manifests() and manifests()[ch].transport == "webhook")
    runner = asyncio.create_task(supervisor.run(tasks), name="omnigate-connectors")
    yield
    from gateway.tasks import cancel_and_wait

    await cancel_and_wait(runner)  # again if a connector's loop swallowed the cancellation
    for channel, conn in app[keys.CONNECTORS].items():
        try:
            await conn.close()
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.exception("connector.close_failed", channel=channel)


async def _gauges_ctx(app: web.Application) -> AsyncIterator[None]:
    """Refresh the journal gauges every few seconds (not per scrape: a scrape
    must stay cheap even with a large journal)."""

    async def loop() -> None:
        while True:
            try:
                app[keys.METRICS].set_journal_counts(await app[keys.STORE].journal_counts())
            except Exception:  # noqa: BLE001 - next round
                log.warning("metrics.journal_counts_failed")
            await asyncio.sleep(5)

    from gateway.tasks import cancel_and_wait

    task = asyncio.create_task(loop())
    yield
    await cancel_and_wait(task)


