"""Assignment and SLAs at runtime: the directory, the hook, the scheduler, the API.

The decisions are pure (``routing.assign``, ``routing.sla``) and the state
changes are single store transactions (``gateway/store/sqlite_assign.py``);
this module only says *when* they run:

- at start-up, the directory (``config.directory``, parsed and checked by
  the app factory: a wrong file stops the daemon with its line number) has
  its agents upserted
  into the store so every instance and the API see them, and every queue
  drained (capacity may have grown);
- with each pipeline commit, the ticket's assignment and SLA are brought in
  line with it (new ticket, team/skills changed, reopened): in the commit's
  own transaction where the store offers it (``sync_in_commit``, SQLite),
  else right after it (:meth:`Assignment.after_commit`);
- every ``tick_s`` the scheduler takes the overflow steps and fires the SLA
  events that are due (their due times live in the store: a restart forgets
  nothing), and sweeps the tickets changed since its last look — which
  repairs a crash between a commit and its hook, and picks up replies that
  set ``first_response_at``;
- the HTTP API: agents and presence, ticket status, stats.

Every time comes from :attr:`Assignment.clock`, so tests drive time instead
of sleeping. Without ``config.directory`` assignment and SLAs are off: no
hook, no scheduler; status changes still work.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, AsyncIterator, Callable

import msgspec
import structlog
from aiohttp import web

from gateway import keys
from gateway.api import read_body, ticket_or_404
from gateway.api_types import (
    AgentBody,
    AgentList,
    AgentPresenceView,
    AgentPutView,
    PresenceBody,
    Stats,
    StatusBody,
    TicketStatusView,
)
from gateway.auth import AUTH, Principal, forbid, require, visible_ticket
from gateway.http_util import Problem, guarded_routes, json_response
from gateway.metrics import Metrics
from gateway.store.base import InvalidTransition, NotFound, Store, StoreError
from gateway.worker import Pipeline
from routing.directory import AgentConfig, Directory, agent_errors, parse_directory
from routing.model import Inbound, utcnow
from routing.state import CommitResult

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()
_SWEEP_KEY = "assignment.sweep_cursor"


class Assignment:
    """The runtime of assignment and SLAs for one app (see the module docstring)."""

    def __init__(self, store: Store, directory: Directory | None, metrics: Metrics, *,
                 clock: Callable[[], datetime] = utcnow, tick_s: float = 1.0, sweep_batch: int = 500) -> None:
        self.store = store
        self.enabled = directory is not None
        self.directory = directory if directory is not None else parse_directory("", "<no directory>")
        self.metrics = metrics
        self.clock = clock
        self.tick_s = tick_s
        self.sweep_batch = sweep_batch
        self._cursor: str | None = None

    # -- lifecycle

    async def start(self) -> None:
        decisions = await self.store.directory_load(self.directory, self.clock())
        self._cursor = await self.store.state_get(_SWEEP_KEY)
        log.info("assignment.started", enabled=self.enabled, agents=len(self.directory.agents),
                 policies=len(self.directory.sla_policies), drained=len(decisions))
        await self.refresh_stats()

    async def after_commit(self, inbound: Inbound, result: CommitResult) -> None:
        """Pipeline hook: assign a new (or changed, or reopened) ticket and time its SLA."""
        if result.ticket_id is not None:
            await self.store.ticket_sync([result.ticket_id], self.clock())

    async def tick(self) -> dict[str, int]:
        """One scheduler round; returns what it did (for logs and tests)."""
        now = self.clock()
        done = {
            "overflowed": await self.store.overflow_due(now),
            "sla_events": len(await self.store.sla_fire_due(now)),
            "swept": await self._sweep(now),
        }
        if any(done.values()):
            log.info("assignment.tick", **done)
        return done

    async def _sweep(self, now: datetime) -> int:
        """Sync the tickets changed since the last sweep (its cursor is kept in the store)."""
        changed, cursor = await self.store.changed_tickets(self._cursor, self.sweep_batch)
        if changed:
            await self.store.ticket_sync(changed, now)
        if cursor != self._cursor:  # the store may leave out tickets synced in their commit
            self._cursor = cursor
            if cursor is not None:
                await self.store.state_set(_SWEEP_KEY, cursor)
        return len(changed)

    async def run(self) -> None:
        """The scheduler loop (a task of :func:`cleanup_ctx`)."""
        ticks = 0
        while True:
            try:
                await self.tick()
                ticks += 1
                if ticks % 10 == 0:
                    await self.refresh_stats()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next round retries; the store keeps what is due
                log.exception("assignment.tick_failed")
            await asyncio.sleep(self.tick_s)

    # -- stats, readiness

    def fallback_years(self) -> dict[str, list[int]]:
        """Calendar → years it answered with weekly hours alone (holiday data missing)."""
        return {name: years for name, cal in self.directory.calendars.items() if (years := cal.fallback_years())}

    async def refresh_stats(self) -> dict[str, Any]:
        stats = await self.store.assign_stats()
        stats["calendar_fallback_years"] = self.fallback_years()
        self.metrics.set_assignment_stats(stats)
        return stats

    def readiness(self) -> tuple[bool, dict]:
        """Never fails readiness: a fallback year is a warning an operator must see, not an outage."""
        detail: dict[str, Any] = {"enabled": self.enabled, "agents": len(self.directory.agents),
                                  "sla_policies": len(self.directory.sla_policies)}
        fallback = self.fallback_years()
        if fallback:
            detail["calendar_fallback_years"] = fallback
            detail["warning"] = "holiday data does not cover these years: weekly hours only; upgrade " \
                                "chinesecalendar or add the notice as closed/open dates with arranged_years"
        return True, detail


ASSIGNMENT: web.AppKey[Assignment] = web.AppKey("assignment")


def setup(app: web.Application, pipeline: Pipeline) -> None:
    """Register the runtime for ``app[keys.DIRECTORY]`` (loaded and checked by the app
    factory): the after-commit hook, routes, readiness and metrics."""
    runtime = Assignment(app[keys.STORE], app[keys.DIRECTORY], app[keys.METRICS], clock=pipeline.clock)
    app[ASSIGNMENT] = runtime
    if runtime.enabled:
        in_commit = getattr(app[keys.STORE], "sync_in_commit", None)
        if in_commit is not None:  # the store syncs in the commit's own transaction
            in_commit(lambda: runtime.clock())
        else:
            pipeline.after_commit.append(runtime.after_commit)
    app[keys.READINESS]["assignment"] = runtime.readiness
    app[keys.METRICS].register_collector(app[keys.METRICS].assignment_families)
    app.router.add_routes(guarded_routes(routes))


async def cleanup_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load the directory into the store, then run the scheduler (before the worker starts)."""
    runtime = app[ASSIGNMENT]
    await runtime.start()
    # every instance runs the scheduler: on Redis each step is exactly-once by itself (the
    # store's "assign" lease fences it), so a dead instance's schedule never waits for a take-over
    task = asyncio.create_task(runtime.run(), name="omnigate-assignment") if runtime.enabled else None
    yield
    from gateway.tasks import cancel_and_wait

    await cancel_and_wait(task)


# ---------------------------------------------------------------- HTTP


async def _auth(request: web.Request, role: str = "agent") -> tuple[Assignment, Principal]:
    return request.app[ASSIGNMENT], await require(request, role)


async def _agent(runtime: Assignment, agent_id: str) -> Any:
    agent = await runtime.store.get_agent(agent_id)
    if agent is None:
        raise Problem(404, "Not found", f"no agent {agent_id}")
    return agent


@routes.get("/api/v1/agents")
async def agents_list(request: web.Request) -> web.Response:
    runtime, _ = await _auth(request)
    return json_response(AgentList(items=await runtime.store.list_agents()))


@routes.get("/api/v1/agents/{id}")
async def agent_get(request: web.Request) -> web.Response:
    runtime, _ = await _auth(request)
    return json_response(await _agent(runtime, request.match_info["id"]))


@routes.put("/api/v1/agents/{id}")
async def agent_put(request: web.Request) -> web.Response:
    """Create or change an agent (teams, skills with levels, capacity per
    channel class, roles); presence is set on its own endpoint. Checked
    against the directory like an agent in the YAML; the team queues drain at
    once (raised capacity takes waiting tickets). The directory YAML stays
    the source of truth for the agents it lists: it is applied again at start-up."""
    runtime, p = await _auth(request, "admin")
    if not runtime.enabled:
        raise Problem(409, "No directory", "assignment needs a directory (teams, calendars): set `directory`")
    body = await read_body(request, AgentBody)
    try:
        config = AgentConfig(id=request.match_info["id"], name=body.name, login=body.login, roles=body.roles,
                             teams=body.teams, skills=body.skills, capacity=body.capacity)
    except (ValueError, msgspec.ValidationError) as exc:  # AgentConfig's checks: a skill level, a capacity
        text = str(exc)
        field = "$.skills" if text.startswith("skill ") else "$.capacity" if text.startswith("capacity ") else "$"
        raise Problem(400, "Invalid agent", text, field=field) from None
    errors = agent_errors(runtime.directory, config)
    if errors:
        field, message = errors[0]
        raise Problem(400, "Invalid agent", "; ".join(m for _, m in errors), field=field)
    decisions = await runtime.store.put_agent(config.to_model(), runtime.clock())
    request.app[AUTH].invalidate()  # the agent's teams are cached with its tokens
    log.info("agent.put", agent_id=config.id, teams=config.teams, assigned=len(decisions), actor=p.agent_id)
    view = await _agent(runtime, config.id)
    return json_response(AgentPutView(**msgspec.structs.asdict(view),
                                      assigned=[d.ticket_id for d in decisions if d.agent]))


@routes.put("/api/v1/agents/{id}/presence")
async def agent_presence(request: web.Request) -> web.Response:
    """Set presence; ``return_chats`` puts the agent's open chats back in the queue. Drains at once.
    Agents set their own; leads their team members'; admins anyone's."""
    runtime, p = await _auth(request)
    body = await read_body(request, PresenceBody)
    agent_id = request.match_info["id"]
    if agent_id != p.agent_id and not p.is_admin:
        target = await _agent(runtime, agent_id)
        if not (p.role == "lead" and set(target.teams) & p.teams):
            raise forbid(f"{p.agent_id} may set only their own presence" + (
                " and their team members'" if p.role == "lead" else ""))
    try:
        returned = await runtime.store.set_presence(agent_id, body.presence, runtime.clock(),
                                                    return_chats=body.return_chats, actor=p.agent_id)
    except NotFound as exc:
        raise Problem(404, "Not found", str(exc)) from None
    log.info("agent.presence", agent_id=agent_id, presence=body.presence, returned=len(returned))
    view = await _agent(runtime, agent_id)
    return json_response(AgentPresenceView(**msgspec.structs.asdict(view), returned=returned))


@routes.post("/api/v1/tickets/{id}/status")
async def ticket_status(request: web.Request) -> web.Response:
    """Change a ticket's status: frees capacity on solved/closed and drains the queue at once."""
    runtime, p = await _auth(request)
    body = await read_body(request, StatusBody)
    store = runtime.store
    ticket = await ticket_or_404(request)
    visible_ticket(p, ticket)
    try:
        changed = await store.set_status(ticket.id, body.status, runtime.clock(), p.agent_id)
    except InvalidTransition as exc:
        raise Problem(409, "Invalid status transition", str(exc), status_from=ticket.status,
                      status_to=body.status) from None
    except StoreError as exc:
        raise Problem(409, "Cannot change status", str(exc)) from None
    log.info("ticket.status", ticket_id=ticket.id, status=body.status, changed=changed, actor=p.agent_id)
    record = await store.ticket_record(ticket.id)
    return json_response(TicketStatusView(**msgspec.structs.asdict(record), changed=changed))


@routes.get("/api/v1/stats")
async def stats(request: web.Request) -> web.Response:
    runtime, _ = await _auth(request, "lead")
    return json_response(msgspec.convert(await runtime.refresh_stats(), Stats))
