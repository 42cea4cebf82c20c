"""The store protocol: intent-level operations, one backend per deployment.

Callers say what they want done (``journal_append``, ``claim_pending``,
``snapshot``, ``commit``, ``merge_contacts``…), never read-modify-write
sequences, so each operation can be one transaction in SQLite and one Lua
script in Redis. The contract tests (``tests/store/test_contract.py``) run
against every backend.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import msgspec

from connectors.base import IngestResult
from routing.model import Contact, Ticket, TimelineEntry
from routing.pipeline import Lookup
from routing.state import Commit, CommitResult, Snapshot

JOURNAL_STATUSES = ("pending", "processed", "failed", "duplicate")


class StoreError(Exception):
    """The store cannot do what was asked (unavailable, disk full…)."""


class Conflict(StoreError):
    """The state a Commit was decided on changed; decide again on a fresh snapshot."""


class NotFound(StoreError):
    pass


class JournalEntry(msgspec.Struct, omit_defaults=True):
    id: str
    seq: int
    channel: str
    account: str
    key: str
    received_at: datetime
    status: str
    attempts: int = 0
    error: str | None = None
    meta: dict = msgspec.field(default_factory=dict)
    ticket_id: str | None = None
    contact_id: str | None = None
    processed_at: datetime | None = None
    size: int = 0
    raw: bytes | None = None


class Page(msgspec.Struct):
    items: list[Any]
    next_cursor: str | None = None


class Store(Protocol):
    # journal ---------------------------------------------------------
    async def journal_append(
        self, channel: str, account: str, key: str, raw: bytes, meta: dict | None = None
    ) -> IngestResult: ...

    async def journal_get(self, journal_id: str, *, with_raw: bool = False) -> JournalEntry | None: ...

    async def journal_list(
        self, *, status: str | None = None, since: datetime | None = None, after_seq: int = 0, limit: int = 100,
        with_raw: bool = False,
    ) -> list[JournalEntry]: ...

    async def claim_pending(self, after_seq: int, limit: int) -> list[JournalEntry]: ...

    async def journal_fail(self, journal_id: str, error: str) -> None: ...

    async def journal_mark_processed(self, journal_id: str) -> None: ...

    async def journal_requeue(self, journal_ids: list[str]) -> int: ...

    async def journal_counts(self) -> dict[str, int]: ...

    # pipeline --------------------------------------------------------
    async def snapshot(self, look: Lookup, now: datetime) -> Snapshot: ...

    async def commit(self, commit: Commit) -> CommitResult: ...

    # reads -----------------------------------------------------------
    async def get_ticket(self, ticket_id: str) -> Ticket | None: ...

    async def get_ticket_by_number(self, number: int) -> Ticket | None: ...

    async def get_contact(self, contact_id: str) -> Contact | None: ...

    async def timeline(
        self, *, contact_id: str | None = None, ticket_id: str | None = None, cursor: str | None = None,
        limit: int = 50,
    ) -> Page: ...

    # contacts --------------------------------------------------------
    async def merge_contacts(self, winner_id: str, loser_id: str, actor: str, reason: str | None = None) -> Contact: ...

    async def unmerge_contact(self, contact_id: str, actor: str, reason: str | None = None) -> Contact: ...

    # connector state -------------------------------------------------
    async def state_get(self, key: str) -> str | None: ...

    async def state_set(self, key: str, value: str) -> None: ...

    async def close(self) -> None: ...
