"""The embedded SQLite backend: WAL, one writer thread with group commit,
readers on their own connections.

Every write is a function ``fn(conn, *args)`` queued to the writer thread.
The writer takes everything queued (up to ``group_commit_max``), runs each in
its own SAVEPOINT inside one ``BEGIN IMMEDIATE … COMMIT``, and only then
resolves the callers' futures: with ``synchronous=FULL`` the WAL is fsync'd at
that COMMIT, so a caller that got its answer is durable, and a hundred
concurrent webhooks cost one fsync, not a hundred. One write failing (a
Conflict, a constraint) rolls back its savepoint only. Consecutive writes
marked :func:`replayable` (pipeline commits, auto-replies) share one
savepoint, and are run again one savepoint each when one of them fails
(:meth:`_Writer._run_replayable`): the same outcome, without SQLite copying every
page each of them changes into a savepoint journal of its own. A run of
consecutive writes of one function with a ``many`` (journal appends, with or
without a nonce) is one call of it, which may answer an entry with an
exception: that write's failure alone.

Reads run on a small thread pool, each thread with its own read-only
connection; WAL lets them read a consistent snapshot while the writer writes.
The pipeline's small snapshot read runs on the event loop's thread: on the
writer's connection while no group is open (its page cache survives its own
commits; the reads of one turn of the loop share one read transaction), else
on the loop's own read-only connection.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import msgspec
import structlog

from connectors.base import IngestResult, Nonce
from gateway import crashpoints
from gateway.store.base import Conflict, JournalEntry, NotFound, Page, StoreError
from gateway.store.schema import MIGRATIONS
from gateway.store.sqlite_nonces import journal_append_nonce
from gateway.store.sqlite_assign import TICKET_ROW_COLS, AssignOps, TicketRow, ticket_row
from gateway.store.sqlite_delivery import apply_delivery
from gateway.store.sqlite_replies import RepliesOps
from gateway.store.sqlite_sla import SlaOps
from gateway.store.sqlite_tickets import TicketsOps
from gateway.store.sqlite_tokens import TokensOps
from gateway.store.sqlite_webhooks import (
    OUTBOX_INSERT,
    TICKET_SNAPSHOT_COLS,
    WebhookOps,
    event_payloads,
    insert_events,
    ticket_snapshot_of,
)
from gateway.store.sqlite_desks import DeskOps
from gateway.store.sqlite_console import ConsoleOps
from routing.model import (
    Attachment,
    Contact,
    Identity,
    ReplyTarget,
    SlaState,
    Ticket,
    TimelineEntry,
    new_id,
    utcnow,
)
from routing.calls import call_text, merge_call
from routing.dedupe import reused_id
from routing.pipeline import Lookup
from routing.state import Commit, CommitResult, ContactState, Hit, Snapshot, TicketState

log = structlog.get_logger(__name__)

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()
_reply_dec = msgspec.json.Decoder(ReplyTarget)
_sla_dec = msgspec.json.Decoder(SlaState)
_att_dec = msgspec.json.Decoder(list[Attachment])


def ms(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.timestamp() * 1000)


def dt(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, tz=timezone.utc)


def _j(value: Any) -> str:
    return _enc.encode(value).decode()


#: WAL pages (4 KiB) after which a commit checkpoints (SQLite's default is 1000)
WAL_AUTOCHECKPOINT_PAGES = 10_000
#: the writer connection's page cache in KiB (SQLite's default is 2,000): an upper bound, filled as pages are read
WRITER_CACHE_KIB = 65_536


class _Writer:
    """The one write connection, committing queued work in groups.

    The group's statements run right on the event loop's thread (they are
    small indexed writes, and Python work on a second thread only contends
    for the GIL with the loop); only ``BEGIN IMMEDIATE`` when another process
    holds the lock, and the ``COMMIT`` — the fsync — go to the commit thread.
    While one group commits, the next one gathers: the group is everything
    queued when the previous commit returns (up to ``max_batch``)."""

    def __init__(self, path: str, synchronous: str, max_batch: int):
        self.conn = _connect(path, synchronous)
        self.conn.execute("PRAGMA busy_timeout = 0")  # never wait for a lock on the loop
        # checkpoint every ~40 MB of WAL instead of every 4 MB: a page written
        # again and again (index leaves, the journal's tail) is copied into the
        # database once per checkpoint instead of once per 4 MB, with fewer
        # database fsyncs (−3 % CPU per production pipeline message)
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        # the pipeline's snapshots read on this connection too (:meth:`read`):
        # a page cache that holds the hot indexes and rows spares ~17 page
        # reads (pread calls) per production message that SQLite's default
        # 2 MB cache misses
        self.conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
        self.max_batch = max_batch
        self.pending: list[tuple] = []
        self.busy = False
        #: a group's transaction is open (from its BEGIN to the end of its
        #: COMMIT, which runs on the commit thread): the connection is not
        #: free for :meth:`read` then
        self.in_group = False
        self.batches = 0
        self.writes = 0
        #: serials of the open group's transaction (bumped at each ``BEGIN``) and
        #: of the write running in its savepoint (bumped at each ``SAVEPOINT w``,
        #: never reset): state kept in memory beside the rows (the agent cache,
        #: ``sqlite_assign.AgentCache``) checks SQL once per group and knows
        #: which write changed it
        self.group = 0
        self.write = 0
        #: called after a rollback with the serial of the write rolled back
        #: (None: the whole group's transaction): state kept in memory beside
        #: the rows drops what that write changed
        self.on_rollback: list[Callable[[int | None], None]] = []
        #: the write running now runs in a run's shared savepoint
        #: (:meth:`_run_replayable`'s first pass): if it raises, the run is
        #: rolled back and each of its writes run again in a savepoint of its
        #: own — so a part of it that must fail alone (a commit's sync) needs
        #: no savepoint of its own now, only in that second pass
        self.in_shared_run = False
        #: the loop whose current turn's snapshot reads share the read transaction open on the
        #: connection (:meth:`read`); None: none is open
        self._read_loop: asyncio.AbstractEventLoop | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="omnigate-sqlite-commit")

    def submit(self, fn: Callable[..., Any], args: tuple, savepoint: bool) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending.append((fn, args, loop, fut, savepoint))
        if not self.busy:
            self.busy = True
            # call_soon: the tasks already runnable queue their writes first
            loop.call_soon(self._start, loop)
        return fut

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
        loop.create_task(self._group(loop, batch))

    async def _group(self, loop: asyncio.AbstractEventLoop, batch: list) -> None:
        try:
            results = await self._run_batch(loop, batch)
            self.batches += 1
            self.writes += len(batch)
            _set_results([(fut, value, exc) for _, fut, value, exc in results])
        finally:
            if self.pending:
                loop.call_soon(self._start, loop)
            else:
                self.busy = False

    def _begin_waiting(self) -> None:
        self.conn.execute("PRAGMA busy_timeout = 30000")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        finally:
            self.conn.execute("PRAGMA busy_timeout = 0")

    def read(self, fn: Callable[..., Any], args: tuple) -> Any:
        """Run the read ``fn(conn, *args)`` on the writer's connection, in a
        read transaction; only while no group is open (``in_group`` false:
        the caller checks), so it sees committed rows only and never waits
        for a COMMIT. Why: a reader connection drops its whole page cache
        whenever another connection committed (WAL), which is after every
        group, and reads the pages again (~7 % of the loop's time in the
        production pipeline was those ``pread`` calls); the writer's cache
        survives its own commits.

        The reads of one turn of the event loop share one read transaction
        (``BEGIN`` at the first, ``ROLLBACK`` at the start of the next turn,
        or before a group begins, whichever comes first): when a group
        commit wakes its writers, each takes its next message's snapshot in
        that same turn, and each paid a ``BEGIN``/``ROLLBACK`` of its own
        (taking and dropping the WAL read lock). Each read still sees one
        consistent snapshot holding every group this process committed
        before it (a group ends the transaction before it begins, a turn
        that follows a commit opens a new one); what another process
        commits during the turn is seen from the next turn on, as a read a
        moment earlier would have missed it."""
        loop = asyncio.get_running_loop()
        if self._read_loop is not loop:
            self.end_read()
            self.conn.execute("BEGIN")
            self._read_loop = loop
            loop.call_soon(self.end_read)
        return fn(self.conn, *args)

    def end_read(self) -> None:
        """End the snapshot reads' transaction (:meth:`read`), if one is open."""
        if self._read_loop is not None:
            self._read_loop = None
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")  # it read only: ending it this way or by COMMIT is the same

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list) -> list:
        self.end_read()  # before the group's BEGIN IMMEDIATE on the same connection
        self.in_group = True
        try:
            return await self._run_group(loop, batch)
        finally:
            self.in_group = False

    async def _run_group(self, loop: asyncio.AbstractEventLoop, batch: list) -> list:
        conn = self.conn
        results: list[tuple[asyncio.AbstractEventLoop, asyncio.Future, Any, BaseException | None]] = []
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # another process writes: wait for it off the loop
                await loop.run_in_executor(self._thread, self._begin_waiting)
        except sqlite3.Error as exc:
            err = StoreError(f"cannot start a write transaction: {exc}")
            return [(loop, fut, None, err) for fn, args, loop, fut, _ in batch]
        self.group += 1
        i = 0
        while i < len(batch):
            fn, _, _, _, savepoint = batch[i]
            many = getattr(fn, "many", None)
            if many is not None:  # a run of the same batchable write: one executemany
                j = i
                while j < len(batch) and batch[j][0] is fn:
                    j += 1
                run = batch[i:j]
                try:
                    values = many(conn, [item[1] for item in run])
                    # an exception in the answers is that write's own failure (it stored nothing)
                    results.extend((item[2], item[3], None, v) if isinstance(v, BaseException)
                                   else (item[2], item[3], v, None) for item, v in zip(run, values))
                except BaseException as exc:  # noqa: BLE001 - handed to the callers
                    results.extend((item[2], item[3], None, exc) for item in run)
                i = j
                continue
            j = i + 1
            if savepoint and getattr(fn, "replayable", False):
                while j < len(batch) and batch[j][4] and getattr(batch[j][0], "replayable", False):
                    j += 1
            if j - i > 1:
                self._run_replayable(batch[i:j], results)
            else:
                self._run_one(batch[i], results)
            i = j
        try:
            await loop.run_in_executor(self._thread, conn.execute, "COMMIT")
        except sqlite3.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self.rolled_back(None)
            err = StoreError(f"commit failed: {exc}")
            results = [(loop, fut, None, err) for loop, fut, _, _ in results]
        return results

    def _run_one(self, item: tuple, results: list) -> None:
        """One queued write in its own savepoint (``savepoint=False``: a single
        statement, which SQLite undoes by itself when it fails)."""
        conn = self.conn
        fn, args, loop, fut, savepoint = item
        if not savepoint:
            try:
                results.append((loop, fut, fn(conn, *args), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                results.append((loop, fut, None, exc))
            return
        conn.execute("SAVEPOINT w")
        self.write += 1
        try:
            value = fn(conn, *args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            conn.execute("ROLLBACK TO w")
            conn.execute("RELEASE w")
            self.rolled_back(self.write)
            results.append((loop, fut, None, exc))
        else:
            conn.execute("RELEASE w")
            results.append((loop, fut, value, None))

    def _run_replayable(self, run: list, results: list) -> None:
        """Consecutive replayable writes (:func:`replayable`) under ONE savepoint.

        A savepoint makes SQLite copy every page a write then changes into the
        statement journal, once per savepoint: with one savepoint per write, the
        pages every pipeline commit changes (the rightmost leaves of the
        timeline's, outbox's and tickets' indexes…) were copied again for each
        commit of a group. When every write of the run succeeds — the usual
        case — the run is as if each had had its own savepoint (each still
        gets its own serial, :attr:`write`). When one raises, the whole run is
        rolled back, :attr:`on_rollback` hears of each of its writes, and the
        run is run again with a savepoint per write (:meth:`_run_one`), so a
        write that fails still fails alone, and the others' results are those
        of that second run."""
        conn = self.conn
        conn.execute("SAVEPOINT run")
        first = self.write + 1
        self.in_shared_run = True
        try:
            values = []
            for fn, args, _, _, _ in run:
                self.write += 1
                values.append(fn(conn, *args))
        except BaseException:  # noqa: BLE001 - each write is run again alone, below
            self.in_shared_run = False
            conn.execute("ROLLBACK TO run")
            conn.execute("RELEASE run")
            for write in range(first, self.write + 1):
                self.rolled_back(write)
            for item in run:
                self._run_one(item, results)
            return
        self.in_shared_run = False
        conn.execute("RELEASE run")
        results.extend((loop, fut, value, None) for (_, _, loop, fut, _), value in zip(run, values))

    def rolled_back(self, write: int | None) -> None:
        """Tell :attr:`on_rollback` that ``write`` (None: the whole group) was rolled back."""
        for hook in self.on_rollback:
            hook(write)

    async def close(self) -> None:
        while self.busy:
            await asyncio.sleep(0.001)
        self.end_read()
        self._thread.shutdown(wait=True)
        self.conn.close()


def _in_read_tx(conn: sqlite3.Connection, fn: Callable[..., Any], args: tuple) -> Any:
    """``fn(conn, *args)`` in one read transaction (a consistent snapshot),
    ended whatever happens: the connection is never left in a transaction."""
    conn.execute("BEGIN")
    try:
        return fn(conn, *args)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")  # it read only: ending it this way or by COMMIT is the same


def replayable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a write function the writer may run again (:meth:`_Writer._run_replayable`).

    A replayable write's effects are its SQL alone, or besides SQL only
    memos that check what they remember and state that hears of rollbacks
    (:attr:`_Writer.on_rollback`: the agent cache): run again on the same
    rows with the same arguments, it does what it did, and a run whose SQL
    was rolled back leaves nothing behind. (Its arguments hold the time it
    writes: ``now`` is taken when the write is queued.)"""
    fn.replayable = True  # type: ignore[attr-defined]
    return fn


def _resolve_all(results: list) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for loop, fut, value, exc in results:
        by_loop.setdefault(loop, []).append((fut, value, exc))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_results, items)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass


def _set_results(items: list) -> None:
    for fut, value, exc in items:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


def _connect(path: str, synchronous: str = "full", readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    if readonly:
        conn.execute("PRAGMA query_only = 1")
    else:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def migrate(path: str) -> int:
    """Apply the migrations not applied yet; returns the schema version."""
    conn = _connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{path}: schema version {version} is newer than this omnigate knows ({len(MIGRATIONS)}); "
                "upgrade omnigate or restore a matching backup"
            )
        for number in range(version, len(MIGRATIONS)):
            # executescript commits first, so the transaction is in the script
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{MIGRATIONS[number]};\nPRAGMA user_version = {number + 1};\nCOMMIT;"
                )
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            log.info("store.migrated", version=number + 1)
        return len(MIGRATIONS)
    finally:
        conn.close()


class SQLiteStore(RepliesOps, AssignOps, SlaOps, TicketsOps, TokensOps, WebhookOps, DeskOps, ConsoleOps):
    """The default store: one file ``<data_dir>/omnigate.db``.

    Operations of later features live in mixins beside this module
    (``sqlite_replies``, ``sqlite_assign``) and use ``_read``/``_write``."""

    backend = "sqlite"

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "full", group_commit_max: int = 512,
                 readers: int = 2, first_ticket_number: int = 1000, clock: Callable[[], datetime] = utcnow):
        self.path = str(path)
        #: the daemon's clock (``create_app(clock=…)``): every time the store
        #: records by itself (received_at, processed_at, updated_at…) reads it
        self.clock = clock
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.schema_version = migrate(self.path)
        self._writer = _Writer(self.path, synchronous, group_commit_max)
        self._local = threading.local()
        self._readers = ThreadPoolExecutor(max_workers=max(1, readers), thread_name_prefix="omnigate-sqlite-read")
        self._reader_conns: list[sqlite3.Connection] = []
        self._first_number = first_ticket_number
        self._closed = False

    @classmethod
    def in_dir(cls, data_dir: str | os.PathLike, **kw: Any) -> "SQLiteStore":
        return cls(Path(data_dir) / "omnigate.db", **kw)

    # ------------------------------------------------------------ plumbing

    async def _write(self, fn: Callable[..., Any], *args: Any, savepoint: bool = True) -> Any:
        """Run ``fn(conn, *args)`` in the writer's next group commit; returns
        once that transaction is durable. ``savepoint=False`` is for a write
        of one statement, which SQLite already makes atomic."""
        if self._closed:
            raise StoreError("store is closed")
        return await self._writer.submit(fn, args, savepoint)

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path, readonly=True)
            self._reader_conns.append(conn)
        return conn

    async def _read(self, fn: Callable[..., Any], *args: Any, inline: bool = False) -> Any:
        """Run ``fn(conn, *args)`` in a read transaction on a reader thread —
        or, with ``inline``, right here on the event loop's thread: for small
        indexed reads on the hot path (the pipeline's snapshot), where the
        thread hop costs more than the read. Inline, the writer's connection
        reads while no group is open (:meth:`_Writer.read`: a warm page
        cache), else the loop's own read-only one (WAL readers never wait for
        the writer, so this does not stall the loop)."""
        if self._closed:
            raise StoreError("store is closed")
        if inline:
            if not self._writer.in_group:
                try:
                    return self._writer.read(fn, args)
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                        raise
                    # busy (the writer waits for no lock; another process recovering the WAL…): read below
                    self._writer.end_read()
            return self._read_on_this_thread(fn, args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._read_on_this_thread, fn, args)

    def _read_on_this_thread(self, fn: Callable[..., Any], args: tuple) -> Any:
        return _in_read_tx(self._reader(), fn, args)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._writer.close()
        self._readers.shutdown(wait=True)
        for conn in self._reader_conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    @property
    def group_commit_stats(self) -> tuple[int, int]:
        """(transactions committed, writes they carried)."""
        return self._writer.batches, self._writer.writes

    # ------------------------------------------------------------ journal

    async def journal_append(self, channel: str, account: str, key: str, raw: bytes,
                             meta: dict | None = None, *, nonce: Nonce | None = None) -> IngestResult:
        """Append durably. With ``nonce``, the nonce is checked and recorded in
        the same transaction (gateway/store/sqlite_nonces.py; may raise
        ``NonceReused``); without, the batched hot path."""
        row = (new_id(), channel, account, key, raw, _j(meta) if meta else None, ms(self.clock()))
        if nonce is None:
            return await self._write(_journal_append, *row, savepoint=False)
        return await self._write(journal_append_nonce, _journal_append, row, nonce.scope, nonce.value,
                                 ms(nonce.expires), ms(nonce.now))

    async def journal_get(self, journal_id: str, *, with_raw: bool = False) -> JournalEntry | None:
        rows = await self._read(_journal_select, "WHERE id = ?", (journal_id,), with_raw, 1)
        return rows[0] if rows else None

    async def journal_list(self, *, status: str | None = None, since: datetime | None = None, after_seq: int = 0,
                           limit: int = 100, with_raw: bool = False, ids: list[str] | None = None,
                           channel: str | None = None) -> list[JournalEntry]:
        where, args = ["seq > ?"], [after_seq]
        if status:
            where.append("status = ?")
            args.append(status)
        if since:
            where.append("received_at >= ?")
            args.append(ms(since))
        if channel:
            where.append("channel = ?")
            args.append(channel)
        if ids:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            args.extend(ids)
        return await self._read(_journal_select, "WHERE " + " AND ".join(where), tuple(args), with_raw, limit)

    async def claim_pending(self, after_seq: int, limit: int) -> list[JournalEntry]:
        """Pending entries after ``after_seq`` in arrival order, with their raw
        bytes. In one process the claim is the worker's in-flight set; the
        Redis backend claims through a consumer group instead."""
        return await self._read(_journal_select, "WHERE status = 'pending' AND seq > ?", (after_seq,), True, limit)

    async def journal_fail(self, journal_id: str, error: str) -> None:
        await self._write(_journal_fail, journal_id, error[:2000], ms(self.clock()))

    async def journal_mark_processed(self, journal_id: str) -> None:
        """An entry that yields no message (nothing to route) is done."""
        await self._write(_journal_done, journal_id, ms(self.clock()))

    async def journal_requeue(self, journal_ids: list[str]) -> int:
        """Put entries back to ``pending`` (replay); returns how many."""
        return await self._write(_journal_requeue, list(journal_ids))

    async def journal_counts(self) -> dict[str, int]:
        return await self._read(_journal_counts)

    # ------------------------------------------------------------ pipeline

    async def snapshot(self, look: Lookup, now: datetime) -> Snapshot:
        return await self._read(_snapshot, look, now, inline=True)

    async def commit(self, commit: Commit) -> CommitResult:
        """Apply a pipeline decision atomically; after :meth:`sync_in_commit`,
        the ticket's assignment and SLA are brought in line in the same
        transaction (no second write per message)."""
        if self._commit_clock is None:
            return await self._write(_apply_commit, commit, self._first_number, ms(self.clock()))
        return await self._write(self._apply_commit_synced, commit, ms(self.clock()))

    @replayable  # its sync's effects besides SQL: the agent cache (told of rollbacks) and ``_synced`` (``_sync_in_tx``)
    def _apply_commit_synced(self, conn: sqlite3.Connection, commit: Commit, now: int) -> CommitResult:
        result, row = _apply_commit_row(conn, commit, self._first_number, now, row=True)
        if result.outcome == "processed" and commit.message_key is not None and result.ticket_id is not None:
            self._sync_in_tx(conn, result.ticket_id, row if row is not None and row.id == result.ticket_id else None)
        return result

    # ------------------------------------------------------------ reads

    async def get_ticket(self, ticket_id: str) -> Ticket | None:
        return await self._read(_ticket_select, "id = ?", ticket_id)

    async def get_ticket_by_number(self, number: int) -> Ticket | None:
        return await self._read(_ticket_select, "number = ?", number)

    async def get_contact(self, contact_id: str) -> Contact | None:
        return await self._read(_contact_select, contact_id)

    async def timeline(self, *, contact_id: str | None = None, ticket_id: str | None = None,
                       cursor: str | None = None, limit: int = 50) -> Page:
        return await self._read(_timeline_page, contact_id, ticket_id, cursor, limit)

    async def tickets_of(self, contact_id: str) -> list[Ticket]:
        return await self._read(_tickets_of, contact_id)

    async def counts(self) -> dict[str, int]:
        return await self._read(_table_counts)

    # ------------------------------------------------------------ contacts

    async def merge_contacts(self, winner_id: str, loser_id: str, actor: str, reason: str | None = None) -> Contact:
        await self._write(_merge, winner_id, loser_id, actor, reason, ms(self.clock()))
        contact = await self.get_contact(winner_id)
        assert contact is not None
        return contact

    async def unmerge_contact(self, contact_id: str, actor: str, reason: str | None = None) -> Contact:
        await self._write(_unmerge, contact_id, actor, reason, ms(self.clock()))
        contact = await self.get_contact(contact_id)
        assert contact is not None
        return contact

    # ------------------------------------------------------------ ticket participants

    async def ticket_participant_add(self, ticket_id: str, identity: Identity, source: str) -> None:
        """``identity`` may now thread onto the ticket by mail headers (an agent's Cc)."""
        await self._write(_participant_add, ticket_id, identity, source, ms(self.clock()))

    async def ticket_participants(self, ticket_id: str) -> list[dict]:
        return await self._read(_participants_of, ticket_id)

    # ------------------------------------------------------------ connector state

    async def state_get(self, key: str) -> str | None:
        return await self._read(_state_get, key)

    async def state_set(self, key: str, value: str) -> None:
        await self._write(_state_set, key, value, ms(self.clock()))


# ---------------------------------------------------------------- journal SQL

_JOURNAL_COLS = "id, seq, channel, account, key, received_at, status, attempts, error, meta, ticket_id, " \
                "contact_id, processed_at, length(raw)"


_JOURNAL_INSERT = ("INSERT INTO journal (id, channel, account, key, received_at, raw, meta) VALUES (?,?,?,?,?,?,?) "
                   "ON CONFLICT (channel, account, key) DO NOTHING")


def _journal_append(conn: sqlite3.Connection, jid: str, channel: str, account: str, key: str, raw: bytes,
                    meta: str | None, now: int) -> IngestResult:
    return _journal_append_many(conn, [(jid, channel, account, key, raw, meta, now)])[0]


def _journal_append_many(conn: sqlite3.Connection, rows: list[tuple]) -> list[IngestResult]:
    """Append a run of payloads with one ``executemany`` (the ingest hot
    path: a group commit of webhooks is mostly appends). Rows whose key was
    already journaled — before, or earlier in this same run — answer with
    the existing entry's id."""
    before = conn.total_changes
    conn.executemany(_JOURNAL_INSERT, [(jid, ch, acc, key, now, raw, meta) for jid, ch, acc, key, raw, meta, now in rows])
    if conn.total_changes - before == len(rows):
        return [IngestResult(journal_id=r[0], created=True) for r in rows]
    ids = [r[0] for r in rows]
    created = {row[0] for row in conn.execute(f"SELECT id FROM journal WHERE id IN ({','.join('?' * len(ids))})", ids)}
    out = []
    for jid, ch, acc, key, *_ in rows:
        if jid in created:
            out.append(IngestResult(journal_id=jid, created=True))
        else:
            existing = conn.execute("SELECT id FROM journal WHERE channel = ? AND account = ? AND key = ?",
                                    (ch, acc, key)).fetchone()
            out.append(IngestResult(journal_id=existing[0], created=False))
    return out


_journal_append.many = lambda conn, argss: _journal_append_many(conn, [tuple(a) for a in argss])  # type: ignore[attr-defined]


def _journal_select(conn: sqlite3.Connection, where: str, args: tuple, with_raw: bool, limit: int) -> list[JournalEntry]:
    cols = _JOURNAL_COLS + (", raw" if with_raw else "")
    out = []
    for r in conn.execute(f"SELECT {cols} FROM journal {where} ORDER BY seq LIMIT ?", (*args, limit)):
        out.append(JournalEntry(
            id=r[0], seq=r[1], channel=r[2], account=r[3], key=r[4], received_at=dt(r[5]), status=r[6],
            attempts=r[7], error=r[8], meta=_dec.decode(r[9]) if r[9] else {}, ticket_id=r[10],
            contact_id=r[11], processed_at=dt(r[12]), size=r[13] or 0, raw=bytes(r[14]) if with_raw else None,
        ))
    return out


def _journal_fail(conn: sqlite3.Connection, jid: str, error: str, now: int) -> None:
    conn.execute(
        "UPDATE journal SET status = 'failed', error = ?, attempts = attempts + 1, processed_at = ? WHERE id = ?",
        (error, now, jid),
    )


def _journal_done(conn: sqlite3.Connection, jid: str, now: int) -> None:
    conn.execute("UPDATE journal SET status = 'processed', error = NULL, processed_at = ? WHERE id = ?", (now, jid))


def _journal_requeue(conn: sqlite3.Connection, ids: list[str]) -> int:
    n = 0
    for jid in ids:
        n += conn.execute(
            "UPDATE journal SET status = 'pending', error = NULL WHERE id = ? AND status != 'pending' "
            "AND raw_pruned_at IS NULL", (jid,)  # a pruned payload cannot be decided again
        ).rowcount
    return n


def _journal_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Entries by status, cheaply: the small sets (pending, failed,
    duplicate) are counted on the (status, seq) index, and processed is the
    rest (rows are never deleted, so the row count is the largest rowid) —
    /readyz and the metrics gauges must not scan a journal of millions."""
    out = {s: conn.execute("SELECT count(*) FROM journal WHERE status = ?", (s,)).fetchone()[0]
           for s in ("pending", "failed", "duplicate")}
    total = conn.execute("SELECT max(seq) FROM journal").fetchone()[0] or 0
    out["processed"] = max(0, total - sum(out.values()))
    return out


def _table_counts(conn: sqlite3.Connection) -> dict[str, int]:
    return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("journal", "contacts", "tickets", "timeline", "outbox")}


# ---------------------------------------------------------------- participants


def _participant_add(conn: sqlite3.Connection, ticket_id: str, ident: Identity, source: str, now: int) -> None:
    conn.execute("INSERT OR IGNORE INTO ticket_participants (ticket_id, kind, value, source, added_at) "
                 "VALUES (?,?,?,?,?)", (ticket_id, ident.kind, ident.value, source, now))


def _participants_of(conn: sqlite3.Connection, ticket_id: str) -> list[dict]:
    return [{"kind": r[0], "value": r[1], "source": r[2], "added_at": dt(r[3]).isoformat()}
            for r in conn.execute("SELECT kind, value, source, added_at FROM ticket_participants "
                                  "WHERE ticket_id = ? ORDER BY added_at, value", (ticket_id,))]


# ---------------------------------------------------------------- snapshot


_TICKET_STATE_COLS = "id, number, contact_id, status, version, created_at, last_message_at, subject, channels, " \
                     "solved_at, priority, team, assignee"


def _ticket_state(r: tuple) -> TicketState:
    return TicketState(
        id=r[0], number=r[1], contact_id=r[2], status=r[3], version=r[4], created_at=dt(r[5]),
        last_message_at=dt(r[6]), subject=r[7], channels=tuple(_dec.decode(r[8])), solved_at=dt(r[9]),
        priority=r[10], team=r[11], assignee=r[12],
    )


def _hit(conn: sqlite3.Connection, key: tuple[str, str, str]) -> Hit | None:
    r = conn.execute(
        "SELECT m.journal_id, m.timeline_id, m.ticket_id, m.contact_id, j.key FROM message_keys m "
        "LEFT JOIN journal j ON j.id = m.journal_id "
        "WHERE m.channel = ? AND m.account = ? AND m.external_id = ?", key,
    ).fetchone()
    return Hit(*r) if r else None


#: An identity's owner and that contact's row (none when the row is gone: the owner alone)
_OWNER_SQL = ("SELECT i.contact_id, c.id, c.version, c.name, c.tier, c.tags, c.flags FROM identities i "
              "LEFT JOIN contacts c ON c.id = i.contact_id WHERE i.kind = ? AND i.value = ?")


def _snapshot(conn: sqlite3.Connection, look: Lookup, now: datetime) -> Snapshot:
    snap = Snapshot(now=now, exact=_hit(conn, look.message_key))
    if snap.exact is not None and not look.call and not reused_id(snap.exact.journal_key, look.content_sha):
        return snap  # (a later report of a call, a reused Message-ID: the rest is needed too)
    if look.edits_key is not None:
        snap.edited = _hit(conn, look.edits_key)
    for ident in look.identities:  # each identity's owner, and the owner's contact row, in one statement
        r = conn.execute(_OWNER_SQL, (ident.kind, ident.value)).fetchone()
        if r:
            cid = snap.owners[ident.key()] = r[0]
            if r[1] is not None and cid not in snap.contacts:
                snap.contacts[cid] = ContactState(id=r[1], version=r[2], name=r[3], tier=r[4],
                                                  tags=tuple(_dec.decode(r[5])), flags=tuple(_dec.decode(r[6])))
    for cid in snap.contacts:
        for r in conn.execute(f"SELECT {_TICKET_STATE_COLS} FROM tickets WHERE contact_id = ? "
                              "ORDER BY last_message_at DESC LIMIT 20", (cid,)):
            snap.tickets.append(_ticket_state(r))
    snap.tickets.sort(key=lambda t: t.last_message_at, reverse=True)
    for ref in look.refs:
        r = conn.execute(f"SELECT {_TICKET_STATE_COLS} FROM tickets WHERE id = "
                         "(SELECT ticket_id FROM thread_refs WHERE ref = ?)", (ref,)).fetchone()
        if r:
            snap.ref_tickets[ref] = _ticket_state(r)
    if snap.ref_tickets:  # a reply by headers: may the sender join those tickets?
        sender_owner = snap.owners.get(look.sender.key())
        snap.participating = frozenset(
            t.id for t in snap.ref_tickets.values()
            if t.contact_id != sender_owner and conn.execute(
                "SELECT 1 FROM ticket_participants WHERE ticket_id = ? AND kind = ? AND value = ?",
                (t.id, look.sender.kind, look.sender.value)).fetchone()
        )
    for n in look.numbers:
        r = conn.execute(f"SELECT {_TICKET_STATE_COLS} FROM tickets WHERE number = ?", (n,)).fetchone()
        if r:
            snap.numbered[n] = _ticket_state(r)
    sender_owner = snap.owners.get(look.sender.key())
    if look.text_hash and sender_owner:
        horizon = ms(now) - int(look.near_window_s * 1000)
        r = conn.execute(
            "SELECT journal_id, id, ticket_id, contact_id FROM timeline WHERE contact_id = ? AND text_hash = ? "
            "AND at >= ? AND kind = 'message_in' ORDER BY seq LIMIT 1",
            (sender_owner, look.text_hash, horizon),
        ).fetchone()
        if r:
            snap.near_duplicate = Hit(*r)
    return snap


# ---------------------------------------------------------------- commit


def _next_number(conn: sqlite3.Connection, first: int) -> int:
    r = conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'ticket' RETURNING value").fetchone()
    if r is None:
        conn.execute("INSERT INTO counters (name, value) VALUES ('ticket', ?)", (first,))
        return first
    return r[0]


@replayable
def _apply_commit(conn: sqlite3.Connection, c: Commit, first_number: int, now: int) -> CommitResult:
    return _apply_commit_row(conn, c, first_number, now)[0]


#: the ticket as the commit left it, read once: its event snapshot's columns, then a ``TicketRow``'s
_COMMITTED_TICKET_SQL = f"SELECT {TICKET_SNAPSHOT_COLS}, {TICKET_ROW_COLS} FROM tickets WHERE id = ?"
_SNAPSHOT_WIDTH = TICKET_SNAPSHOT_COLS.count(",") + 1


def _apply_commit_row(conn: sqlite3.Connection, c: Commit, first_number: int, now: int, *,
                      row: bool = False) -> tuple[CommitResult, TicketRow | None]:
    """Apply a pipeline decision. ``row``: also return the ticket's row as
    the commit left it, when the commit wrote the ticket (None otherwise),
    for the sync that follows in the transaction. The ticket is read once
    after its write (:data:`_COMMITTED_TICKET_SQL`) for both the events'
    ticket snapshot and that row — nothing after that write in the commit
    changes the ticket or its contact's tier. (``RETURNING`` on the write
    itself measured slower than the write and a read: ~+4 µs per write.)"""
    if c.message_key is None or c.outcome != "processed":
        if c.final and c.outcome == "duplicate":
            conn.execute("UPDATE journal SET status = 'duplicate', processed_at = ?, ticket_id = ?, contact_id = ?, "
                         "error = NULL WHERE id = ?", (now, c.ticket_id, c.contact_id, c.journal_id))
        elif c.final:
            conn.execute("UPDATE journal SET status = 'processed', processed_at = coalesce(processed_at, ?), "
                         "error = NULL WHERE id = ?", (now, c.journal_id))
        return CommitResult(c.outcome, c.contact_id, c.ticket_id, _number_of(conn, c.ticket_id)), None
    key = c.message_key
    try:
        conn.execute(
            "INSERT INTO message_keys (channel, account, external_id, journal_id, timeline_id, ticket_id, contact_id) "
            "VALUES (?,?,?,?,?,?,?)", (*key, c.journal_id, c.message_entry_id, c.ticket_id, c.contact_id),
        )
    except sqlite3.IntegrityError:
        hit = _hit(conn, key)
        assert hit is not None
        if c.key_taken_conflicts and hit.journal_id != c.journal_id:  # a call reported twice at once
            raise Conflict(f"call {key[2]} was committed by another report since the snapshot") from None
        if hit.journal_id == c.journal_id:  # this entry committed before (a replay): nothing changes
            if c.final:
                conn.execute("UPDATE journal SET status = 'processed', error = NULL WHERE id = ?", (c.journal_id,))
            return CommitResult("processed", hit.contact_id, hit.ticket_id, _number_of(conn, hit.ticket_id)), None
        if c.final:
            conn.execute("UPDATE journal SET status = 'duplicate', processed_at = ?, ticket_id = ?, contact_id = ?, "
                         "error = NULL WHERE id = ?", (now, hit.ticket_id, hit.contact_id, c.journal_id))
        return CommitResult("duplicate", hit.contact_id, hit.ticket_id, _number_of(conn, hit.ticket_id)), None
    if c.delivery is not None:  # a platform's delivery report of one of our replies
        ticket_id, contact_id = apply_delivery(conn, c, now)
        if c.final:
            conn.execute("UPDATE journal SET status = 'processed', processed_at = ?, ticket_id = ?, contact_id = ?, "
                         "error = NULL WHERE id = ?", (now, ticket_id, contact_id, c.journal_id))
        return CommitResult("processed", contact_id, ticket_id, _number_of(conn, ticket_id)), None

    cid = c.contact_id
    assert cid is not None
    if c.new_contact is not None:
        conn.execute("INSERT INTO contacts (id, name, created_at, updated_at) VALUES (?,?,?,?)",
                     (cid, c.new_contact.name, ms(c.new_contact.created_at), now))
    else:
        n = conn.execute(
            "UPDATE contacts SET version = version + 1, updated_at = ?, name = coalesce(name, ?) "
            "WHERE id = ? AND version = ? AND merged_into IS NULL",
            (now, c.contact_name, cid, c.contact_expect_version),
        ).rowcount
        if n == 0:
            raise Conflict(f"contact {cid} changed since the snapshot")
    if c.add_flags or c.remove_flags:
        flags = set(_dec.decode(conn.execute("SELECT flags FROM contacts WHERE id = ?", (cid,)).fetchone()[0]))
        flags = (flags | set(c.add_flags)) - set(c.remove_flags)
        conn.execute("UPDATE contacts SET flags = ? WHERE id = ?", (_j(sorted(flags)), cid))
    for link in c.link_identities:
        try:
            conn.execute(
                "INSERT INTO identities (kind, value, contact_id, origin_contact_id, reason, created_at) "
                "VALUES (?,?,?,?,?,?)", (link.identity.kind, link.identity.value, cid, cid, link.reason, now),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"identity {link.identity.key()} was taken since the snapshot") from None

    origin = None  # whose the commit's rows are (:func:`_origin`): read only where a row needs it
    number = None
    wrote = None  # the id of the ticket this commit wrote
    ticket_origin = None  # whose the ticket's entries are: the ticket's original contact
    if c.new_ticket is not None:
        t = c.new_ticket
        origin = ticket_origin = _origin(conn, c, cid)
        number = _next_number(conn, first_number)
        wrote = t.id
        conn.execute(
            "INSERT INTO tickets (id, number, contact_id, origin_contact_id, subject, status, priority, team, skills, "
            "assignee, tags, channels, reply_to, follow_up_of, created_at, updated_at, last_message_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (t.id, number, cid, origin, t.subject, t.status, t.priority, t.team, _j(t.skills), t.assignee,
             _j(sorted(set(t.tags))), _j([t.channel]), _j(t.reply_to) if t.reply_to else None, t.follow_up_of,
             ms(t.created_at), now, ms(t.created_at)),
        )
    elif c.ticket_change is not None:
        ch = c.ticket_change
        r = conn.execute("SELECT version, channels, tags, number, origin_contact_id FROM tickets WHERE id = ?",
                         (ch.id,)).fetchone()
        if r is None or r[0] != ch.expect_version:
            raise Conflict(f"ticket {ch.id} changed since the snapshot")
        number, ticket_origin = r[3], r[4]
        sets, args = ["version = version + 1", "updated_at = ?"], [now]
        if ch.status:
            sets.append("status = ?")
            args.append(ch.status)
            if ch.status == "open":
                sets.append("solved_at = NULL")
        if ch.last_message_at:
            sets.append("last_message_at = max(last_message_at, ?)")
            args.append(ms(ch.last_message_at))
        if ch.add_channel:
            sets.append("channels = ?")
            args.append(_j(sorted(set(_dec.decode(r[1])) | {ch.add_channel})))
        if ch.add_tags:
            sets.append("tags = ?")
            args.append(_j(sorted(set(_dec.decode(r[2])) | set(ch.add_tags))))
        for col, value in (("priority", ch.priority), ("team", ch.team), ("assignee", ch.assignee)):
            if value is not None:
                sets.append(f"{col} = ?")
                args.append(value)
        if ch.skills is not None:
            sets.append("skills = ?")
            args.append(_j(ch.skills))
        if ch.reply_to is not None:
            sets.append("reply_to = ?")
            args.append(_j(ch.reply_to))
        if ch.responded_at is not None:
            sets.append("first_response_at = coalesce(first_response_at, ?)")
            args.append(ms(ch.responded_at))
        conn.execute(f"UPDATE tickets SET {', '.join(sets)} WHERE id = ?", (*args, ch.id))
        wrote = ch.id

    if origin is None and (ticket_origin is None or any(e.ticket_id != c.ticket_id for e in c.timeline)):
        origin = _origin(conn, c, cid)  # (a follow-up's entries are all its ticket's: no read)
    if ticket_origin is None:
        ticket_origin = origin
    conn.executemany(_TIMELINE_INSERT, [_timeline_row(e, ticket_origin if e.ticket_id == c.ticket_id else origin)
                                        for e in c.timeline])
    if c.edit is not None:
        r = conn.execute("SELECT text, data FROM timeline WHERE id = ?", (c.edit.timeline_id,)).fetchone()
        if r is not None and c.edit.call is not None:  # a later report of a call
            data = _dec.decode(r[1]) if r[1] else {}
            data["call"] = merge_call(data.get("call"), c.edit.call)
            data.setdefault("call_reports", []).append({"journal_id": c.journal_id, "call": c.edit.call})
            conn.execute("UPDATE timeline SET text = ?, edited_at = ?, data = ? WHERE id = ?",
                         (call_text(data["call"]), ms(c.edit.edited_at), _j(data), c.edit.timeline_id))
        elif r is not None:
            data = _dec.decode(r[1]) if r[1] else {}
            data.setdefault("edits", []).append({"previous_text": r[0], "edited_at": c.edit.edited_at.isoformat(),
                                                 "journal_id": c.journal_id})
            conn.execute("UPDATE timeline SET text = ?, edited_at = ?, data = ? WHERE id = ?",
                         (c.edit.text, ms(c.edit.edited_at), _j(data), c.edit.timeline_id))
    if c.ticket_id:
        for ref in c.thread_refs:
            conn.execute("INSERT OR IGNORE INTO thread_refs (ref, ticket_id) VALUES (?, ?)", (ref, c.ticket_id))
        if c.participants:
            conn.executemany("INSERT OR IGNORE INTO ticket_participants (ticket_id, kind, value, source, added_at) "
                             "VALUES (?,?,?,?,?)",
                             [(c.ticket_id, i.kind, i.value, src, now) for i, src in c.participants])
    committed = None  # the ticket's row (``_COMMITTED_TICKET_SQL``), read once for the events and the sync
    if c.outbox:  # the message snapshots of the entries just inserted are made from them, not read back
        entries = [e for e in c.timeline if c.edit is None or e.id != c.edit.timeline_id]
        tickets = None
        if row and wrote is not None:
            committed = conn.execute(_COMMITTED_TICKET_SQL, (wrote,)).fetchone()
            tickets = {wrote: ticket_snapshot_of(committed)}
        payloads = event_payloads(conn, c.outbox, now, entries, tickets)
        conn.executemany(OUTBOX_INSERT, [(new_id(), ev.topic, ev.ticket_id, _enc.encode(p), now, now)
                                         for ev, p in zip(c.outbox, payloads)])
    if c.final:
        conn.execute("UPDATE journal SET status = 'processed', processed_at = ?, ticket_id = ?, contact_id = ?, "
                     "error = NULL WHERE id = ?", (now, c.ticket_id, cid, c.journal_id))
    if row and wrote is not None and committed is None:
        committed = conn.execute(_COMMITTED_TICKET_SQL, (wrote,)).fetchone()
    if crashpoints.ARMED:  # the crash test: everything written, nothing committed
        crashpoints.reached("commit")
    return (CommitResult("processed", cid, c.ticket_id, number),
            ticket_row(committed[_SNAPSHOT_WIDTH:]) if committed is not None else None)


def _origin(conn: sqlite3.Connection, c: Commit, cid: str) -> str:
    """Whose the rows a commit creates are: the contact that originally owned
    the sender's identity (so an unmerge gives them back); a new contact's
    identities are its own. Read where a row needs it — a new ticket, an
    entry on no ticket or another — after the commit's identity links (the
    rest of the commit writes no identity): a follow-up's entries all belong
    to its ticket's original contact, and it reads nothing."""
    if c.origin_identity is None or c.new_contact is not None:
        return cid
    r = conn.execute("SELECT origin_contact_id FROM identities WHERE kind = ? AND value = ?",
                     (c.origin_identity.kind, c.origin_identity.value)).fetchone()
    return r[0] if r else cid


def _number_of(conn: sqlite3.Connection, ticket_id: str | None) -> int | None:
    if not ticket_id:
        return None
    r = conn.execute("SELECT number FROM tickets WHERE id = ?", (ticket_id,)).fetchone()
    return r[0] if r else None


_TIMELINE_INSERT = (
    "INSERT INTO timeline (id, contact_id, origin_contact_id, ticket_id, kind, at, channel, journal_id, external_id, "
    "subject, text, attachments, data, linked_to, text_hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def _timeline_row(e: TimelineEntry, origin: str) -> tuple:
    return (e.id, e.contact_id, origin, e.ticket_id, e.kind, ms(e.at), e.channel, e.journal_id, e.external_id,
            e.subject, e.text, _j(e.attachments) if e.attachments else None, _j(e.data) if e.data else None,
            e.linked_to, e.data.get("text_hash") if e.kind == "message_in" else None)


def _insert_timeline(conn: sqlite3.Connection, e: TimelineEntry, origin: str | None = None) -> None:
    """One entry; on a ticket it belongs to whoever the ticket originally belonged to."""
    origin = origin or e.contact_id
    if e.ticket_id:
        r = conn.execute("SELECT origin_contact_id FROM tickets WHERE id = ?", (e.ticket_id,)).fetchone()
        if r:
            origin = r[0]
    conn.execute(_TIMELINE_INSERT, _timeline_row(e, origin))


# ---------------------------------------------------------------- reads


_TICKET_COLS = "id, number, contact_id, subject, status, priority, team, skills, assignee, tags, channels, " \
               "reply_to, follow_up_of, sla, created_at, updated_at, last_message_at, first_response_at, " \
               "solved_at, closed_at"


def _ticket(r: tuple) -> Ticket:
    return Ticket(
        id=r[0], number=r[1], contact_id=r[2], subject=r[3], status=r[4], priority=r[5], team=r[6],
        skills=_dec.decode(r[7]), assignee=r[8], tags=_dec.decode(r[9]), channels=_dec.decode(r[10]),
        reply_to=_reply_dec.decode(r[11]) if r[11] else None, follow_up_of=r[12],
        sla=_sla_dec.decode(r[13]) if r[13] else None, created_at=dt(r[14]), updated_at=dt(r[15]),
        last_message_at=dt(r[16]), first_response_at=dt(r[17]), solved_at=dt(r[18]), closed_at=dt(r[19]),
    )


def _ticket_select(conn: sqlite3.Connection, where: str, arg: Any) -> Ticket | None:
    r = conn.execute(f"SELECT {_TICKET_COLS} FROM tickets WHERE {where}", (arg,)).fetchone()
    return _ticket(r) if r else None


def _tickets_of(conn: sqlite3.Connection, contact_id: str) -> list[Ticket]:
    return [_ticket(r) for r in conn.execute(
        f"SELECT {_TICKET_COLS} FROM tickets WHERE contact_id = ? ORDER BY created_at", (contact_id,))]


def _contact_select(conn: sqlite3.Connection, contact_id: str) -> Contact | None:
    r = conn.execute("SELECT id, name, tier, tags, attributes, flags, merged_into, created_at, updated_at "
                     "FROM contacts WHERE id = ?", (contact_id,)).fetchone()
    if r is None:
        return None
    idents = [Identity(k, v) for k, v in conn.execute(
        "SELECT kind, value FROM identities WHERE contact_id = ? ORDER BY kind, value", (contact_id,))]
    return Contact(id=r[0], name=r[1], tier=r[2], tags=_dec.decode(r[3]), attributes=_dec.decode(r[4]),
                   flags=_dec.decode(r[5]), merged_into=r[6], identities=idents, created_at=dt(r[7]),
                   updated_at=dt(r[8]))


def _resolve_merged(conn: sqlite3.Connection, contact_id: str) -> str:
    seen = set()
    while contact_id not in seen:
        seen.add(contact_id)
        r = conn.execute("SELECT merged_into FROM contacts WHERE id = ?", (contact_id,)).fetchone()
        if not r or not r[0]:
            break
        contact_id = r[0]
    return contact_id


def _timeline_page(conn: sqlite3.Connection, contact_id: str | None, ticket_id: str | None, cursor: str | None,
                   limit: int) -> Page:
    if contact_id is not None:
        where, args = "contact_id = ?", [_resolve_merged(conn, contact_id)]
    else:
        where, args = "ticket_id = ?", [ticket_id]
    if cursor:
        try:
            at_s, seq_s = cursor.split(".", 1)
            at, seq = int(at_s), int(seq_s)
            if not (0 <= at < 2**63 and 0 <= seq < 2**63):  # SQLite integers are 64-bit
                raise ValueError(cursor)
        except ValueError:
            raise StoreError(f"bad cursor {cursor[:64]!r}") from None
        where += " AND (at > ? OR (at = ? AND seq > ?))"
        args += [at, at, seq]
    rows = conn.execute(
        "SELECT id, contact_id, kind, at, ticket_id, channel, journal_id, external_id, subject, text, attachments, "
        f"data, linked_to, edited_at, seq FROM timeline WHERE {where} ORDER BY at, seq LIMIT ?", (*args, limit + 1),
    ).fetchall()
    items = [TimelineEntry(
        id=r[0], contact_id=r[1], kind=r[2], at=dt(r[3]), ticket_id=r[4], channel=r[5], journal_id=r[6],
        external_id=r[7], subject=r[8], text=r[9], attachments=_att_dec.decode(r[10]) if r[10] else [],
        data=_dec.decode(r[11]) if r[11] else {}, linked_to=r[12], edited_at=dt(r[13]),
    ) for r in rows[:limit]]
    nxt = None
    if len(rows) > limit:
        last = rows[limit - 1]
        nxt = f"{last[3]}.{last[14]}"
    return Page(items=items, next_cursor=nxt)


# ---------------------------------------------------------------- merge


def _audit(conn: sqlite3.Connection, now: int, actor: str, action: str, subject: str, data: dict) -> None:
    conn.execute("INSERT INTO audit (at, actor, action, subject, data) VALUES (?,?,?,?,?)",
                 (now, actor, action, subject, _j(data)))


def _merge(conn: sqlite3.Connection, winner: str, loser: str, actor: str, reason: str | None, now: int) -> None:
    if winner == loser:
        raise StoreError("cannot merge a contact into itself")
    rows = {r[0]: r[1] for r in conn.execute(
        "SELECT id, merged_into FROM contacts WHERE id IN (?, ?)", (winner, loser))}
    for cid in (winner, loser):
        if cid not in rows:
            raise NotFound(f"contact {cid} not found")
        if rows[cid]:
            raise StoreError(f"contact {cid} is already merged into {rows[cid]}")
    moved = {}
    for table in ("identities", "tickets", "timeline"):
        moved[table] = conn.execute(f"UPDATE {table} SET contact_id = ? WHERE contact_id = ?", (winner, loser)).rowcount
    conn.execute("UPDATE contacts SET merged_into = ?, version = version + 1, updated_at = ? WHERE id = ?",
                 (winner, now, loser))
    conn.execute("UPDATE contacts SET version = version + 1, updated_at = ?, name = coalesce(name, "
                 "(SELECT name FROM contacts WHERE id = ?)) WHERE id = ?", (now, loser, winner))
    data = {"winner": winner, "loser": loser, "moved": moved, "reason": reason}
    _audit(conn, now, actor, "contact.merge", loser, data)
    _insert_timeline(conn, TimelineEntry(
        id=new_id(), contact_id=winner, kind="identity", at=dt(now),
        text=f"contact {loser} merged into this contact by {actor}" + (f": {reason}" if reason else ""), data=data))
    insert_events(conn, [("contact.merged", None, data)], now)


def _unmerge(conn: sqlite3.Connection, contact_id: str, actor: str, reason: str | None, now: int) -> None:
    r = conn.execute("SELECT merged_into FROM contacts WHERE id = ?", (contact_id,)).fetchone()
    if r is None:
        raise NotFound(f"contact {contact_id} not found")
    winner = r[0]
    if not winner:
        raise StoreError(f"contact {contact_id} is not merged")
    # The contact and everything merged into it (transitively) come back.
    family = {contact_id}
    frontier = [contact_id]
    while frontier:
        nxt = [row[0] for row in conn.execute(
            f"SELECT id FROM contacts WHERE merged_into IN ({','.join('?' * len(frontier))})", frontier)]
        frontier = [c for c in nxt if c not in family]
        family.update(frontier)
    marks = ",".join("?" * len(family))
    moved = {}
    for table in ("identities", "tickets", "timeline"):
        # rows of the contact, and of contacts merged into it, go back to it
        moved[table] = conn.execute(
            f"UPDATE {table} SET contact_id = ? WHERE origin_contact_id IN ({marks}) AND contact_id = ?",
            (contact_id, *family, winner)).rowcount
    conn.execute("UPDATE contacts SET merged_into = NULL, version = version + 1, updated_at = ? WHERE id = ?",
                 (now, contact_id))
    conn.execute("UPDATE contacts SET version = version + 1, updated_at = ? WHERE id = ?", (now, winner))
    data = {"contact": contact_id, "from": winner, "moved": moved, "reason": reason}
    _audit(conn, now, actor, "contact.unmerge", contact_id, data)
    for cid in (contact_id, winner):
        _insert_timeline(conn, TimelineEntry(
            id=new_id(), contact_id=cid, kind="identity", at=dt(now),
            text=f"contact {contact_id} unmerged from {winner} by {actor}" + (f": {reason}" if reason else ""),
            data=data))
    insert_events(conn, [("contact.unmerged", None, data)], now)


# ---------------------------------------------------------------- state


def _state_get(conn: sqlite3.Connection, key: str) -> str | None:
    r = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
    return r[0] if r else None


def _state_set(conn: sqlite3.Connection, key: str, value: str, now: int) -> None:
    conn.execute("INSERT INTO state (key, value, updated_at) VALUES (?,?,?) "
                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                 (key, value, now))
