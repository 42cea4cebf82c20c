"""The ConnectorContext a connector gets from the gateway, kept in memory,
for the connector-level tests (the end-to-end tests use the real gateway):
an idempotent journal (by account and key), state that survives a simulated
restart when handed to a new context, and a real Supervisor with short
back-off."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Mapping

import hashlib
from datetime import datetime

from connectors.base import IngestResult, Nonce, NonceReused
from gateway.supervisor import BackoffPolicy, Supervisor

PATIENCE_S = 30.0  # a safety net against a hung test, not a timing assertion


@dataclass(frozen=True)
class Entry:
    account: str
    key: str
    raw: bytes
    meta: dict[str, Any]


@dataclass
class MemoryContext:
    config: Mapping[str, Any]
    channel: str = "test"
    data_dir: str = "."
    journal: list[Entry] = field(default_factory=list)  # unique by (account, key)
    calls: list[Entry] = field(default_factory=list)  # every accepted ingest call, redeliveries included
    state: dict[str, str] = field(default_factory=dict)
    fail_ingest: bool = False  # the journal refuses everything (disk full)
    supervisor: Supervisor = field(default_factory=lambda: Supervisor(BackoffPolicy(base=0.05, cap=0.2)))
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: The gateway's clock as the connector sees it (None: the real one).
    now: datetime | None = None
    nonces: dict[tuple[str, str], tuple[bytes, str]] = field(default_factory=dict)  # like the store's table
    refusals: list[str] = field(default_factory=list)  # reasons counted through rejected()

    def clock(self) -> datetime:
        return self.now or datetime.now().astimezone()

    def rejected(self, reason: str) -> None:
        self.refusals.append(reason)

    async def ingest(self, account: str, key: str, raw: bytes, meta: Mapping[str, Any] | None = None, *,
                     nonce: Nonce | None = None) -> IngestResult:
        if self.fail_ingest:
            raise OSError("journal disk full")
        digest = hashlib.sha256(raw).digest()
        if nonce is not None and (seen := self.nonces.get((nonce.scope, nonce.value))) is not None:
            if seen[0] != digest:
                raise NonceReused(f"nonce {nonce.value!r} was already used with another body")
            return IngestResult(journal_id=seen[1], created=False)
        entry = Entry(account, key, raw, dict(meta or {}))
        self.calls.append(entry)
        result = None
        for i, e in enumerate(self.journal):
            if (e.account, e.key) == (account, key):
                result = IngestResult(journal_id=str(i), created=False)
        if result is None:
            self.journal.append(entry)
            self._changed.set()
            result = IngestResult(journal_id=str(len(self.journal) - 1), created=True)
        if nonce is not None:
            self.nonces[(nonce.scope, nonce.value)] = (digest, result.journal_id)
        return result

    async def state_get(self, key: str) -> str | None:
        return self.state.get(key)

    async def state_set(self, key: str, value: str) -> None:
        self.state[key] = value

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.journal]

    async def wait_for_entries(self, n: int) -> None:
        """Until the journal holds ``n`` entries (fails after PATIENCE_S)."""

        async def wait() -> None:
            while len(self.journal) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), PATIENCE_S)
