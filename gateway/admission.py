"""Load: the pipeline's fair share of the event loop, and the optional backlog limit.

Ingest and the pipeline share one interpreter. An ingest costs a fraction
of a processed message, so past the pipeline's capacity every extra request
per second takes loop time from the pipeline: left alone, the processing
rate would fall as the offered load rises. Three parts keep it steady:

- :class:`Backlog` — the journal entries waiting for the pipeline, known
  without counting the journal on every request: sampled from
  ``store.journal_counts()`` every :data:`SAMPLE_S` (which also sees other
  instances' appends on Redis) and moved by this process's appends and
  settled entries in between.
- :class:`LoopBusy` — the share of time this event loop runs callbacks
  rather than waiting for I/O (an exponentially weighted average): a loop
  busy all the time is saturated, and whatever ingest takes the pipeline
  loses.
- :class:`AdmissionGate` — when the pipeline is **starved** (backlog at or
  above ``high_water`` *and* the loop busy at least ``busy_at`` of the
  time), an intake needs a credit before its journal append; the pipeline
  grants ``ratio`` credits per entry it settles. Starvation has a
  hysteresis (:meth:`AdmissionGate.starved`): once starved, the pipeline
  stays so until the backlog falls below ``low_water`` (half the high-water
  mark: an empty backlog ends it at once) or the loop has been busy less
  than ``busy_at`` for ``calm_s`` on end — not at the first reading under
  either threshold. While intake is held to the processing rate the backlog
  hovers at the high-water mark, and the busy share dips for a moment
  whenever the machine makes the process wait for a core; each such flip
  let intake in free, at the offered rate, for as long as it lasted.
  An intake without a credit waits for one —
  at most ``max_delay_s``, then it goes through anyway: the gate **delays,
  never refuses** (WeChat gives up after three tries within 15 s, so a
  refusal there loses the message). Intake is thereby held to ``ratio``
  times the processing rate while the pipeline is behind, which reserves the
  pipeline its share of the loop whatever the ingest rate; below capacity
  (no backlog, or a loop with time to spare: the backlog has another cause,
  a slow disk say) nobody waits.

Intake is refused for load in two cases only, and only on intake paths
whose senders retry for long: SMTP (451 4.3.2, the sending MTA retries for
days) and the API channel (503 + ``Retry-After``, its clients retry on 5xx).
Webhook channels (WeChat, WeCom, Telegram, WhatsApp, Messenger, Instagram,
LINE, phone) and webchat never ask.

- **Shedding** (``pipeline.admission_shed``, on by default): while the
  pipeline is starved, an intake that would have to wait for a credit is
  refused at once (:meth:`AdmissionGate.shed`), before its body is read.
  Waiting does not hold back independent senders (each waiting request
  keeps a connection open and the sender opens another), so on these paths
  the delay only added cost; a refusal costs little and the sender comes
  back after ``Retry-After``. They are refused sooner than others wait:
  once intake on any channel reaches ``shed_ratio``
  (``pipeline.admission_shed_ratio``, 1) per entry the pipeline settles,
  where the channels that may not refuse are still admitted up to
  ``ratio`` (2). At 1 the backlog stops growing from these senders, and
  the loop time a processed message costs stays one intake's, not two —
  admitting twice what is processed only lengthened a backlog their
  clients would retry into anyway (with 2 intakes of ~150 µs per processed
  message of ~750, processing could keep at most ~0.85 of its capacity).
  Asked as an API request is parsed (gateway/fast_refusal.py), the
  decision is binding (:meth:`AdmissionGate.reserve`): not refused there,
  the request has its credit taken there, given back by
  :meth:`AdmissionGate.release` if it does not append after all.
- **The backlog limit** (``pipeline.backlog_limit``, off by default): a
  fixed number of pending entries (:meth:`Backlog.full`).

The backlog itself lives in the journal on disk; the worker holds at most
``batch`` × 3 + ``workers`` entries in memory whatever its length.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Callable

import structlog

log = structlog.get_logger(__name__)

#: Seconds between two readings of the journal's pending count.
SAMPLE_S = 2.0
#: Seconds between two readings of the loop's busy share.
BUSY_TICK_S = 0.1
#: Weight of the newest reading in the busy average.
BUSY_ALPHA = 0.3
#: Seconds the loop must stay under ``busy_at`` before a starved pipeline counts as having time to
#: spare (:meth:`AdmissionGate.starved`): the busy average follows a change within ~0.3 s (its
#: time constant at :data:`BUSY_TICK_S` and :data:`BUSY_ALPHA`), and the dips it shows while the
#: machine makes the process wait for a core last up to about a second.
CALM_S = 2.0


class Backlog:
    """Journal entries pending, estimated cheaply (see the module docstring).

    ``limit`` > 0 enables :meth:`full` (the optional backlog limit)."""

    def __init__(self, store: Any, *, limit: int = 0, retry_after_s: int = 30, sample_s: float = SAMPLE_S):
        self.store = store
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.sample_s = sample_s
        self._sampled = 0
        self._delta = 0
        self._task: asyncio.Task | None = None

    @property
    def pending(self) -> int:
        return max(0, self._sampled + self._delta)

    def appended(self, n: int = 1) -> None:
        self._delta += n

    def settled(self, n: int = 1) -> None:
        self._delta -= n

    def full(self) -> bool:
        """The optional limit is reached: intake whose sender retries for
        long (SMTP, the API channel) may be refused for now."""
        return self.limit > 0 and self.pending >= self.limit

    async def sample(self) -> int:
        counts = await self.store.journal_counts()
        self._sampled, self._delta = int(counts.get("pending", 0)), 0
        return self._sampled

    async def start(self) -> None:
        try:
            await self.sample()
        except Exception:  # the store's own start-up reports it; the sampler retries
            log.warning("backlog.sample_failed", exc_info=True)
        self._task = asyncio.create_task(self._run(), name="omnigate-backlog")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.sample_s)
            try:
                await self.sample()
            except Exception:
                log.warning("backlog.sample_failed", exc_info=True)


class LoopBusy:
    """The share of wall time this event loop spends running callbacks
    rather than waiting in its selector (averaged over ticks of
    :data:`BUSY_TICK_S`): near 1, every ready task — ingest and pipeline —
    competes for the one interpreter.

    Measured by timing the selector's ``select`` (the loop's only idle
    point). A loop without a ``_selector`` (not the default asyncio loop)
    falls back to timer lateness: a tick that fires late by its own length
    counts as fully busy."""

    def __init__(self, tick_s: float = BUSY_TICK_S, alpha: float = BUSY_ALPHA,
                 clock: Callable[[], float] = time.perf_counter):
        self.tick_s = tick_s
        self.alpha = alpha
        self.clock = clock
        self.value = 0.0
        self.idle = 0.0  # seconds spent in select so far
        self._timed = False
        self._task: asyncio.Task | None = None
        self._restore: Callable[[], None] | None = None

    def observe(self, busy: float) -> None:
        self.value += self.alpha * (min(1.0, max(0.0, busy)) - self.value)

    def __call__(self) -> float:
        return self.value

    def _install(self, loop: asyncio.AbstractEventLoop) -> None:
        selector = getattr(loop, "_selector", None)
        if selector is None or not hasattr(selector, "select"):
            return
        original = selector.select
        previous = selector.__dict__.get("select")  # another probe's (two apps on one loop), or None
        clock = self.clock

        def select(timeout: float | None = None) -> Any:
            t0 = clock()
            try:
                return original(timeout)
            finally:
                self.idle += clock() - t0

        selector.select = select
        self._timed = True

        def restore() -> None:
            if selector.__dict__.get("select") is not select:
                return  # a later probe wraps ours: it puts ours back when it stops
            if previous is None:
                del selector.select
            else:
                selector.select = previous

        self._restore = restore

    async def start(self) -> None:
        self._install(asyncio.get_running_loop())
        self._task = asyncio.create_task(self._run(), name="omnigate-loop-busy")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._restore is not None:
            self._restore()
            self._restore = None

    async def _run(self) -> None:
        while True:
            t0, idle0 = self.clock(), self.idle
            await asyncio.sleep(self.tick_s)
            wall = self.clock() - t0
            if self._timed:
                self.observe(1.0 - (self.idle - idle0) / wall if wall > 0 else 0.0)
            else:
                self.observe((wall - self.tick_s) / self.tick_s)


class AdmissionGate:
    """Credits for intake while the pipeline is starved (module docstring).

    ``backlog``, ``busy`` and ``clock`` (monotonic seconds) are callables so
    that tests drive the decisions directly; :meth:`starved` is the
    starvation test, :meth:`try_admit` the decision, :meth:`admit` the
    waiting. ``low_water`` (default: half of ``high_water``; at least 1) and
    ``calm_s`` say when a starvation ends (:meth:`starved`)."""

    def __init__(self, *, backlog: Callable[[], int], busy: Callable[[], float], ratio: float = 2.0,
                 high_water: int = 512, busy_at: float = 0.7, max_delay_s: float = 0.5, burst: float = 64.0,
                 shed: bool = False, shed_ratio: float | None = None, low_water: int | None = None,
                 calm_s: float = CALM_S, clock: Callable[[], float] = time.monotonic):
        self.backlog = backlog
        self.busy = busy
        self.ratio = ratio
        self.high_water = high_water
        self.low_water = max(1, high_water // 2 if low_water is None else low_water)  # 1: an empty backlog ends it
        self.busy_at = busy_at
        self.calm_s = calm_s
        self.clock = clock
        self.max_delay_s = max_delay_s
        self.burst = burst
        self.credits = burst
        #: intakes waiting for a credit, in arrival order: (deadline on the loop's clock, future)
        self._waiters: collections.deque[tuple[float, asyncio.Future]] = collections.deque()
        #: the one timer that ends the longest waits (:meth:`_expire`), set for the oldest waiter's deadline
        self._timer: asyncio.TimerHandle | None = None
        #: intakes admitted at once, after a credit wait, after the longest wait (not refused)
        self.stats = {"free": 0, "credited": 0, "waited": 0, "timed_out": 0}
        #: :meth:`shed` may refuse (``pipeline.admission_shed``); ``shed_count``: how often it did
        self.shed_enabled = shed
        self.shed_count = 0
        #: intakes (any channel) per settled entry past which :meth:`shed` refuses (None: ``ratio``);
        #: ``shed_credits``: its own account, spent by every intake while starved
        self.shed_ratio = ratio if shed_ratio is None else shed_ratio
        self.shed_credits = burst
        #: credits :meth:`reserve` took as requests were parsed, and of those given back (:meth:`release`)
        self.reserved = 0
        self.released = 0
        #: what :meth:`starved` keeps: starved now, and since when (``clock``) the loop has been
        #: under ``busy_at`` while starved (None: it is not); ``episodes``: starvations begun
        self._starved = False
        self._calm_since: float | None = None
        self.episodes = 0

    @property
    def enabled(self) -> bool:
        return self.ratio > 0

    def starved(self) -> bool:
        """The pipeline is starved: intake needs a credit (and may be shed).

        A hysteresis, evaluated at each call (every intake asks): starvation
        **begins** when the backlog is at or above ``high_water`` and the
        loop is busy at least ``busy_at`` of the time, and **ends** only when

        - the backlog falls below ``low_water`` (half the high-water mark,
          one claim batch in production): the pipeline has gained on
          intake; an empty backlog ends it at once; or
        - the loop has been busy less than ``busy_at`` at every call for
          ``calm_s`` on end: it has time to spare, so the backlog has
          another cause (a slow disk, say) and holding intake back gains
          nothing.

        Past capacity, with intake held to the processing rate, the backlog
        stays near ``high_water``, and the busy share dips under ``busy_at``
        whenever the machine makes the process wait for a core (a wait
        after ``select`` returns counts as idle): the test without the
        hysteresis said "not starved" at each such reading, and intake went
        in free, at the offered rate, while it lasted."""
        if not self.enabled:
            return False
        if not self._starved:
            if self.backlog() >= self.high_water and self.busy() >= self.busy_at:
                self._change(True)
        elif self.backlog() < self.low_water:
            self._change(False, "backlog")
        elif self.busy() >= self.busy_at:
            self._calm_since = None
        elif self._calm_since is None:
            self._calm_since = self.clock()
        elif self.clock() - self._calm_since >= self.calm_s:
            self._change(False, "loop_calm")
        return self._starved

    def _change(self, starved: bool, why: str | None = None) -> None:
        """Starvation begins or ends (``why``): logged on each change, not per intake."""
        self._starved, self._calm_since = starved, None
        self.episodes += starved
        extra = {} if why is None else {"why": why}
        log.info("admission.starved" if starved else "admission.recovered", backlog=self.backlog(),
                 loop_busy=round(self.busy(), 2), ratio=self.ratio, shed=self.shed_count, **extra, **self.stats)

    def try_admit(self) -> bool:
        """Admit now (True) or wait for a credit (False)."""
        if not self.starved():
            self.stats["free"] += 1
            return True
        # every intake while starved, credited or about to wait, spends the shedding account
        # (down to one burst below zero, so that it recovers as fast as it went)
        self.shed_credits = max(-self.burst, self.shed_credits - 1)
        if self.credits >= 1 and not self._waiters:
            self.credits -= 1
            self.stats["credited"] += 1
            return True
        return False

    def shed(self) -> bool:
        """Refuse this intake for now (True): shedding is on, the pipeline is
        starved, and no credit is free for it (none left, earlier intakes
        wait for them, or intake already reached ``shed_ratio`` per settled
        entry). Takes nothing: an intake that is not refused takes its
        credit in :meth:`admit` as any other. Asked only by intake whose
        senders retry for long (the API channel, SMTP)."""
        if not self.shed_enabled or not self.starved():
            return False
        if self.credits >= 1 and self.shed_credits >= 1 and not self._waiters:
            return False
        self.shed_count += 1
        return True

    def reserve(self) -> bool | None:
        """:meth:`shed`'s decision made binding, for an intake that asks it
        as the request is parsed (gateway/fast_refusal.py): True — refused
        (as :meth:`shed`, counted in ``shed_count``); False — not refused,
        and the credit it needs is taken now, as :meth:`try_admit` takes it
        (the intake then appends without asking again: ``Ingest.ingest(…,
        reserved=True)``, or gives the credit back with :meth:`release` if
        it never gets that far); None — shedding is off or the pipeline is
        not starved: nothing decided, nothing taken (the intake asks as any
        other).

        Asked without taking, as :meth:`shed` is, a request that passed at
        the parse could still be refused by the handler a loop iteration
        later, once intakes admitted meanwhile had spoken for the credits:
        at 3× the figure a third of the refusals took that path, at over
        twice the CPU of one answered as parsed."""
        if not self.shed_enabled or not self.starved():
            return None
        if self.credits >= 1 and self.shed_credits >= 1 and not self._waiters:
            self.credits -= 1
            self.shed_credits -= 1
            self.stats["credited"] += 1
            self.reserved += 1
            return False
        self.shed_count += 1
        return True

    def release(self) -> None:
        """Give back the credit of a :meth:`reserve` whose intake will not
        append (its body was refused, its connection closed, its task
        cancelled): to the oldest waiting intake if one waits, else kept (up
        to the burst), with its shedding credit."""
        self.released += 1
        self.stats["credited"] -= 1
        self.shed_credits = min(self.burst, self.shed_credits + 1)
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return
        self.credits = min(self.burst, self.credits + 1)

    def settled(self, n: int = 1) -> None:
        """The pipeline settled ``n`` entries: ``ratio`` credits each, handed
        to waiting intakes first (in arrival order)."""
        if not self.enabled:
            return
        self.shed_credits = min(self.burst, self.shed_credits + self.shed_ratio * n)
        credits = self.credits + self.ratio * n
        while self._waiters and credits >= 1:
            _, fut = self._waiters.popleft()
            if not fut.done():
                credits -= 1
                fut.set_result(True)
        self.credits = min(self.burst, credits)  # what nobody waits for is kept up to the burst
        if self._waiters and not self.starved():  # starvation ended (:meth:`starved`): let everyone in
            self.release_all()

    def release_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(True)

    async def admit(self) -> None:
        """Return when this intake may append: at once, on a credit, or
        after ``max_delay_s`` at the latest (never refused).

        A waiting intake costs a future and a place in the FIFO, no timer of
        its own: every wait is ``max_delay_s`` long, so deadlines fall in
        arrival order and one timer, set for the oldest waiter's, ends the
        waits that ran out (:meth:`_expire`). Past capacity on a channel
        that is never refused nearly every intake waits its longest, and a
        timer each (a handle, a heap push, a cancel) was loop time taken
        from the pipeline."""
        if self.try_admit():
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        deadline = loop.time() + self.max_delay_s
        self._waiters.append((deadline, fut))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)
        try:
            credited = await fut
        except BaseException:  # the request went away (client closed, shutdown)
            self._forget(fut)
            raise
        self.stats["waited" if credited else "timed_out"] += 1

    def _expire(self) -> None:
        """The oldest waits ran out: those intakes go through (uncredited),
        and the timer is set again for the oldest still waiting."""
        loop = asyncio.get_running_loop()
        # the loop may run a timer up to its clock's resolution early: a millisecond's slack
        now, waiters = loop.time() + 0.001, self._waiters
        while waiters and waiters[0][0] <= now:
            _, fut = waiters.popleft()
            if not fut.done():
                fut.set_result(False)
        self._timer = loop.call_at(waiters[0][0], self._expire) if waiters else None

    def _forget(self, fut: asyncio.Future) -> None:
        """Drop a waiter that went away (rare: a closed connection, shutdown)."""
        for i, (_, waiting) in enumerate(self._waiters):
            if waiting is fut:
                del self._waiters[i]
                return


# ---------------------------------------------------------------- wiring (gateway/app.py)


class Load:
    """This process's backlog estimate, loop-busy probe and gate, as the app holds them."""

    def __init__(self, store: Any, config: Any, worker: Any):
        p = config.pipeline
        self.backlog = Backlog(store, limit=p.backlog_limit, retry_after_s=p.backlog_retry_after_s)
        self.busy = LoopBusy()
        # an ingest-only node (workers 0) has no pipeline of its own to make room for
        ratio = p.admission_ratio if p.workers > 0 else 0.0
        self.gate = AdmissionGate(backlog=lambda: self.backlog.pending, busy=self.busy, ratio=ratio,
                                  high_water=max(64, 2 * worker.batch), max_delay_s=p.admission_max_delay_s,
                                  shed=p.admission_shed, shed_ratio=p.admission_shed_ratio)
        worker.on_settled.append(self.backlog.settled)
        worker.on_settled.append(self.gate.settled)

    @property
    def needed(self) -> bool:
        return self.gate.enabled or self.backlog.limit > 0

    async def start(self) -> None:
        if self.needed:
            await self.backlog.start()
        if self.gate.enabled:
            await self.busy.start()

    async def stop(self) -> None:
        self.gate.release_all()
        await self.busy.stop()
        await self.backlog.stop()
