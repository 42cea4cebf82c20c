"""``omnigate bench --only assign_store``: assignment decisions per second
through the real store (SQLite, WAL, ``synchronous=FULL``, group commit).

The workload is the chooser bench's (``gateway.bench.assign``): 500 agents in
10 teams (80 % online; ``chat`` 5, ``email`` 20, ``call`` 1) and 10,000
tickets with a team, a channel class, a priority and half the time a required
skill. The tickets are committed through the store first (not timed); then
:data:`CONCURRENCY` tasks — as many pipeline workers — each take the next
ticket and await ``store.assign_next`` (one write transaction: read the
ticket and the team's presence and load, choose, write the assignment,
timeline entry and outbox event, or queue the ticket saying why), until every
ticket is decided or :data:`BUDGET_S` has passed. A ticket no agent can take
(e.g. every ``call`` place is held) is queued: that is a decision too.

The baseline is the write floor measured in the same run: the same number of
tasks each awaiting one group-committed, fsync'd SQLite insert per decision
(the pipeline figures' floor). ``detail`` also gives the pure
chooser's rate on the same workload without any store, the CPU per decision
(``cpu_us_per_decision``: the process, the ``COMMIT`` thread included;
``loop_cpu_us_per_decision``: the event loop's thread, where the statements
and the chooser run), and the highest load any agent reached against its
capacity (``over_capacity`` must be 0).

The decisions run with the daemon's garbage-collector setting
(``gc_threshold`` in ``detail``): every daemon that assigns at volume runs the
pipeline worker, which raises the young generation's threshold when it starts
(``gateway.worker.relax_gc``) — the pipeline commit's own assignment
(``sync_in_commit``) runs only under it, and the API's ``assign_next``,
status changes and drains run in that same process. (A node with
``pipeline.workers: 0`` keeps CPython's default but assigns only through
the API.) The thresholds in force before are restored afterwards;
``python -m gateway.bench.assign_store --gc=default`` measures with
CPython's default instead.
"""

from __future__ import annotations

import asyncio
import gc
import tempfile
import time

from gateway.bench import assign as assign_bench
from gateway.bench.load import raw_insert_rate
from gateway.store.sqlite import SQLiteStore
from gateway.worker import relax_gc
from routing.assign import DEFAULT_CHANNEL_CLASSES, AgentState, Demand, drain_queue
from routing.calendar import BusinessCalendar
from routing.directory import BUILTIN_24X7, AgentConfig, Directory, TeamConfig
from routing.model import Identity, ReplyTarget, new_id
from routing.state import Commit, NewContact, NewTicket

CONCURRENCY = 64
BUDGET_S = 15.0
_COMMIT_CHUNK = 500
#: a channel of each capacity class, for the tickets' reply targets
_CHANNEL = {"chat": "webchat", "email": "email", "call": "phone"}


def _directory(agents: list[AgentState]) -> Directory:
    return Directory(
        channel_classes=dict(DEFAULT_CHANNEL_CLASSES),
        calendars={BUILTIN_24X7: BusinessCalendar.twenty_four_seven(BUILTIN_24X7)},
        teams={team: TeamConfig() for team in assign_bench.TEAMS},
        agents=[AgentConfig(id=a.id, name=a.id, teams=sorted(a.teams), skills=dict(a.skills),
                            capacity=dict(a.capacity), presence=a.presence) for a in agents],  # type: ignore[arg-type]
        sla_policies=[],
    )


def _ticket_commit(d: Demand) -> Commit:
    contact, channel = new_id(), _CHANNEL[d.capacity_class]
    return Commit(
        journal_id=new_id(), outcome="processed", message_key=(channel, "bench", d.ticket_id), contact_id=contact,
        new_contact=NewContact(contact, "Customer", d.queued_at), ticket_id=d.ticket_id,
        new_ticket=NewTicket(id=d.ticket_id, subject="bench", channel=channel, created_at=d.queued_at,
                             reply_to=ReplyTarget(channel, "bench", Identity("email", f"{contact}@example.cn")),
                             priority=d.priority, team=d.team, skills=dict(d.skills)),
    )


async def _decide_all(store: SQLiteStore, ticket_ids: list[str]) -> tuple[int, int, float, float, float]:
    """(assigned, queued, seconds, process CPU seconds, event loop thread CPU seconds):
    ``CONCURRENCY`` tasks calling ``assign_next`` until done or out of time."""
    pending = iter(ticket_ids)
    counts = [0, 0]
    cpu0, loop0 = time.process_time(), time.thread_time()
    t0 = time.perf_counter()
    deadline = t0 + BUDGET_S

    async def worker() -> None:
        for ticket_id in pending:
            decision = await store.assign_next(ticket_id, assign_bench.NOW)
            counts[decision.agent is None] += 1
            if time.perf_counter() > deadline:
                return

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (counts[0], counts[1], time.perf_counter() - t0, time.process_time() - cpu0,
            time.thread_time() - loop0)


def _peak_load(agents: list) -> tuple[float, int]:
    """(highest load/capacity of any agent and class, places held beyond capacity)."""
    peak, over = 0.0, 0
    for a in agents:
        for cls, used in a.load.items():
            cap = a.capacity.get(cls, 0)
            peak = max(peak, used / cap if cap else float("inf"))
            over += max(0, used - cap)
    return peak, over


async def figures(daemon_gc: bool = True) -> dict[str, dict]:
    """The figure (``daemon_gc`` False: decisions under CPython's default GC thresholds, not the daemon's)."""
    state, demands = assign_bench.workload()
    t0 = time.perf_counter()
    drain_queue(state, demands, assign_bench.NOW)
    chooser_rate = len(demands) / (time.perf_counter() - t0)
    with tempfile.TemporaryDirectory(prefix="omnigate-bench-assign-") as d:
        store = SQLiteStore.in_dir(d)
        try:
            await store.directory_load(_directory(list(state.agents.values())), assign_bench.NOW)
            for i in range(0, len(demands), _COMMIT_CHUNK):
                await asyncio.gather(*(store.commit(_ticket_commit(x)) for x in demands[i:i + _COMMIT_CHUNK]))
            thresholds = gc.get_threshold()
            if daemon_gc:
                relax_gc()
            try:
                gc_threshold = gc.get_threshold()
                assigned, queued, seconds, cpu, loop_cpu = await _decide_all(store, [x.ticket_id for x in demands])
            finally:
                gc.set_threshold(*thresholds)
            peak, over = _peak_load(await store.list_agents())
        finally:
            await store.close()
    decided = assigned + queued
    rate = decided / seconds
    floor = await raw_insert_rate(decided, [b"decision"] * decided, CONCURRENCY)
    return {"assign_next_store": {
        "value": round(rate, 1), "unit": "decisions/s", "baseline": round(floor, 1),
        "baseline_label": f"{CONCURRENCY} tasks awaiting one group-committed fsync'd SQLite insert per decision",
        "ratio": round(rate / floor, 3),
        "detail": {"agents": len(state.agents), "tickets": len(demands), "decided": decided, "assigned": assigned,
                   "queued": queued, "seconds": round(seconds, 2), "concurrency": CONCURRENCY,
                   "cpu_us_per_decision": round(cpu / decided * 1e6, 1),
                   "loop_cpu_us_per_decision": round(loop_cpu / decided * 1e6, 1),
                   "gc_threshold": list(gc_threshold),
                   "max_load_vs_capacity": round(peak, 3), "over_capacity": over,
                   "pure_chooser_decisions_s": round(chooser_rate, 1)},
    }}


if __name__ == "__main__":  # pragma: no cover
    import json

    import sys

    print(json.dumps(asyncio.run(figures(daemon_gc="--gc=default" not in sys.argv[1:])), indent=2,
                     ensure_ascii=False))
