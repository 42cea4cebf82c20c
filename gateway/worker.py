"""The pipeline worker: journal entry → parse → stages → atomic commit.

It claims pending journal entries in arrival order and runs a bounded number
of them concurrently (their commits share the store's group commits). For
each entry: the channel's pure parser gives Inbounds; each Inbound gets its
attachments stored, a snapshot of the state it needs, the pure stages'
decision, and one atomic commit — decided again on a fresh snapshot when the
store reports a conflict. A payload that cannot be parsed becomes a
``failed`` journal entry with the reason, and stays replayable.

At start-up every pending entry is claimed again: that is crash recovery.
Processing is idempotent (exact-dedupe on the message key), so an entry
interrupted after its commit but before being marked is simply confirmed.

One sender's entries are decided in arrival order (gateway/order.py): in one
process by a FIFO lock per sender; with several instances on Redis the
claimer parses and registers what it claims (``Pipeline.admit``) and a
worker decides an entry on its turn only — an entry whose turn does not come
soon is ``deferred`` and goes to the back of the queue, freeing the slot.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Awaitable, Callable, Mapping

import msgspec
import structlog

from connectors.base import PayloadRejected
from connectors.registry import RegistryError, parser_for
from gateway.attachments import AttachmentStore
from gateway.metrics import Metrics
from gateway.order import KeyedLocks, NotYourTurn, SenderOrder, order_for, sender_key  # noqa: F401 (KeyedLocks: re-exported)
from gateway.store.base import Conflict, JournalEntry, Store, StoreUnavailable
from routing.model import Inbound, utcnow
from routing.pipeline import Settings, decide, lookup
from routing.state import CommitResult

log = structlog.get_logger(__name__)

ContextFn = Callable[[str, str, Mapping[str, Any]], dict]
#: Runs after a message's commit (assignment, SLA timers): separate
#: transactions that must themselves be idempotent and recoverable — a crash
#: between the commit and them leaves work a periodic sweep picks up.
AfterCommit = Callable[[Inbound, CommitResult], Awaitable[None]]
#: Sends a rule's auto-reply: (ticket id, rendered AutoReply, the Inbound).
AutoReplier = Callable[[str, Any, Inbound], Awaitable[None]]


def default_context(channel: str, account: str, meta: Mapping[str, Any]) -> dict:
    return {**meta, "account": account, "channel": channel}


@dataclass
class EntryResult:
    journal_id: str
    status: str  # processed | duplicate | failed | deferred (not its sender's turn yet: queue it again)
    results: list[CommitResult] = field(default_factory=list)
    error: str | None = None


#: the cyclic GC's first-generation threshold while a worker runs (CPython's default is 700)
GC_GEN0_THRESHOLD = 10_000


def relax_gc(gen0: int = GC_GEN0_THRESHOLD) -> None:
    """Run the cyclic garbage collector's young generation every ``gen0``
    net container allocations instead of every 700 (never lower than it is).

    A young-generation pass walks every young object still alive: with 64
    messages in flight that is mostly their live working set (inbounds,
    snapshots, decisions), walked again and again and promoted into the older
    generations, whose passes then walk it once more. Collecting 14× less
    often walks it 14× less: the production pipeline bench's GC time went
    from ~160 to ~55 ms per 6,000 messages (~17 µs per message). Garbage
    that is not cyclic is freed at once by reference counting either way;
    cycles wait a little longer (up to ~10,000 allocations)."""
    current = gc.get_threshold()
    if current[0] < gen0 and current[0] != 0:  # 0: the collector is off, leave it so
        gc.set_threshold(gen0, *current[1:])


def conflict_backoff_s(attempt: int, jitter: Callable[[], float] = random.random) -> float:
    """Pause before deciding again after the ``attempt``-th conflict:
    exponential from 1 ms, capped at 200 ms, spread ×0.5–1.5. Within one
    process one sender's messages are already serialised, so conflicts are
    rare; across instances (Redis) workers racing on one contact would
    otherwise retry in lock-step and exhaust their tries within ~0.2 s."""
    return min(0.2, 0.001 * 2 ** attempt) * (0.5 + jitter())


class Pipeline:
    """Processes one journal entry at a time (call it concurrently)."""

    def __init__(self, store: Store, settings: Settings, *, attachments: AttachmentStore | None = None,
                 metrics: Metrics | None = None, context_for: ContextFn = default_context,
                 media_fetchers: Mapping[str, Any] | None = None, max_conflict_retries: int = 20,
                 clock: Callable[[], datetime] = utcnow, after_commit: list[AfterCommit] | None = None,
                 auto_replier: AutoReplier | None = None, order: SenderOrder | None = None):
        self.store = store
        self.settings = settings
        self.attachments = attachments
        self.metrics = metrics
        self.context_for = context_for
        # kept by reference: the app fills its connectors mapping after building the pipeline
        self.media_fetchers = media_fetchers if media_fetchers is not None else {}
        self.max_conflict_retries = max_conflict_retries
        self.clock = clock
        self.after_commit: list[AfterCommit] = list(after_commit or [])
        self.auto_replier = auto_replier
        #: one sender's entries decided in arrival order (in-process, or Redis's across instances)
        self.order = order if order is not None else order_for(store)
        #: entries the claimer parsed to register their sender (RedisOrder), by journal id
        self._parsed: dict[str, list[Inbound] | BaseException] = {}

    def parse(self, entry: JournalEntry) -> list[Inbound]:
        assert entry.raw is not None
        parse = parser_for(entry.channel)
        ctx = self.context_for(entry.channel, entry.account, entry.meta)
        inbounds = parse(entry.raw, ctx)
        for i in inbounds:
            i.id = entry.id if len(inbounds) == 1 else f"{entry.id}:{i.external_id}"
            i.received_at = entry.received_at
            i.raw_ref = entry.id
        return inbounds

    async def admit(self, entries: list[JournalEntry]) -> None:
        """Called by the claimer with what it just claimed: when the order is
        kept across instances, parse each entry (its sender is only known
        then; the worker reuses the result) and register them in one batch."""
        if not self.order.registers or not entries:
            return
        items: list[tuple[str, int, str | None]] = []
        for entry in entries:
            try:
                parsed: list[Inbound] | BaseException = self.parse(entry)
            except Exception as exc:  # process() fails it; it has no sender to wait for
                parsed = exc
            self._parsed[entry.id] = parsed
            sender = sender_key(parsed[0]) if isinstance(parsed, list) and parsed else None
            items.append((entry.id, entry.seq, sender))
        await self.order.register(items)

    def forget(self, entry: JournalEntry) -> None:
        """The claimer's parse of an entry no worker will process now."""
        self._parsed.pop(entry.id, None)

    async def process(self, entry: JournalEntry, *, defer: bool = False) -> EntryResult:
        """Decide and commit one entry. With ``defer`` (the worker), an entry
        whose sender's earlier entry is still undecided elsewhere is not
        waited for long: the result's status is ``deferred`` and the caller
        queues it again."""
        log_ = log.bind(journal_id=entry.id, channel=entry.channel)
        try:
            parsed = self._parsed.pop(entry.id, None)
            if isinstance(parsed, BaseException):
                raise parsed
            inbounds = parsed if parsed is not None else self.parse(entry)
        except PayloadRejected as exc:
            return await self._fail(entry, f"rejected by the {entry.channel} parser: {exc}")
        except RegistryError as exc:
            return await self._fail(entry, str(exc))
        except Exception as exc:  # a parser bug must not lose the payload
            log_.exception("pipeline.parser_crashed")
            return await self._fail(entry, f"{entry.channel} parser crashed: {type(exc).__name__}: {exc}")
        if not inbounds:  # e.g. a delivery-status webhook: kept in the journal, nothing to route
            await self.store.journal_mark_processed(entry.id)
            log_.info("pipeline.done", status="processed", messages=0)
            return EntryResult(entry.id, "processed")
        results = []
        # one sender's messages are decided in arrival order, even with many
        # workers and instances (gateway/order.py): in-process, the lock is
        # taken before the first await, in claim order
        try:
            async with self.order.turn(entry.id, entry.seq, sender_key(inbounds[0]), patient=not defer):
                try:
                    for n, inbound in enumerate(inbounds):
                        if inbound.attachments:  # (nothing to fetch or store otherwise)
                            await self._prepare(inbound)
                        results.append(await self._commit(entry, inbound, final=n == len(inbounds) - 1))
                except StoreUnavailable:  # not the entry's fault: it stays pending, the worker tries it again later
                    raise
                except Exception as exc:
                    log_.exception("pipeline.failed")
                    return await self._fail(entry, f"pipeline error: {type(exc).__name__}: {exc}")
        except NotYourTurn:
            self._parsed[entry.id] = inbounds  # parsed once: kept for the next try
            return EntryResult(entry.id, "deferred")
        status = "duplicate" if all(r.outcome == "duplicate" for r in results) else "processed"
        if self.metrics is not None:
            latency = max(0.0, (self.clock() - entry.received_at).total_seconds())
            self.metrics.by_channel(self.metrics.pipeline_latency, entry.channel).observe(latency)
        log_.info("pipeline.done", status=status, messages=len(results),
                  ticket_id=results[-1].ticket_id, contact_id=results[-1].contact_id)
        return EntryResult(entry.id, status, results)

    async def _prepare(self, inbound: Inbound) -> None:
        fetcher = self.media_fetchers.get(inbound.channel)
        if fetcher is not None and any(a.data is None and a.url for a in inbound.attachments):
            try:
                await fetcher.fetch_media(inbound)
            except Exception as exc:  # the message goes on without the file
                inbound.defects.append(f"media download failed: {type(exc).__name__}: {exc}")
        if self.attachments is not None:
            for a in inbound.attachments:
                if a.data is not None:
                    a.storage_ref = await self.attachments.aput(a.data)
                    a.data = None

    async def _commit(self, entry: JournalEntry, inbound: Inbound, final: bool) -> CommitResult:
        look = lookup(inbound, self.settings)
        for attempt in range(self.max_conflict_retries):
            snap = await self.store.snapshot(look, self.clock())
            commit = decide(inbound, entry.id, snap, self.settings, look)
            commit.final = final
            try:
                result = await self.store.commit(commit)
            except Conflict:
                if self.metrics is not None:
                    self.metrics.conflicts.inc()
                await asyncio.sleep(conflict_backoff_s(attempt))
                continue
            self._count(inbound.channel, result, commit.counted)
            if result.outcome == "processed" and commit.message_key is not None and commit.delivery is None:
                if commit.auto_reply is not None and result.ticket_id:
                    await self._auto_reply(commit.auto_reply, inbound, result)
                if commit.status_change is not None:
                    await self._status_change(commit.status_change, inbound)
                for hook in self.after_commit:
                    try:
                        await hook(inbound, result)
                    except Exception:  # the message is committed; the sweep retries the rest
                        log.exception("pipeline.after_commit_failed", hook=getattr(hook, "__name__", str(hook)))
            return result
        raise Conflict(f"gave up after {self.max_conflict_retries} conflicting commits")

    async def _auto_reply(self, plan: tuple, inbound: Inbound, result: CommitResult) -> None:
        """Render the rule's template with the committed ticket number and
        hand it to the replies outbox (never for machine-sent messages)."""
        template, rule_input = plan
        rules = self.settings.rules
        if inbound.auto or rules is None or self.auto_replier is None:
            return
        reply = rules.render(template, msgspec.structs.replace(rule_input, ticket_number=result.ticket_number))
        if reply is None:
            return
        try:
            await self.auto_replier(result.ticket_id, reply, inbound)
        except Exception:  # the message is committed; a lost auto-reply is logged, not retried
            log.exception("pipeline.auto_reply_failed", ticket_id=result.ticket_id, template=template)

    async def _status_change(self, change: tuple[str, str, str], inbound: Inbound) -> None:
        """Apply the status a channel reported (a session that ended) the way
        an agent's status change is applied: capacity freed, SLA re-timed."""
        ticket_id, status, reason = change
        set_status = getattr(self.store, "set_status", None)
        if set_status is None:
            return
        try:
            changed = await set_status(ticket_id, status, self.clock(), actor=f"{inbound.channel}:session")
        except Exception as exc:  # an impossible transition (already closed…) is logged, not fatal
            log.warning("pipeline.status_change_refused", ticket_id=ticket_id, status=status, error=str(exc))
            return
        log.info("pipeline.status_changed", ticket_id=ticket_id, status=status, changed=changed, reason=reason)

    def _count(self, channel: str, result: CommitResult, counted: str | None) -> None:
        if self.metrics is None:
            return
        m = self.metrics
        if result.outcome == "duplicate":
            m.by_channel(m.deduped, channel).inc()
        elif counted == "near_duplicate":
            m.by_channel(m.near_duplicates, channel).inc()
        else:
            m.by_channel(m.processed, channel).inc()

    async def _fail(self, entry: JournalEntry, reason: str) -> EntryResult:
        log.warning("pipeline.entry_failed", journal_id=entry.id, channel=entry.channel, error=reason[:300])
        await self.store.journal_fail(entry.id, reason)
        if self.metrics is not None:
            self.metrics.by_channel(self.metrics.failed, entry.channel).inc()
        return EntryResult(entry.id, "failed", error=reason)


class Worker:
    """Feeds pending journal entries to the Pipeline, ``concurrency`` at a time."""

    def __init__(self, pipeline: Pipeline, *, concurrency: int = 16, batch: int = 256, rescan_s: float = 5.0):
        self.pipeline = pipeline
        self.store = pipeline.store
        self.concurrency = concurrency
        self.batch = batch
        self.rescan_s = rescan_s
        self._wake = asyncio.Event()
        self._rescan = False
        self._inflight: set[str] = set()
        self._queue: asyncio.Queue[JournalEntry] = asyncio.Queue(maxsize=batch * 2)
        self._tasks: list[asyncio.Task] = []
        self._puts: set[asyncio.Task] = set()  # deferred entries waiting for room in the queue
        #: the real Pipeline keeps the arrival order (admit, defer); a stand-in (tests) has process(entry) only
        self._ordered = isinstance(pipeline, Pipeline)
        self._stopping = False
        self.done = 0
        #: called with 1 for each entry the pipeline settled (processed,
        #: duplicate or failed): gateway/admission.py's backlog and gate
        self.on_settled: list[Callable[[int], None]] = []

    def wake(self) -> None:
        """Called after an append: there is new work."""
        self._wake.set()

    def rescan(self) -> None:
        """Entries were put back to pending (a replay): claim from the start
        now, not at the next periodic rescan."""
        self._rescan = True
        self._wake.set()

    async def start(self) -> None:
        relax_gc()
        self._tasks = [asyncio.create_task(self._claimer(), name="omnigate-claimer")]
        self._tasks += [asyncio.create_task(self._consume(), name=f"omnigate-pipeline-{n}")
                        for n in range(self.concurrency)]

    async def stop(self) -> None:
        self._stopping = True
        from gateway.tasks import cancel_and_wait

        await cancel_and_wait(*self._tasks, *self._puts)  # again if one swallowed its cancellation
        self._tasks = []
        if self._ordered:
            self.pipeline._parsed.clear()

    async def drain(self, timeout: float = 30.0) -> None:
        """Wait until nothing is pending or in flight (tests, replay)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.wake()
            counts = await self.store.journal_counts()
            if counts.get("pending", 0) == 0 and not self._inflight and self._queue.empty():
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("journal not drained in time")

    async def _claimer(self) -> None:
        after = 0
        last_full_scan = time.monotonic()
        while not self._stopping:
            try:
                entries = await self.store.claim_pending(after, self.batch)
            except Exception:
                log.exception("worker.claim_failed")
                await asyncio.sleep(1.0)
                continue
            fresh = [e for e in entries if e.id not in self._inflight]
            try:
                if self._ordered:
                    await self.pipeline.admit(fresh)  # across instances: parse and register their senders
            except Exception:
                log.exception("worker.admit_failed")
                for e in fresh:
                    self.pipeline.forget(e)
                after = 0  # claim them again (its own unfinished entries) once the store answers
                await asyncio.sleep(1.0)
                continue
            for e in fresh:
                self._inflight.add(e.id)
                await self._queue.put(e)
            if entries:
                after = entries[-1].seq
                continue
            # nothing new after `after`: wait for an append, and now and then
            # rescan from the start (entries put back by `omnigate replay`)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.rescan_s)
            except asyncio.TimeoutError:
                pass
            if self._rescan or time.monotonic() - last_full_scan >= self.rescan_s:
                after, last_full_scan, self._rescan = 0, time.monotonic(), False

    async def _consume(self) -> None:
        while True:
            entry = await self._queue.get()
            deferred = False
            try:
                if self._ordered:
                    result = await self.pipeline.process(entry, defer=True)
                    deferred = result.status == "deferred"
                else:
                    await self.pipeline.process(entry)
                if not deferred:
                    self.done += 1
                    for settled in self.on_settled:
                        settled(1)
            except Exception:  # process() fails entries itself; this is the store being down
                log.exception("worker.process_error", journal_id=entry.id)
                await asyncio.sleep(0.5)
            finally:
                if deferred:  # its sender's earlier entry is undecided: to the back of the queue
                    self._requeue(entry)
                else:
                    self._inflight.discard(entry.id)
                    if self._ordered:
                        self.pipeline.forget(entry)
                        self.pipeline.order.done(entry.id)

    def _requeue(self, entry: JournalEntry) -> None:
        try:
            self._queue.put_nowait(entry)
        except asyncio.QueueFull:  # the claimer filled it: wait for room without holding this slot
            task = asyncio.create_task(self._queue.put(entry))
            self._puts.add(task)
            task.add_done_callback(self._puts.discard)

