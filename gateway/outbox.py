"""The reply dispatcher: sends the outbox's ``reply.send`` rows through the
channel's running connector.

Replies are durable before anyone tries to send them (the outbox row is
written with the reply), so a restart sends whatever is still pending. The
dispatcher claims due rows with a lease (two dispatchers never send the same
row; one that died is replaced when its lease runs out), calls
``connector.send(outbound)`` and settles the attempt in one transaction:

- delivered → ``data.delivery = {"status": "sent", "external_id", "at"}``
  and, for a mail, its Message-ID as a thread ref of the ticket;
- ``SendError(retryable=True)`` → ``"retrying"`` with the attempts and the
  next try, after the platform's ``retry_after`` or a capped exponential
  back-off with jitter; given up after ``max_attempts``;
- anything else → ``"failed"`` with the reason the platform gave.

Outbox rows of other topics (webhook events) are never claimed here.
"""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Callable, Mapping

import msgspec
import structlog
from aiohttp import web

from connectors.base import SendError, SendResult
from gateway import crashpoints
from gateway.attachments import AttachmentStore
from gateway.store.base import REPLY_TOPIC, Delivery, OutboxItem, Store
from routing.model import Outbound, utcnow

log = structlog.get_logger(__name__)


def backoff_s(attempts: int, *, base_s: float, max_s: float, retry_after: float | None = None,
              jitter: Callable[[], float] = random.random) -> float:
    """Seconds until the next try after ``attempts`` failed ones: the
    platform's ``retry_after`` when it gave one (it knows best, and asking
    sooner only earns another refusal), else ``base_s · 2^(attempts-1)``
    capped at ``max_s``, spread by up to +10% so retries do not stampede."""
    if retry_after is not None and retry_after >= 0:
        return retry_after
    delay = min(max_s, base_s * 2 ** max(0, attempts - 1))
    return delay * (1 + 0.1 * jitter())


class Dispatcher:
    """Claims, sends and settles ``reply.send`` rows; :meth:`run` loops."""

    def __init__(self, store: Store, connectors: Mapping[str, Any], attachments: AttachmentStore, *,
                 batch: int = 16, lease_s: float = 120.0, base_delay_s: float = 5.0, max_delay_s: float = 900.0,
                 max_attempts: int = 12, idle_s: float = 5.0, clock: Callable[[], datetime] = utcnow,
                 metrics: Any = None):
        self.store = store
        self.metrics = metrics
        self.connectors = connectors
        self.attachments = attachments
        self.batch = batch
        self.lease_s = lease_s  # longer than any send may take: a live holder never loses its row
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.max_attempts = max_attempts
        self.idle_s = idle_s
        self.clock = clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """A reply was queued: look now rather than at the next due time."""
        self._wake.set()

    async def run(self) -> None:
        """Dispatch until cancelled; a failing store is logged and retried."""
        while True:
            try:
                handled = await self.dispatch_due()
            except Exception:  # noqa: BLE001 - the store is down; try again later
                log.exception("outbox.round_failed")
                handled = 0
            if not handled:
                await self._sleep_until_due()

    async def dispatch_due(self) -> int:
        """One round: claim what is due and send it concurrently; how many were claimed."""
        items = await self.store.outbox_claim(REPLY_TOPIC, self.batch, self.lease_s)
        await asyncio.gather(*(self._dispatch(item) for item in items))
        return len(items)

    async def _sleep_until_due(self) -> None:
        self._wake.clear()
        wait = self.idle_s
        due = await self.store.outbox_next_due(REPLY_TOPIC)
        if due is not None:
            wait = min(wait, max(0.0, (due - self.clock()).total_seconds()))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=wait)
        except TimeoutError:
            pass

    async def _dispatch(self, item: OutboxItem) -> None:
        outbound = msgspec.convert(item.payload, Outbound)
        bound = log.bind(outbox_id=item.id, ticket_id=item.ticket_id, channel=outbound.channel, attempt=item.attempts)
        delivery = await self._attempt(item, outbound)
        if not await self.store.outbox_settle(item, delivery):
            bound.warning("outbox.lease_lost", status=delivery.status)
            return
        if self.metrics is not None:
            self.metrics.replies.labels(outbound.channel, delivery.status).inc()
        if delivery.status == "sent" and item.ticket_id and hasattr(self.store, "ticket_sync"):
            # a delivered reply is the first (or next) response: re-time the SLA now
            try:
                await self.store.ticket_sync([item.ticket_id], self.clock())
            except Exception as exc:  # noqa: BLE001 - the scheduler's sweep will catch up
                bound.warning("outbox.sla_sync_failed", error=str(exc))
        if delivery.status == "sent":
            bound.info("outbox.sent", external_id=delivery.external_id)
        else:
            bound.warning(f"outbox.{delivery.status}", reason=delivery.reason, code=delivery.code,
                          next_at=delivery.next_at.isoformat() if delivery.next_at else None)

    async def _attempt(self, item: OutboxItem, outbound: Outbound) -> Delivery:
        connector = self.connectors.get(outbound.channel)
        if connector is None or not hasattr(connector, "send"):
            return self._failed(item, SendError(f"no running connector can send on channel {outbound.channel!r}"))
        unsendable = _unsendable(outbound)
        if unsendable:  # it would fail the same way every time: fail once, with the reason
            return self._failed(item, SendError(unsendable, retryable=False))
        try:
            await self._load_attachments(outbound)
            result: SendResult = await connector.send(outbound)
            if crashpoints.ARMED:
                crashpoints.reached("outbox_send")
        except SendError as exc:
            return self._failed(item, exc)
        except Exception as exc:  # noqa: BLE001 - a connector bug: retry, it may be transient
            log.exception("outbox.send_crashed", outbox_id=item.id, channel=outbound.channel)
            return self._failed(item, SendError(f"{type(exc).__name__}: {exc}", retryable=True))
        return Delivery(status="sent", at=self.clock(), attempts=item.attempts, external_id=result.external_id,
                        thread_ref=result.thread_ref)

    async def _load_attachments(self, outbound: Outbound) -> None:
        for a in outbound.attachments:
            data = await self.attachments.aget(a.storage_ref) if a.storage_ref else None
            if data is None:
                raise SendError(f"attachment {a.name or a.sha256[:12]!r} is missing from the attachment store")
            a.data = data

    def _failed(self, item: OutboxItem, exc: SendError) -> Delivery:
        now = self.clock()
        if exc.retryable and item.attempts < self.max_attempts:
            delay = backoff_s(item.attempts, base_s=self.base_delay_s, max_s=self.max_delay_s,
                              retry_after=exc.retry_after)
            return Delivery(status="retrying", at=now, attempts=item.attempts, reason=exc.reason, code=exc.code,
                            next_at=now + timedelta(seconds=delay))
        reason = exc.reason if not exc.retryable else f"gave up after {item.attempts} attempts: {exc.reason}"
        return Delivery(status="failed", at=now, attempts=item.attempts, reason=reason, code=exc.code)


def _unsendable(outbound: Outbound) -> str | None:
    """Why this content can never be sent (header injection material), or None."""
    for name in ("subject", "author"):
        value = getattr(outbound, name, None)
        if isinstance(value, str) and ("\r" in value or "\n" in value):
            return f"the {name} contains a line break (CR or LF): it cannot go into a message header"
    return None


#: The app's dispatcher (set by ``create_app``).
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("outbox_dispatcher")


async def dispatcher_ctx(app: web.Application) -> AsyncIterator[None]:
    """Run the dispatcher while the app runs (it stops before the connectors close)."""
    from gateway.tasks import cancel_and_wait

    task = asyncio.create_task(app[DISPATCHER].run(), name="omnigate-outbox")
    yield
    await cancel_and_wait(task)

