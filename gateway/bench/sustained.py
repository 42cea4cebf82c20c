"""``sustained``: the highest offered rate the production daemon keeps up with, end to end.

A real daemon in the production configuration (:mod:`gateway.bench.server`
``production``: shipped rules, directory, info-level JSON logs, metrics,
pipeline on) in its own process; an open-loop load client in another
(``python -m gateway.bench.sustained client PORT RATE SECONDS FIRST [pool|close [api|wechat TIMESTAMP [TRIES]]]``):
requests leave on a fixed schedule whatever the answers, each on an idle
keep-alive connection or on a new one when all are busy (:class:`_Senders`,
up to :data:`MAX_CONNECTIONS`), so that the client is not what holds a
request back, as independent senders would not be; ingest latency is
measured from each request's scheduled time (no coordinated omission). A
fixed pool of 128 connections (the client before) queued the schedule
behind it once answers slowed: past capacity the p99 it reported was its
own queue (15 s at 3× where the server's intake p99 was 0.7 s). ``close``
(a connection per request) costs the server more per intake (accept,
transport, handler per request) and is not the default. The traffic is
:data:`production.MIX`.

The offered rate climbs geometrically (:data:`START_RATE`, ×:data:`STEP`)
in steps of :data:`STEP_S` seconds; after each step the journal (read from
the daemon's SQLite file) gives

- the lag of every entry journaled in the step: ``processed_at −
  received_at`` (202 → processed; one still pending 15 s after the step
  counts as infinite);
- the backlog (pending entries) half-way and at the end of the step.

A step passes when the lag p99 is under 1 s, the backlog left when the load
stops is under half a second of the offered traffic (so it did not grow
through the step), and every request got a 2xx. Once two steps have
failed, :data:`REFINE_STEPS` more bisect (geometrically) between the
highest pass and the first failure above it, each once the backlog a
failing step left is gone, and twice as long (``refine`` in the step,
its length in ``step_s``): the climb's ×1.3
alone left the figure up to a whole step below the capacity (since the
seventh pass of issue 11). The figure is the highest passing rate, with
the ingest p99 at that rate; ``detail.steps`` lists every step.

Past capacity (``detail.past_capacity``): steps of :data:`PAST_STEP_S` at
:data:`PAST_FACTORS` × the figure, each giving the processing rate while the
backlog grows (entries processed per second of load), its ratio to the
figure, the ingest p99 seen by the client and the server's own intake p99
(handler start → answer, :class:`gateway.bench.server.IntakeTimes`; the
refusals answered as they are parsed, gateway/fast_refusal.py, are not in
it, nor is their time in the handler: there is none), the
lag, the server's resident memory and the entries processed per CPU second
the server got (the machine is shared: a rate that falls while that holds
was the machine, not ingest taking the pipeline's share); ``holds`` says
whether every one processed at least :data:`HOLDS_AT` of the figure
(``holds_per_cpu``: per CPU second) (gateway/admission.py keeps the
pipeline its share whatever the ingest rate), ``ingest_bounded`` whether
every one's ingest p99 stayed bounded (:func:`_bounded`), ``summary`` one
line per step (capacity, each factor, control) with both verdicts,
``admission`` what the daemon's gate did, ``control_after`` a step at the
figure's rate again after the overload. While the pipeline is starved the
API channel sheds (503 + ``Retry-After``, ``pipeline.admission_shed``): each
step reports the refusals apart (``refused`` per second, ``refused_total``);
the gate's counters (``admission``) say how many of them were answered as
parsed (``shed_as_parsed``, gateway/fast_refusal.py) rather than by the
handler; the client sends a refused request again after its ``Retry-After`` when
that falls within the step, as an API sender would, and counts it
``refused_deferred`` otherwise (the default 30 s is longer than a step).
Then :data:`WECHAT_FACTORS` × the figure on WeChat callbacks (the bench's
Official Account, safe mode, :func:`gateway.bench.ingest.wechat_requests`:
997 senders, one order question), which are never refused for load — only
delayed by the gate (``wechat_steps``, ``wechat_holds``, ``wechat_ingest_bounded``,
and ``wechat …`` lines in the summary). The client treats them as WeChat
does (since the sixth pass of issue 11): a callback unanswered for
:data:`WECHAT_TIMEOUT_S` is hung up on and sent again, the same request,
:data:`WECHAT_TRIES` tries in all, then given up (``resent``, ``gave_up``
per step): past capacity a daemon that answers late gets the extra
intakes WeChat would send it, and a message WeChat would lose is counted,
not waited for. ``detail.fair_share_flood``
(:mod:`gateway.bench.flood`): the pipeline under an in-process ingest flood
with the gate and without it.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sqlite3
import sys
import time
from pathlib import Path
from collections.abc import Awaitable, Callable

from gateway.bench import production
from gateway.bench.load import Servers, http_post, percentile, read_response
from gateway.bench.server import intake_percentile

START_RATE = 200.0
STEP = 1.3
STEP_S = 5.0
MAX_STEPS = 14
#: bisections between the highest passing step and the first failure above it (:func:`_search`)
REFINE_STEPS = 2
REFINE_STEP_S = 10.0
#: how long the refinement may run past :data:`BUDGET_S`, and wait for a failing step's backlog
REFINE_BUDGET_S = 60.0
SETTLE_S = 30.0
MAX_CONNECTIONS = 4096
WARM_CONNECTIONS = 64
LAG_P99_S = 1.0
BUDGET_S = 150.0
PAST_FACTORS = (1.5, 2.0, 3.0)
#: Past capacity on WeChat callbacks (never refused for load), after the API channel's steps
WECHAT_FACTORS = (2.0, 3.0)
#: What WeChat does with a callback left unanswered: it hangs up after :data:`WECHAT_TIMEOUT_S`
#: and sends the very same request again, :data:`WECHAT_TRIES` tries in all (then the message is lost)
WECHAT_TIMEOUT_S = 5.0
WECHAT_TRIES = 3
PAST_STEP_S = 6.0
HOLDS_AT = 0.9
#: Ingest p99 a step may reach and still count as bounded: WeChat waits 5 s for a callback's answer
#: before it sends it again
INGEST_BOUND_S = 5.0
#: How much the ingest p99 of a step's last third may exceed its middle third's (still bounded)
INGEST_GROWTH = 1.25
#: the load client's connections: ``pool`` (keep-alive, one more when all are busy) or ``close`` (one per request)
CLIENT_MODE = "pool"
#: seconds between two writes of the production server's stats (gateway.bench.server)
STATS_EVERY_S = 1.1


# ---------------------------------------------------------------- the client process


class _Senders:
    """The load client's connections: independent senders, not a fixed pool.

    A request that is due takes an idle keep-alive connection, or opens a
    new one when all are busy — up to :data:`MAX_CONNECTIONS` (well within
    the fd limit), past which it waits for one to come back (counted in
    ``queued``: the only place the client could delay a request itself).
    With ``close`` every request has its own connection (``Connection:
    close``, under the same cap), as a platform whose webhook calls share
    nothing would send."""

    def __init__(self, port: int, close: bool = False):
        self.port = port
        self.close = close
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0  # connections open now (or opening)
        self.peak = 0
        self.queued = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    async def open(self, n: int) -> None:
        """Open ``n`` keep-alive connections before the clock starts."""
        self.idle += [await self._connect() for _ in range(n)]

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.opened += 1
        self.peak = max(self.peak, self.opened)
        try:
            return await asyncio.open_connection("127.0.0.1", self.port)
        except BaseException:
            self.opened -= 1
            raise

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        waited = False
        while True:
            if self.idle:
                return self.idle.pop()
            if self.opened < MAX_CONNECTIONS:
                return await self._connect()
            if not waited:
                self.queued, waited = self.queued + 1, True
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            conn = await fut  # a connection handed back, or None: one closed, open another
            if conn is not None:
                return conn

    def give(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        """A connection whose answer was read: to the oldest waiter, or idle."""
        if self.close:
            self.drop(conn)
            return
        if self._waiters:
            self._waiters.popleft().set_result(conn)
        else:
            self.idle.append(conn)

    def drop(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        conn[1].close()
        self.opened -= 1
        if self._waiters:
            self._waiters.popleft().set_result(None)

    def shut(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _client(port: int, rate: float, seconds: float, first: int, mode: str = "pool", channel: str = "api",
                  timestamp: int = 0, tries: int = 1) -> dict:
    """Send ``rate`` × ``seconds`` requests on the open-loop schedule; each
    request's latency runs from its scheduled time (no coordinated omission).
    ``channel``: ``api`` (:data:`production.MIX`) or ``wechat`` (the bench's
    Official Account, safe mode; callbacks stamped ``timestamp``).

    ``tries`` > 1 (WeChat, :data:`WECHAT_TRIES`): as WeChat does, a callback
    not answered within :data:`WECHAT_TIMEOUT_S` of its sending is hung up
    on and sent again, the same bytes (same nonce, same signature), on
    another connection, up to ``tries`` tries (``resent``); after the last
    one's timeout WeChat gives the message up (``gave_up``: lost for
    WeChat, though a try the server took may be in the journal). Its
    latency runs from its first try's scheduled time. With 1 (the API
    channel; ``wn`` steps) a request waits for its answer however long."""
    total = int(rate * seconds)
    close = mode == "close"
    extra = {"Connection": "close"} if close else None
    if channel == "wechat":
        from gateway.bench.ingest import wechat_requests

        make = wechat_requests(timestamp)
        requests = [make(first + k) for k in range(total)]
        if close:
            requests = [r.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1) for r in requests]
    else:
        requests = [http_post("/channels/api/messages", production.message(first + k, prefix="s"), headers=extra)
                    for k in range(total)]
    latencies: list[float] = []
    thirds: list[list[float]] = [[], [], []]  # by the request's place in the schedule
    errors = [0]
    refusals = _Refusals()
    resent, gave_up = [0], [0]
    senders = _Senders(port, close=close)
    if not close:
        await senders.open(WARM_CONNECTIONS)

    async def send(k: int, scheduled: float, attempt: int = 1) -> None:
        try:
            conn = await senders.take()
        except OSError:
            errors[0] += 1
            return
        try:
            conn[1].write(requests[k])
            async with asyncio.timeout(WECHAT_TIMEOUT_S if tries > 1 else None):  # None: waits however long
                head, _ = await read_response(conn[0])
        except TimeoutError:  # WeChat hangs up, and sends it again while it has tries left
            senders.drop(conn)
            if attempt < tries:
                resent[0] += 1
                await send(k, scheduled, attempt + 1)
            else:
                gave_up[0] += 1
            return
        except (OSError, asyncio.IncompleteReadError):
            errors[0] += 1
            senders.drop(conn)
            return
        senders.give(conn)
        if head[9:10] == b"2":
            latencies.append(time.perf_counter() - scheduled)
            thirds[3 * k // total].append(latencies[-1])
        elif head[9:12] == b"503":
            again = refusals.note(head, t0 + seconds)
            if again is not None:  # the sender comes back after Retry-After, as told
                await asyncio.sleep(max(0.0, again - time.perf_counter()))
                await send(k, again)
        else:
            errors[0] += 1

    tasks = []
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    k = 0
    while k < total:
        now = time.perf_counter()
        due = min(total, int((now - t0) * rate) + 1)
        while k < due:
            tasks.append(asyncio.create_task(send(k, t0 + k / rate)))
            k += 1
        await asyncio.sleep(0.002)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    senders.shut()
    return {"sent": total, "ok": len(latencies), "errors": errors[0], "seconds": elapsed,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "max_ms": max(latencies, default=0.0) * 1000, "connections_peak": senders.peak,
            "p99_ms_by_third": [percentile(t, 99) * 1000 for t in thirds],
            "queued_for_a_connection": senders.queued, "cpu_share": cpu / elapsed, **refusals.counts(),
            "resent": resent[0], "gave_up": gave_up[0]}


class _Refusals:
    """The load client's 503s (the API channel refusing for load: the
    backlog limit, or shedding while the pipeline is starved), honoured as
    an API sender would: the request is sent again ``Retry-After`` seconds
    later — within the step's schedule; one due after it is counted as
    ``deferred`` (a real sender would send it then, after this step)."""

    def __init__(self) -> None:
        self.refused = 0
        self.retried = 0
        self.deferred = 0
        self.retry_after_s: set[float] = set()

    def retry_after(self, head: bytes) -> float:
        """The ``Retry-After`` (seconds) of a 503's head (1 when it has none)."""
        for line in head.split(b"\r\n"):
            if line[:12].lower() == b"retry-after:":
                try:
                    return float(line[12:])
                except ValueError:
                    break
        return 1.0

    def note(self, head: bytes, schedule_end: float) -> float | None:
        """Count a 503; the time to send it again, or None (deferred past the step)."""
        self.refused += 1
        retry = self.retry_after(head)
        self.retry_after_s.add(retry)
        again = time.perf_counter() + retry
        if again > schedule_end:
            self.deferred += 1
            return None
        self.retried += 1
        return again

    def counts(self) -> dict:
        return {"refused": self.refused, "retried": self.retried, "deferred": self.deferred,
                "retry_after_s": sorted(self.retry_after_s)}


def client_main(argv: list[str]) -> None:
    port, rate, seconds, first = int(argv[0]), float(argv[1]), float(argv[2]), int(argv[3])
    mode = argv[4] if len(argv) > 4 else "pool"
    channel, timestamp = (argv[5], int(argv[6])) if len(argv) > 6 else ("api", 0)
    tries = int(argv[7]) if len(argv) > 7 else 1
    print(json.dumps(asyncio.run(_client(port, rate, seconds, first, mode, channel, timestamp, tries))))


# ---------------------------------------------------------------- the driver


def _db(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data_dir / 'omnigate.db'}?mode=ro", uri=True, isolation_level=None)


def _pending(db: sqlite3.Connection) -> int:
    return db.execute("SELECT count(*) FROM journal WHERE status = 'pending'").fetchone()[0]


def _max_seq(db: sqlite3.Connection) -> int:
    return db.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()[0]


def _lags(db: sqlite3.Connection, after_seq: int, until_seq: int) -> list[float]:
    """Seconds from received to processed (both stamped by the daemon's
    clock); an entry still pending 15 s after the step counts as infinite."""
    rows = db.execute("SELECT received_at, processed_at FROM journal WHERE seq > ? AND seq <= ?",
                      (after_seq, until_seq)).fetchall()
    return [(p - r) / 1000 if p is not None else float("inf") for r, p in rows]


def _client_argv(port: int, rate: float, seconds: float, first: int, channel: str = "api",
                 timestamp: int = 0, tries: int = 1) -> list[str]:
    return [sys.executable, "-m", "gateway.bench.sustained", "client", str(port), str(rate), str(seconds), str(first),
            CLIENT_MODE, channel, str(timestamp), str(tries)]


async def _step(servers: Servers, db: sqlite3.Connection, rate: float, first: int, seconds: float = STEP_S,
                drain_s: float = 15.0, channel: str = "api", tries: int | None = None) -> dict:
    """One step at ``rate``; ``tries``: the WeChat client's (None: :data:`WECHAT_TRIES`
    on WeChat, 1 on the API channel)."""
    if tries is None:
        tries = WECHAT_TRIES if channel == "wechat" else 1
    port = servers.ports["production"]
    seq0, cpu0 = _max_seq(db), servers.cpu_seconds("production")
    stats0 = _admission(servers.data_dir("production")) or {}
    intake0 = stats0.get("intake_buckets")
    timestamp = int(stats0.get("clock", 0))  # the server's (pinned) clock, for WeChat's replay window
    proc = await asyncio.create_subprocess_exec(*_client_argv(port, rate, seconds, first, channel, timestamp, tries),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    done0 = _processed_count(db)
    await asyncio.sleep(seconds / 2 + 0.3)  # the client needs a moment to build its requests
    mid, t_mid = _pending(db), time.perf_counter()
    out, err = await proc.communicate()
    end, t_end = _pending(db), time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(f"load client failed: {err.decode()[-800:]}")
    c = json.loads(out)
    seq1 = _max_seq(db)
    done1 = _processed_count(db)
    cpu = servers.cpu_seconds("production") - cpu0
    rss = _rss_mb(servers.pid("production"))
    # let the step's entries finish, so the lag of each is known (bounded wait)
    deadline = time.monotonic() + drain_s
    while _pending(db) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    lags = _lags(db, seq0, seq1)
    growth = (end - mid) / max(0.1, t_end - t_mid)
    lag_p99 = percentile(lags, 99)
    ok = (lag_p99 < LAG_P99_S and end <= max(50, 0.5 * rate) and c["errors"] == 0 and c["refused"] == 0
          and c["ok"] == c["sent"] and c["resent"] == 0)
    by_third = [round(v, 1) for v in c["p99_ms_by_third"]]
    await asyncio.sleep(max(0.0, t_end + STATS_EVERY_S - time.perf_counter()))  # the server's next stats
    stats1 = _admission(servers.data_dir("production")) or {}
    intake1 = stats1.get("intake_buckets")
    return {"offered": round(rate, 1), "step_s": seconds, "ingested": round(c["ok"] / c["seconds"], 1),
            "processed": round((done1 - done0) / c["seconds"], 1),
            # 503s (the API channel refusing for load), honoured as the client's _Refusals says
            "refused": round(c["refused"] / c["seconds"], 1), "refused_total": c["refused"],
            "refused_retried": c["retried"], "refused_deferred": c["deferred"],
            "retry_after_s": c["retry_after_s"],
            # WeChat's own retries (``tries`` > 1): callbacks sent again after 5 s unanswered, and given up
            "tries": tries, "resent": c["resent"], "gave_up": c["gave_up"],
            "ingest_p50_ms": round(c["p50_ms"], 1), "ingest_p99_ms": round(c["p99_ms"], 1),
            "ingest_max_ms": round(c["max_ms"], 1), "ingest_p99_ms_by_third": by_third,
            "ingest_bounded": _bounded(c["p99_ms"], by_third),
            "server_intake_p99_ms": intake_percentile(intake0, intake1, 99) if intake1 else None,
            # what the daemon's gate did in the step (``admission`` counters' growth)
            "gate": _gate_delta(stats0, stats1),
            "client_connections_peak": c["connections_peak"],
            "client_queued_for_a_connection": c["queued_for_a_connection"],
            # the client runs on the same cores: what it takes, the server cannot get
            "client_cpu_share": round(c["cpu_share"], 2),
            "lag_p50_ms": _ms(percentile(lags, 50)), "lag_p99_ms": _ms(lag_p99),
            "backlog_mid": mid, "backlog_end": end, "backlog_growth_per_s": round(growth, 1),
            "server_cpu_us_per_msg": round(cpu / max(1, c["ok"]) * 1e6, 1),
            # the machine is shared: entries processed per CPU second the server got, beside the rate
            "server_cpu_share": round(cpu / c["seconds"], 2),
            "processed_per_cpu_s": round((done1 - done0) / max(cpu, 1e-3), 1),
            "server_rss_mb": rss, "errors": c["errors"], "pass": ok, "_sent": c["sent"]}


#: the gate's counters a step reports the growth of (gateway.bench.server writes them)
GATE_COUNTERS = ("free", "credited", "waited", "timed_out", "shed", "shed_as_parsed", "reserved", "released",
                 "episodes")


def _gate_delta(before: dict, after: dict) -> dict:
    """How the gate's counters grew between two of the server's stats
    (written every second, so a step's edges are ±1 s): intakes admitted
    ``free`` (not starved), on a credit, after a wait; refusals for load
    (``shed``), of them answered as parsed (``shed_as_parsed``,
    gateway/fast_refusal.py) and by the handler (``shed_by_handler``);
    credits taken as requests were parsed (``reserved``) and given back
    unused (``released``); starvations begun (``episodes``: since the
    seventh pass of issue 11, 0 from a daemon before it)."""
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in GATE_COUNTERS}
    delta["shed_by_handler"] = delta["shed"] - delta["shed_as_parsed"]
    return delta


def _bounded(p99_ms: float, by_third: list[float]) -> bool:
    """Ingest latency is bounded through a step: its p99 under
    :data:`INGEST_BOUND_S` and not still climbing at the end (the last third
    of the schedule within :data:`INGEST_GROWTH` of the middle one, plus
    0.1 s of noise)."""
    return p99_ms <= INGEST_BOUND_S * 1000 and by_third[2] <= INGEST_GROWTH * by_third[1] + 100


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _admission(data_dir: Path) -> dict | None:
    """The gate's counters, as the production server writes them (gateway.bench.server)."""
    try:
        return json.loads((data_dir / "admission.json").read_text())
    except (OSError, ValueError):
        return None


async def _past_capacity(servers: Servers, db: sqlite3.Connection, best: dict, first: int) -> tuple[dict, int]:
    capacity, per_cpu_at_capacity = best["offered"], best["processed_per_cpu_s"]
    steps = []
    for factor in PAST_FACTORS:
        s = await _step(servers, db, capacity * factor, first, PAST_STEP_S, drain_s=40.0)
        first += s.pop("_sent")
        steps.append({"factor": factor, **s, "processed_ratio": round(s["processed"] / capacity, 3)})
    # the same rate as the figure again, on the store as the overload left it (more tickets, more
    # queued work): a control that tells a fall caused by load from one caused by the store's growth
    control = await _step(servers, db, capacity, first, PAST_STEP_S, drain_s=40.0)
    first += control.pop("_sent")
    control["processed_ratio"] = round(control["processed"] / capacity, 3)
    # a channel that may not refuse (WeChat gives up after three tries within 15 s): only delayed
    wechat = []
    for factor in WECHAT_FACTORS:
        s = await _step(servers, db, capacity * factor, first, PAST_STEP_S, drain_s=40.0, channel="wechat")
        first += s.pop("_sent")
        wechat.append({"factor": factor, **s, "processed_ratio": round(s["processed"] / capacity, 3)})
    worst = min((s["processed_ratio"] for s in steps), default=None)
    worst_cpu = min((s["processed_per_cpu_s"] for s in steps), default=None)

    def row(name: str, s: dict) -> dict:
        """One line of the summary: did processing hold, did ingest latency stay bounded."""
        held = s["processed"] >= HOLDS_AT * capacity
        held_cpu = s["processed_per_cpu_s"] >= HOLDS_AT * per_cpu_at_capacity
        return {"step": name, "offered": s["offered"], "ingested": s["ingested"], "refused": s["refused"],
                "refused_deferred": s["refused_deferred"], "processed": s["processed"],
                "processed_per_cpu_s": s["processed_per_cpu_s"], "server_cpu_share": s["server_cpu_share"],
                "client_cpu_share": s["client_cpu_share"], "ingest_p99_ms": s["ingest_p99_ms"],
                "server_intake_p99_ms": s["server_intake_p99_ms"], "lag_p99_ms": s["lag_p99_ms"],
                "processing_held": held, "processing_held_per_cpu": held_cpu,
                "ingest_bounded": s["ingest_bounded"]}

    summary = [row("capacity", best), *(row(f"{s['factor']}x", s) for s in steps), row("control", control),
               *(row(f"wechat {s['factor']}x", s) for s in wechat)]
    return {"capacity": capacity, "step_s": PAST_STEP_S, "holds_at": HOLDS_AT,
            "holds": worst is not None and worst >= HOLDS_AT, "min_processed_ratio": worst,
            # the same test on entries per CPU second the server got (on a shared machine the
            # rate follows the CPU the others leave; this follows how the server spends it)
            "processed_per_cpu_s_at_value": per_cpu_at_capacity,
            "holds_per_cpu": worst_cpu is not None and worst_cpu >= HOLDS_AT * per_cpu_at_capacity,
            "ingest_bounded": all(s["ingest_bounded"] for s in steps),
            "summary": summary, "control_after": control,
            "ingest_p99_ms_max": max((s["ingest_p99_ms"] for s in steps), default=None),
            "server_rss_mb_max": max((s["server_rss_mb"] or 0 for s in steps), default=None),
            "admission": _gate_counters(servers.data_dir("production")), "steps": steps,
            # the same verdict for WeChat callbacks (never refused: see the module docstring)
            "wechat_holds": all(s["processed_ratio"] >= HOLDS_AT for s in wechat),
            "wechat_ingest_bounded": all(s["ingest_bounded"] for s in wechat), "wechat_steps": wechat}, first


def _gate_counters(data_dir: Path) -> dict | None:
    stats = _admission(data_dir)
    if stats is not None:
        stats.pop("intake_buckets", None)  # read per step (server_intake_p99_ms)
    return stats


def _ms(seconds: float) -> float | None:
    return round(seconds * 1000, 1) if seconds != float("inf") else None  # None: not processed in time


def _processed_count(db: sqlite3.Connection) -> int:
    return _max_seq(db) - _pending(db)  # rows are never deleted


async def _search(step: Callable[[float, float], Awaitable[dict]], settle: Callable[[], Awaitable[None]],
                  started: float) -> tuple[list[dict], dict | None]:
    """The offered rates tried and the highest that passed: climb
    geometrically from :data:`START_RATE` (×:data:`STEP`) until two steps
    fail, then narrow the gap between the highest pass and the first
    failure above it by :data:`REFINE_STEPS` geometric bisections (each
    after ``settle``: the backlog a failing step left is gone first; each
    :data:`REFINE_STEP_S` long, so that a rate just past the capacity has
    the time to show a growing backlog or lag), so
    that the figure is within ~:data:`STEP`^(1/2^REFINE_STEPS) of the
    capacity rather than up to a whole step below it (``refine`` marks
    those steps)."""
    steps: list[dict] = []
    best: dict | None = None
    rate, fails = START_RATE, 0
    for _ in range(MAX_STEPS):
        if time.monotonic() - started > BUDGET_S:
            break
        s = await step(rate, STEP_S)
        steps.append(s)
        if s["pass"]:
            best = s
        else:
            fails += 1
            if fails >= 2:  # once past capacity, one more step shows the processing rate holds
                break
        rate *= STEP
    if best is None:
        return steps, None
    above = [s["offered"] for s in steps if not s["pass"] and s["offered"] > best["offered"]]
    low, high = best["offered"], min(above, default=0.0)
    for _ in range(REFINE_STEPS if high else 0):
        if time.monotonic() - started > BUDGET_S + REFINE_BUDGET_S:
            break
        await settle()
        s = await step((low * high) ** 0.5, REFINE_STEP_S)
        s["refine"] = True
        steps.append(s)
        if s["pass"]:
            best, low = s, s["offered"]
        else:
            high = s["offered"]
    return steps, best


async def _settle(db: sqlite3.Connection, bound_s: float = SETTLE_S) -> None:
    """Wait (at most ``bound_s``) until nothing is pending in the journal."""
    deadline = time.monotonic() + bound_s
    while _pending(db) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)


async def figures() -> dict[str, dict]:
    started = time.monotonic()
    async with Servers(["production"]) as servers:
        db = _db(servers.data_dir("production"))
        first = 0
        warm = await _step(servers, db, 100, first)  # imports, caches, first tickets
        first += warm.pop("_sent")

        async def step(rate: float, seconds: float) -> dict:
            nonlocal first
            s = await _step(servers, db, rate, first, seconds)
            first += s.pop("_sent")
            return s

        steps, best = await _search(step, lambda: _settle(db), started)
        past = None
        if best:
            await _settle(db)
            past, first = await _past_capacity(servers, db, best, first)
        db.close()
    from gateway.bench import flood

    fair_share = await flood.run()  # the gate on and off under a flood (gateway/bench/flood.py)
    value = best["offered"] if best else 0.0
    top = max(steps, key=lambda s: s["offered"], default=None)
    return {"sustained": {
        "value": value, "unit": "msg/s",
        "baseline": round(top["ingested"], 1) if top else 0.0,
        "baseline_label": "the rate the daemon ingested at the highest offered load (202s per second)",
        "ratio": round(value / top["ingested"], 3) if top and top["ingested"] else None,
        "detail": {"what": "open-loop load (client in its own process) against the daemon in the production "
                           "configuration; highest offered rate with lag p99 (202 → processed) under 1 s and a "
                           "backlog that does not grow",
                   "ingest_p99_ms_at_value": best["ingest_p99_ms"] if best else None,
                   "lag_p99_ms_at_value": best["lag_p99_ms"] if best else None,
                   "mix": production.MIX, "step_s": STEP_S, "step_factor": STEP, "refine_steps": REFINE_STEPS,
                   "client": {"mode": CLIENT_MODE, "max_connections": MAX_CONNECTIONS}, "steps": steps,
                   "past_capacity": past, "fair_share_flood": fair_share},
    }}


async def fixed_steps(seconds: float, rates: list[str]) -> list[dict]:
    """A/B runs at fixed offered rates (``python -m gateway.bench.sustained
    steps SECONDS RATE…``; ``wRATE`` for WeChat callbacks sent again as
    WeChat does when unanswered for 5 s, ``wnRATE`` for WeChat callbacks
    never sent again, as the client did before the sixth pass): one
    production server, a warm-up at 100 req/s, then a step per rate, each
    printed as a JSON line as it ends, and the gate's counters last."""
    rows = []
    async with Servers(["production"]) as servers:
        db = _db(servers.data_dir("production"))
        first = 0
        warm = await _step(servers, db, 100, first)
        first += warm.pop("_sent")
        for rate in rates:
            channel = "wechat" if rate.startswith("w") else "api"
            tries = 1 if rate.startswith("wn") else None
            s = await _step(servers, db, float(rate.lstrip("wn")), first, seconds, drain_s=25.0, channel=channel,
                            tries=tries)
            first += s.pop("_sent")
            rows.append({"channel": channel, **s})
            print(json.dumps(rows[-1]), flush=True)
        print(json.dumps({"admission": _gate_counters(servers.data_dir("production"))}), flush=True)
        db.close()
    return rows


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
    elif sys.argv[1:2] == ["steps"]:
        asyncio.run(fixed_steps(float(sys.argv[2]), sys.argv[3:]))
