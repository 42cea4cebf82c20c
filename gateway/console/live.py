"""The console's live channel: one in-process bus fed by a tail of the
timeline, served to browsers as server-sent events.

The cursor is the timeline's ``seq`` (a rowid that only grows). One tail task
per daemon reads ``seq > last`` after every pipeline commit (the pipeline's
``after_commit`` hook nudges it), after the console's own writes, and at
least every ``poll_s`` (replies, PATCHes and SLA timers written by other
parts) — while no stream listens it only moves its cursor to the tail's end
(reading and decoding every row for nobody cost ~3 % of a production
pipeline message). Each event's SSE ``id`` is its ``seq``: a browser that reconnects —
after a network blip or a daemon restart — sends ``Last-Event-ID`` and gets
exactly the entries after it from the store (no gap), then the live ones
(the hand-over skips anything at or below what it already sent: no
duplicate).

Events are ``{"type": "timeline", "seq", "kind", "ticket_id", "ticket_number",
"contact_id", "channel", "restricted"}``; other producers (the webchat's live
chats) publish their own ``type`` with :meth:`Bus.publish` — see
ARCHITECTURE.md ("The agent console").
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator, Callable

import structlog
from aiohttp import web

from gateway.auth import Principal, can_read_ticket
from gateway.tasks import cancel_and_wait

log = structlog.get_logger(__name__)


class _Facts:
    __slots__ = ("team", "assignee")

    def __init__(self, team: str | None, assignee: str | None) -> None:
        self.team, self.assignee = team, assignee


def event_of(row: Any) -> dict:
    e = row.entry
    return {"type": "timeline", "seq": row.seq, "id": e.id, "kind": e.kind, "ticket_id": e.ticket_id,
            "ticket_number": row.ticket_number, "contact_id": e.contact_id, "channel": e.channel,
            "team": row.ticket_team, "assignee": row.ticket_assignee}


def visible_event(p: Principal, event: dict) -> dict | None:
    """The event as ``p`` may see it: a ticket they may not open is a summary (number and kind only)."""
    if event.get("type") != "timeline":
        return event if event.get("agent_id") in (None, p.agent_id) or p.is_admin else None
    if event.get("ticket_id") and not can_read_ticket(p, _Facts(event.get("team"), event.get("assignee"))):
        return {"type": "timeline", "seq": event["seq"], "kind": "restricted", "ticket_number":
                event.get("ticket_number"), "contact_id": event.get("contact_id"), "restricted": True}
    return event


class Bus:
    """Subscribers get every event; the tail publishes timeline rows in seq order."""

    def __init__(self, store: Any, poll_s: float = 0.5) -> None:
        self.store = store
        self.poll_s = poll_s
        self.last_seq = 0
        self._subs: set[asyncio.Queue] = set()
        self._wake = asyncio.Event()
        #: the open event streams' handler tasks: ended on shutdown (a browser reconnects)
        self.streams: set = set()
        #: set with Redis (gateway/fanout.py): a nudge here wakes the other instances' tails too
        self.relay: Callable[[], None] | None = None

    def close_streams(self) -> None:
        for task in list(self.streams):
            task.cancel()

    def wake(self) -> None:
        """Read the store now (this instance only)."""
        self._wake.set()

    def nudge(self, *_: Any) -> None:
        self._wake.set()
        if self.relay is not None:
            self.relay()

    async def after_commit(self, *_: Any) -> None:  # the pipeline's hook signature
        self.nudge()

    def publish(self, event: dict) -> None:
        for q in list(self._subs):
            if q.qsize() < 1000:
                q.put_nowait(event)

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subs.discard(q)

    async def run(self) -> None:
        self.last_seq = await self.store.timeline_last_seq()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                if not self._subs:
                    # nobody listens: skip the rows (a stream that opens later
                    # catches up from the store itself). Read only where the
                    # tail ends now, and move there if still nobody listens —
                    # a stream that subscribed meanwhile gets every row after
                    # the old cursor (its catch-up drops what it already sent)
                    last = await self.store.timeline_last_seq()
                    if not self._subs:
                        self.last_seq = max(self.last_seq, last)
                        continue
                while True:
                    rows = await self.store.timeline_tail(self.last_seq)
                    for row in rows:
                        self.last_seq = row.seq
                        self.publish(event_of(row))
                    if len(rows) < 500:
                        break
            except Exception:  # noqa: BLE001 - next round
                log.warning("console.tail_failed", exc_info=True)


async def stream(request: web.Request, p: Principal, bus: Bus, after: int) -> web.StreamResponse:
    """The SSE response: catch-up from the store after ``after``, then live events."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    task = asyncio.current_task()
    if task is not None:
        bus.streams.add(task)
    q = bus.subscribe()  # first: nothing published from now on is missed
    sent = after
    try:
        await resp.write(b"retry: 1000\n\n")
        while True:  # catch-up, in pages
            rows = await bus.store.timeline_tail(sent)
            for row in rows:
                sent = await _send(resp, p, event_of(row), sent)
            if len(rows) < 500:
                break
        while True:
            try:
                event = await asyncio.wait_for(q.get(), 15)
            except asyncio.TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            sent = await _send(resp, p, event, sent)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        bus.unsubscribe(q)
        bus.streams.discard(task)
    return resp


async def _send(resp: web.StreamResponse, p: Principal, event: dict, sent: int) -> int:
    seq = event.get("seq")
    if isinstance(seq, int):
        if seq <= sent:
            return sent  # already sent by the catch-up
    shown = visible_event(p, event)
    if shown is not None:
        head = f"id: {seq}\n" if isinstance(seq, int) else ""
        await resp.write(f"{head}event: {shown['type']}\ndata: {json.dumps(shown, ensure_ascii=False)}\n\n".encode())
    return seq if isinstance(seq, int) else sent


async def bus_ctx(app: web.Application, key: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(app[key].run(), name="omnigate-console-live")
    yield
    await cancel_and_wait(task)


Nudge = Callable[..., None]
