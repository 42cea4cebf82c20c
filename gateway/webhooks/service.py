"""Webhook delivery: fan-out, claims, signing, back-off, breaker, dead letters, retention.

Every round (:meth:`WebhookService.step`):

1. **fan-out** — new outbox events (every topic but ``reply.send``) are
   queued for each enabled endpoint whose filter takes them (an event naming
   a ``webhook`` — a rule's ``webhooks:`` action, a directory escalation —
   goes to that endpoint only), and the endpoint's cursor moves on;
2. **claim** — the head of each (endpoint, ticket) line that is due, on an
   endpoint that is enabled and not paused by its breaker, up to the free
   workers: a ticket's next event waits while an earlier one is pending or
   retrying, tickets and endpoints go concurrently;
3. **deliver** — a Standard Webhooks POST (``webhook-id`` = the event's id,
   stable across retries and replays; ``webhook-signature`` with every
   secret line), redirects not followed, SSRF-guarded, ``timeout``;
4. **settle** — 2xx: delivered (the row leaves the queue); 410: the endpoint
   is disabled (log, ``/readyz`` detail); anything else: retried after
   ``Retry-After`` or ``first_retry · 2^(n-1)`` (capped at ``max_delay``,
   jittered down to half) until ``retry_horizon``, then a dead letter, and
   the ticket's later events proceed. ``breaker_threshold`` consecutive
   failures pause the endpoint (its rows stay in SQLite, holding no worker
   and no memory) and then let one probe through at a time.

All times come from ``clock``; :meth:`run` is the daemon's loop,
:meth:`step` the same round awaited whole (tests drive it on a fake clock).
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import msgspec
import structlog
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from gateway.config import RetentionConfig, WebhooksConfig, parse_duration
from gateway.store.sqlite_webhooks import Claimed
from gateway.webhooks.ssrf import GuardedResolver, Refused, check_url, refusal_in
from gateway.clock import Clock, system_clock

log = structlog.get_logger(__name__)

_enc = msgspec.json.Encoder()
USER_AGENT = "omnigate-webhooks/1"
_FAR = datetime.max.replace(tzinfo=timezone.utc)
SHARED_RECHECK_S = 1.0  # several instances on one store: an idle instance claims again this often


def secret_lines(secret: str | None) -> list[str]:
    """The secret(s) of an endpoint: one per line (two during a rotation)."""
    return [s.strip() for s in (secret or "").splitlines() if s.strip()]


def sign(secrets: list[str], msg_id: str, at: datetime, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,…`` per secret, space-separated."""
    text = body.decode()
    return " ".join(Webhook(s).sign(msg_id, at, text) for s in secrets)


def event_body(topic: str, event_at_ms: int, payload: dict) -> bytes:
    """The JSON body (identical on every attempt of the event)."""
    at = datetime.fromtimestamp(event_at_ms / 1000, tz=timezone.utc)
    return _enc.encode({"type": topic, "timestamp": at.isoformat().replace("+00:00", "Z"), "data": payload})


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²" is a digit to isdigit(), not to float()
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - now).total_seconds())


class Attempt(msgspec.Struct):
    outcome: str  # delivered | failed | gone
    code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    latency_ms: int | None = None


class WebhookService:
    """Delivers the outbox's events to the configured and API-made endpoints."""

    def __init__(self, store: Any, config: WebhooksConfig, retention: RetentionConfig | None = None, *,
                 clock: Clock = system_clock, jitter: Callable[[], float] = random.random,
                 resolver: Any = None, poll_s: float = 0.05, prune_every_s: float = 3600.0,
                 registry: Any = None) -> None:
        self.store = store
        self.config = config
        self.retention = retention or RetentionConfig()
        self.clock = clock
        self.jitter = jitter
        self.workers = max(1, config.workers)
        self.first_s = parse_duration(config.first_retry)
        self.max_s = parse_duration(config.max_delay)
        self.horizon_s = parse_duration(config.retry_horizon)
        self.timeout_s = parse_duration(config.timeout)
        self.lease_s = self.timeout_s * 2 + 5  # longer than any attempt: a live holder keeps its row
        self.poll_s = poll_s
        self.prune_every_s = prune_every_s
        #: A store shared by several instances (Redis): another instance may fan out rows this one
        #: never hears of, or die holding leases that run out; so an idle instance claims again at
        #: least this often instead of sleeping until the next due time it knows of.
        self.recheck_s: float | None = SHARED_RECHECK_S if getattr(store, "backend", "sqlite") != "sqlite" else None
        #: several instances (gateway/ownership.py): one of them prunes per period
        self.claim_period: Callable[[str, float], Awaitable[bool]] | None = None
        self._resolver = resolver
        self.attempts_metric = None
        if registry is not None:
            from prometheus_client import Counter

            self.attempts_metric = Counter("omnigate_webhook_attempts", "Webhook delivery attempts settled, by "
                                           "outcome (delivered, retrying, dead, gone)", ["endpoint", "outcome"],
                                           registry=registry)
        self._secrets = {name: secret_lines(ep.secret) for name, ep in config.endpoints.items()}
        self._sessions: dict[bool, aiohttp.ClientSession] = {}
        self._endpoints: dict[str, dict] = {}
        self._seen_end = -1
        self._last_prune: datetime | None = None
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task] = set()
        self._busy: dict[asyncio.Task, str] = {}  # in-flight deliveries' endpoints
        self._dirty = True  # claim at the next round
        self._due: datetime | None = None  # the earliest due time, when the last claim found nothing
        #: endpoint name → ``async (endpoint, Claimed) -> Attempt``: endpoints delivered by something
        #: other than a signed POST (the help-desk sync, gateway/desks/), with the same queue,
        #: per-ticket order, back-off, Retry-After, breaker and dead letters
        self.targets: dict[str, Callable[[dict, Claimed], Any]] = {}

    # ------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Bring the configured endpoints into the store (a new one starts at
        the current end of the outbox), and take back leases of a previous run."""
        now = self.clock()
        for name, ep in self.config.endpoints.items():
            if not self._secrets[name]:
                raise ValueError(f"webhooks.endpoints.{name} has no secret: set secret_file or "
                                 f"OMNIGATE_WEBHOOKS__ENDPOINTS__{name.upper()}__SECRET")
            for s in self._secrets[name]:
                Webhook(s)  # a malformed secret fails at start, not at the first delivery
            fields: dict[str, Any] = {"url": ep.url, "events": list(ep.events), "allow_private": ep.allow_private,
                                      "description": ep.description}
            existing = await self.store.webhook_endpoint(name)
            if existing is None or not ep.enabled:
                fields["enabled"] = ep.enabled  # a 410 stays in force across restarts until re-enabled
            await self.store.webhook_upsert(name, fields, source="config", now=now)
        await self.store.webhook_release_leases(now)

    async def close(self) -> None:
        for t in list(self._inflight):
            t.cancel()
        await asyncio.gather(*self._inflight, return_exceptions=True)
        for s in self._sessions.values():
            await s.close()
        self._sessions.clear()

    def wake(self) -> None:
        """Endpoints or queues changed (API, replay): claim at the next round."""
        self._dirty = True
        self._wake.set()

    def _session(self, allow_private: bool) -> aiohttp.ClientSession:
        s = self._sessions.get(allow_private)
        if s is None or s.closed:
            resolver = None if allow_private else GuardedResolver(self._resolver)
            connector = aiohttp.TCPConnector(resolver=resolver, limit=self.workers * 2, ttl_dns_cache=60)
            s = self._sessions[allow_private] = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": USER_AGENT}, auto_decompress=False)
        return s

    def secrets_of(self, endpoint: dict) -> list[str]:
        return self._secrets.get(endpoint["name"]) or secret_lines(endpoint.get("secret"))

    # ------------------------------------------------------------ rounds

    async def step(self) -> int:
        """One whole round on the clock's now: fan out, claim, deliver (awaited),
        prune when due; how many attempts were made."""
        await self._fanout()
        await self._maybe_prune()
        items = await self._claim(self.workers)
        await asyncio.gather(*(self._deliver(i) for i in items))
        return len(items)

    async def next_due(self) -> datetime | None:
        return await self.store.webhook_next_due(self.clock())

    async def run(self) -> None:
        """Deliver until cancelled; a failing store is logged and retried."""
        while True:
            claimed = 0
            try:
                queued = await self._fanout()
                await self._maybe_prune()
                free = self.workers - len(self._inflight)
                # claim only when something may be due (a write): new events, a settled delivery,
                # or the earliest due time reached
                if free > 0 and (queued or self._dirty or self._due is None or self._due <= self.clock()):
                    self._dirty = False
                    items = await self._claim(free)
                    claimed = len(items)
                    if not claimed:
                        self._due = await self.store.webhook_next_due(self.clock()) or _FAR
                        if self.recheck_s is not None:  # a shared store: others queue and die too
                            self._due = min(self._due, self.clock() + timedelta(seconds=self.recheck_s))
                    for item in items:
                        task = asyncio.create_task(self._deliver(item))
                        self._inflight.add(task)
                        self._busy[task] = item.endpoint
                        task.add_done_callback(self._done)
            except Exception:  # noqa: BLE001 - the store is busy or down: next round
                log.exception("webhook.round_failed")
            if not claimed:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s)
                except TimeoutError:
                    pass

    def _done(self, task: asyncio.Task) -> None:
        self._inflight.discard(task)
        self._busy.pop(task, None)
        self._dirty = True
        self._wake.set()  # a worker is free, and the ticket's next event may be due

    async def _fanout(self) -> int:
        end = await self.store.webhook_outbox_end()
        if end == self._seen_end:
            return 0
        n = await self.store.webhook_fanout(self.clock())
        self._seen_end = end
        return n

    async def _claim(self, limit: int) -> list[Claimed]:
        self._endpoints = {e["name"]: e for e in await self.store.webhook_endpoints()}
        busy = frozenset(self._busy.values())
        items = await self.store.webhook_claim(limit, self.lease_s, self.clock(), self.config.breaker_threshold,
                                               busy)
        return items

    async def _maybe_prune(self) -> None:
        now = self.clock()
        if self._last_prune is not None and (now - self._last_prune).total_seconds() < self.prune_every_s:
            return
        self._last_prune = now
        if self.claim_period is not None and not await self.claim_period("webhooks:prune", self.prune_every_s):
            return  # another instance prunes this period
        await self.prune()

    async def prune(self) -> dict[str, int]:
        r = self.retention

        def secs(v: str | None) -> float | None:
            return parse_duration(v) if v else None

        pruned = await self.store.webhook_prune(
            self.clock(), outbox_s=secs(r.outbox), log_s=secs(r.delivery_log),
            log_max=self.config.delivery_log_max, journal_raw_s=secs(r.journal_raw))
        if any(pruned.values()):
            log.info("retention.pruned", **pruned)
        return pruned

    # ------------------------------------------------------------ one delivery

    async def post(self, endpoint: dict, event_id: str, body: bytes) -> Attempt:
        """One signed POST; never raises."""
        now = self.clock()
        try:
            check_url(endpoint["url"], endpoint["allow_private"])
        except (Refused, ValueError) as exc:
            return Attempt("failed", error=f"refused: {exc}")
        headers = {"content-type": "application/json", "webhook-id": event_id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": sign(self.secrets_of(endpoint), event_id, now, body)}
        t0 = time.perf_counter()
        try:
            async with self._session(endpoint["allow_private"]).post(
                    endpoint["url"], data=body, headers=headers, allow_redirects=False) as resp:
                await resp.content.read(4096)  # a little of the answer; the rest is not ours to buffer
                latency = int((time.perf_counter() - t0) * 1000)
                if 200 <= resp.status < 300:
                    return Attempt("delivered", code=resp.status, latency_ms=latency)
                if resp.status == 410:
                    return Attempt("gone", code=410, latency_ms=latency, error="410 Gone")
                why = f"HTTP {resp.status}"
                if 300 <= resp.status < 400:
                    why += " (redirects are not followed)"
                return Attempt("failed", code=resp.status, latency_ms=latency, error=why,
                               retry_after=parse_retry_after(resp.headers.get("Retry-After"), now))
        except asyncio.TimeoutError:
            return Attempt("failed", error=f"no answer within {self.timeout_s:g}s",
                           latency_ms=int((time.perf_counter() - t0) * 1000))
        except Exception as exc:  # noqa: BLE001 - connection refused, reset, DNS, SSRF
            refused = refusal_in(exc)
            if refused is not None:
                return Attempt("failed", error=f"refused: {refused}")
            return Attempt("failed", error=f"{type(exc).__name__}: {exc}"[:500])

    def delay_s(self, attempts: int, retry_after: float | None = None) -> float:
        """Back-off after ``attempts`` failed tries: the receiver's Retry-After
        when it gave one, else exponential with jitter (never more than ``max_delay``)."""
        if retry_after is not None:
            return min(retry_after, self.horizon_s)
        return min(self.max_s, self.first_s * 2 ** max(0, attempts - 1)) * (0.5 + 0.5 * self.jitter())

    async def _deliver(self, item: Claimed | None) -> None:
        """Deliver ``item``, then the ticket's next events while each is claimed with the settle."""
        while item is not None:
            item = await self._deliver_one(item)

    async def _deliver_one(self, item: Claimed) -> Claimed | None:
        endpoint = self._endpoints.get(item.endpoint)
        bound = log.bind(endpoint=item.endpoint, event_id=item.event_id, type=item.topic, attempt=item.attempts)
        if endpoint is None:
            return None
        target = self.targets.get(item.endpoint)
        if target is not None:
            try:
                result = await target(endpoint, item)
            except Exception as exc:  # noqa: BLE001 - a target's bug is a failed attempt, retried
                bound.exception("webhook.target_failed")
                result = Attempt("failed", error=f"{type(exc).__name__}: {exc}"[:500])
        else:
            body = event_body(item.topic, item.event_at, item.payload)
            result = await self.post(endpoint, item.event_id, body)
        now = self.clock()
        kw: dict[str, Any] = {"now": now, "code": result.code, "latency_ms": result.latency_ms, "error": result.error}
        try:
            if result.outcome == "delivered":
                ok = await self.store.webhook_settle(item, "delivered", chain_lease_s=self.lease_s, **kw)
                if ok:
                    bound.debug("webhook.delivered", status=result.code, latency_ms=result.latency_ms)
                    if self.attempts_metric is not None:
                        self.attempts_metric.labels(item.endpoint, "delivered").inc()
                if isinstance(ok, Claimed):
                    return ok
                if not ok:
                    bound.warning("webhook.lease_lost")
                return None
            elif result.outcome == "gone":
                reason = f"the receiver answered 410 Gone at {now.isoformat()}: re-enable it to resume"
                ok = await self.store.webhook_settle(item, "gone", disable_reason=reason, **kw)
                if ok:
                    bound.error("webhook.endpoint_disabled", reason=reason)
            else:
                failures = endpoint["failures"] + 1
                endpoint["failures"] = failures
                pause = None
                if failures >= self.config.breaker_threshold:
                    pause = now + timedelta(seconds=min(
                        self.max_s, self.first_s * 2 ** min(20, failures - self.config.breaker_threshold + 1)))
                age_s = (now.timestamp() * 1000 - item.created_at) / 1000
                if age_s >= self.horizon_s:
                    ok = await self.store.webhook_settle(item, "dead", pause_until=pause, **kw)
                    if ok:
                        bound.error("webhook.dead_letter", error=result.error, status=result.code)
                        if self.attempts_metric is not None:
                            self.attempts_metric.labels(item.endpoint, "dead").inc()
                    return None
                next_at = now + timedelta(seconds=self.delay_s(item.attempts, result.retry_after))
                ok = await self.store.webhook_settle(item, "retrying", next_at=next_at, pause_until=pause, **kw)
                if ok:
                    bound.warning("webhook.retrying", error=result.error, status=result.code,
                                  next_at=next_at.isoformat(), breaker_open=pause is not None)
            if not ok:
                bound.warning("webhook.lease_lost")
            elif self.attempts_metric is not None:
                outcome = result.outcome if result.outcome != "failed" else "retrying"
                self.attempts_metric.labels(item.endpoint, outcome).inc()
        except Exception:  # noqa: BLE001 - the row stays leased and is retried when the lease ends
            bound.exception("webhook.settle_failed")
        return None

    # ------------------------------------------------------------ readiness

    async def refresh(self) -> None:
        self._endpoints = {e["name"]: e for e in await self.store.webhook_endpoints()}

    def readiness(self) -> tuple[bool, dict]:
        """Always ready (a receiver's trouble is not ours), but a disabled endpoint is named."""
        disabled = {n: e.get("disabled_reason") or "disabled" for n, e in self._endpoints.items()
                    if not e["enabled"]}
        paused = sorted(n for n, e in self._endpoints.items() if e["enabled"] and e.get("paused_until"))
        return True, {"endpoints": len(self._endpoints), "disabled": disabled, "breaker_open": paused}


#: The app's webhook service (set by ``setup``).
SERVICE: web.AppKey[WebhookService] = web.AppKey("webhook_service")


def setup(app: web.Application, store: Any, config: Any, clock: Callable[[], datetime] | None = None) -> WebhookService:
    """Create the service, its routes and readiness part; the app runs it with
    :func:`service_ctx` in ``cleanup_ctx`` (after the store's, so it stops first)."""
    from gateway import keys
    from gateway.http_util import guarded_routes
    from gateway.webhooks import routes

    svc = WebhookService(store, config.webhooks, config.retention, clock=clock or system_clock,
                         registry=app[keys.METRICS].registry)
    app[SERVICE] = svc
    app.router.add_routes(guarded_routes(routes.routes))
    app[keys.READINESS]["webhooks"] = svc.readiness
    return svc


async def service_ctx(app: web.Application) -> AsyncIterator[None]:
    svc = app[SERVICE]
    await svc.start()
    await svc.refresh()
    task = None
    if svc.config.workers > 0:  # 0: this node keeps the queue and the API but sends nothing
        task = asyncio.create_task(svc.run(), name="omnigate-webhooks")
    else:
        log.warning("webhook.delivery_off", hint="webhooks.workers is 0: events queue up and are not sent")
    yield
    from gateway.tasks import cancel_and_wait

    await cancel_and_wait(task)  # again if its poll loop swallowed the cancellation
    await svc.close()
