"""The one way a payload enters omnigate: append to the journal, durably,
then wake the pipeline. Connectors reach it through their ConnectorContext;
the API channel calls it directly. The caller acknowledges the channel only
after :meth:`Ingest.ingest` returned."""

from __future__ import annotations

from typing import Any, Mapping

import structlog

from datetime import datetime
from typing import Callable

from connectors.base import IngestResult, Nonce
from gateway import crashpoints
from routing.model import utcnow
from gateway.metrics import Metrics

log = structlog.get_logger(__name__)


class Ingest:
    def __init__(self, store: Any, metrics: Metrics, wake: Any = None, *, backlog: Any = None, gate: Any = None):
        self.store = store
        self.metrics = metrics
        self.wake = wake or (lambda: None)
        #: gateway/admission.py: the pending estimate (and the optional limit), the fair-share gate
        self.backlog = backlog
        self.gate = gate

    def backlog_full(self) -> bool:
        """The optional backlog limit is reached: only intake whose sender
        retries for long (SMTP, the API channel) asks, and refuses for now."""
        return self.backlog is not None and self.backlog.full()

    def shed(self) -> bool:
        """The pipeline is starved and this intake would wait at the gate
        (``pipeline.admission_shed``): only intake whose sender retries for
        long (SMTP, the API channel) asks — as early as it can, before the
        body is read — and refuses for now."""
        return self.gate is not None and self.gate.shed()

    def shed_or_reserve(self) -> bool | None:
        """:meth:`shed` made binding, as a request is parsed
        (gateway/fast_refusal.py; ``AdmissionGate.reserve``): True refuse;
        False admitted, its credit taken (append with ``reserved=True``, or
        :meth:`release`); None nothing decided."""
        return None if self.gate is None else self.gate.reserve()

    def release(self) -> None:
        """Give back the credit of a :meth:`shed_or_reserve` that will not append."""
        if self.gate is not None:
            self.gate.release()

    @property
    def retry_after_s(self) -> int:
        """The ``Retry-After`` of a refusal for load (``pipeline.backlog_retry_after_s``)."""
        return self.backlog.retry_after_s if self.backlog is not None else 30

    async def ingest(self, channel: str, account: str, key: str, raw: bytes,
                     meta: Mapping[str, Any] | None = None, *, nonce: Nonce | None = None,
                     reserved: bool = False) -> IngestResult:
        """Append durably; ``nonce`` is checked and remembered in the same
        transaction (raises ``connectors.base.NonceReused``). While the
        pipeline is starved the gate may delay the append (bounded), never
        refuse it; ``reserved``: admitted already (:meth:`shed_or_reserve`
        took its credit)."""
        if self.gate is not None and not reserved:
            await self.gate.admit()
        if nonce is None:
            result = await self.store.journal_append(channel, account, key, raw, dict(meta) if meta else None)
        else:
            result = await self.store.journal_append(channel, account, key, raw, dict(meta) if meta else None,
                                                     nonce=nonce)
        if crashpoints.ARMED:
            crashpoints.reached("journal_append")
        counts = self.metrics.received if result.created else self.metrics.redelivered
        counts[channel] = counts.get(channel, 0) + 1
        if result.created:
            if self.backlog is not None:
                self.backlog.appended()
            self.wake()
        else:
            log.info("ingest.redelivery", channel=channel, account=account, journal_id=result.journal_id)
        return result


class ChannelContext:
    """The ConnectorContext (connectors/base.py) the gateway gives a connector."""

    def __init__(self, channel: str, config: Mapping[str, Any], data_dir: str, ingest: Ingest, store: Any,
                 supervisor: Any = None, clock: Callable[[], datetime] | None = None):
        self.channel = channel
        #: The gateway's clock (aware UTC): connectors judge request timestamps by it.
        self.clock: Callable[[], datetime] = clock or utcnow
        self.supervisor = supervisor
        #: one owner across instances for a poller (connectors.base.owned; None: always the owner)
        self.ownership: Any = None
        #: ``limiter(name, rate_per_s, burst)`` → ``await .take(key)``: limits shared by instances
        #: on Redis (gateway/shared.py); None: the connector keeps its own
        self.limiter: Any = None
        #: WeChat/WeCom access tokens shared by instances on Redis (None: this process's)
        self.token_store: Any = None
        self.config = config
        self.data_dir = data_dir
        self._ingest = ingest
        self._store = store
        self.log = structlog.get_logger(f"connectors.{channel}").bind(channel=channel)

    async def ingest(self, account: str, key: str, raw: bytes, meta: Mapping[str, Any] | None = None, *,
                     nonce: Nonce | None = None) -> IngestResult:
        return await self._ingest.ingest(self.channel, account, key, raw, meta, nonce=nonce)

    def backlog_full(self) -> bool:
        """The optional backlog limit (``pipeline.backlog_limit``) is reached:
        a connector whose senders retry for long (SMTP) may refuse for now;
        webhook channels never ask (their platforms give up within seconds)."""
        return self._ingest.backlog_full()

    def shed(self) -> bool:
        """The pipeline is starved and this intake would wait
        (``pipeline.admission_shed``): a connector whose senders retry for
        long (SMTP) may refuse for now; webhook channels never ask."""
        return self._ingest.shed()

    def rejected(self, reason: str) -> None:
        """Count a request this channel refused before storing anything."""
        self._ingest.metrics.rejected.labels(self.channel, reason).inc()

    async def state_get(self, key: str) -> str | None:
        return await self._store.state_get(f"{self.channel}:{key}")

    async def state_set(self, key: str, value: str) -> None:
        await self._store.state_set(f"{self.channel}:{key}", value)
