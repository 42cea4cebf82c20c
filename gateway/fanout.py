"""Live updates across instances: the in-process live buses, published through Redis.

Two buses live in each daemon: the webchat's hub (connectors/webchat/hub.py:
visitors' messages, typing, chats coming and going; agents' typing and read
marks) and the console's bus (gateway/console/live.py: a tail of the
timeline, woken after each commit). With SQLite there is one instance and
both stay in-process. With ``redis_url`` every instance also publishes what
its own buses see on one Redis pub/sub channel (``<prefix>live``) and
delivers what the others publish to its local subscribers, so an agent's
socket on instance A sees what instance B processed:

- ``hub``: a webchat hub event (B's visitor wrote, typed, left; B's pipeline
  committed the message — the ``ticket`` event). A applies ``chat`` and
  ``ended`` events to its copy of the live chats (its snapshot shows B's
  visitors too) and hands every event to its agent sockets.
- ``signal``: an agent on A types or reads in a conversation whose visitor
  is connected to B; B (the one with the visitor's socket) pushes it to the
  visitor and publishes the resulting hub event for everyone.
- ``nudge``: B committed timeline entries (a message, a reply, a PATCH): A's
  console tail reads the store now instead of at its next poll.
- ``hello`` / ``bye``: an instance that (re)subscribed asks the others to
  publish their live chats again; one that stops has its chats dropped.
- ``alive``: every :data:`REFRESH_S` seconds, the conversations whose visitor
  is connected here.

Why pub/sub and not a stream: these events are hints over durable state.
The console's tail re-reads the timeline from the store (the SSE
``Last-Event-ID`` catch-up is the store's, and the tail polls anyway), a
chat's messages live in its transcript, and a socket that misses events
reconnects for a fresh snapshot. Pub/sub costs one ``PUBLISH`` per event
and nothing kept in Redis; a stream would add trimming and a read cursor per
instance for a guarantee nobody needs here. An instance killed with SIGKILL
sends no ``bye``: every instance names its live chats (``alive``) every
:data:`REFRESH_S` seconds, and a chat not named for :data:`STALE_AFTER`
rounds is dropped (an ``ended`` event) by the others.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, AsyncIterator, Callable

import msgspec
import structlog
from aiohttp import web

from gateway.tasks import cancel_and_wait, stop_if_cancelling

log = structlog.get_logger(__name__)

_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()

#: outgoing events waiting for the publisher; beyond it events are dropped (counted in ``dropped``)
QUEUE_MAX = 10_000
#: kinds that carry no data: one waiting to be published stands for any number sent meanwhile
#: (a busy instance's commits wake the others' console tails once per publish, not once per commit)
COALESCED = frozenset({"nudge"})
#: each instance re-announces its live chats this often; another instance's chat not
#: re-announced for STALE_AFTER rounds is dropped (its instance died without a ``bye``)
REFRESH_S = 30.0
STALE_AFTER = 3


class RedisFanout:
    """Publishes this instance's live events and delivers the other instances'.

    ``send(kind, data)`` never blocks (the buses call it synchronously); a
    publisher task drains the queue, pipelining what queued meanwhile.
    ``on(kind, handler)`` registers the receiver of other instances' events
    of that kind (handlers run on the loop; a handler's error is logged)."""

    def __init__(self, client: Any, channel: str, instance: str | None = None) -> None:
        self.r = client
        self.channel = channel
        self.instance = instance or uuid.uuid4().hex
        self.handlers: dict[str, Callable[[dict, str], Any]] = {}
        self._q: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_MAX)
        self.dropped = 0
        self._queued: set[str] = set()
        #: jobs run every ``refresh_s`` seconds (see :func:`connect_hub`)
        self.periodic: list[Callable[[], None]] = []
        self.refresh_s = REFRESH_S
        #: the running :meth:`run` (set by the daemon)
        self.task: asyncio.Task | None = None
        #: set once the subscription is live (tests wait for it)
        self.subscribed = asyncio.Event()

    def on(self, kind: str, handler: Callable[[dict, str], Any]) -> None:
        self.handlers[kind] = handler

    def send(self, kind: str, data: dict) -> None:
        if kind in COALESCED:
            if kind in self._queued:
                return  # one not yet published says the same: wake up and read the store
            self._queued.add(kind)
        try:
            self._q.put_nowait(_enc.encode({"i": self.instance, "k": kind, "d": data}))
        except asyncio.QueueFull:
            self._queued.discard(kind)
            self.dropped += 1

    async def run(self) -> None:
        """Publish, subscribe and tick until cancelled; cancelled, stop all
        three and wait for each. (``gather`` alone returned as soon as one
        ended cancelled, and a publisher whose cancel redis-py had turned into
        an error went on alone, for ever: a shutdown, or a test's event loop,
        then waited on it.)"""
        parts = [asyncio.ensure_future(p) for p in (self._publisher(), self._subscriber(), self._ticker())]
        try:
            await asyncio.gather(*parts)
        finally:
            await cancel_and_wait(*parts)

    async def _ticker(self) -> None:
        """Every ``refresh_s``: the periodic jobs (chats re-announced, silent instances' chats dropped)."""
        while True:
            await asyncio.sleep(self.refresh_s)
            for job in list(self.periodic):
                try:
                    job()
                except Exception:  # noqa: BLE001
                    log.warning("fanout.periodic_failed", exc_info=True)

    async def _publisher(self) -> None:
        while True:
            batch = [await self._q.get()]
            while not self._q.empty() and len(batch) < 256:
                batch.append(self._q.get_nowait())
            self._queued.clear()  # from now on a nudge is news again
            for attempt in range(3):
                try:
                    async with self.r.pipeline(transaction=False) as pipe:
                        for msg in batch:
                            pipe.publish(self.channel, msg)
                        await pipe.execute()
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - Redis down: the events are hints, retry a little then drop
                    stop_if_cancelling()  # the error may be a cancel redis-py turned into one
                    if attempt == 2:
                        self.dropped += len(batch)
                        log.warning("fanout.publish_failed", events=len(batch), error=str(exc)[:200])
                    else:
                        await asyncio.sleep(0.2 * (attempt + 1))

    async def _subscriber(self) -> None:
        delay = 0.1
        while True:
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                self.send("hello", {})  # the others publish their live chats again (ours may be stale)
                self._deliver_local("resubscribed", {}, self.instance)
                delay = 0.1
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        self._receive(msg["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down or restarted: subscribe again
                self.subscribed.clear()
                stop_if_cancelling()  # the error may be a cancel redis-py turned into one
                log.warning("fanout.subscription_lost", error=str(exc)[:200], retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                try:
                    await pubsub.aclose()
                except Exception:  # noqa: BLE001
                    pass

    def _receive(self, raw: bytes) -> None:
        try:
            msg = _dec.decode(raw)
            sender, kind, data = msg["i"], msg["k"], msg["d"]
        except (msgspec.DecodeError, KeyError, TypeError):
            log.warning("fanout.bad_message", size=len(raw))
            return
        if sender == self.instance:
            return
        self._deliver_local(kind, data, sender)

    def _deliver_local(self, kind: str, data: dict, sender: str) -> None:
        handler = self.handlers.get(kind)
        if handler is None:
            return
        try:
            result = handler(data, sender)
            if asyncio.iscoroutine(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(_log_failure)
        except Exception:  # noqa: BLE001 - one bad event must not stop the subscription
            log.warning("fanout.handler_failed", kind=kind, exc_info=True)

    async def flush(self, timeout: float = 2.0) -> None:
        """Wait (a little) until what was sent is published (the ``bye`` at shutdown)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not self._q.empty() and loop.time() < end:
            await asyncio.sleep(0.01)


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("fanout.handler_failed", error=str(task.exception())[:200])


def connect_hub(fanout: RedisFanout, conn: Any) -> None:
    """The webchat connector's hub events go out; the others' come in (see the module doc)."""
    hub = conn.hub
    remote: dict[str, str] = {}  # conversation → the instance whose visitor it is
    rounds: dict[str, int] = {}  # conversation → refresh rounds since its instance last announced it

    def local(conv: str) -> bool:
        """Is the visitor's conversation this instance's (a socket of the visitor here)? The
        transcript is shared (connectors/webchat/redis_transcript.py): every instance knows every
        conversation, the one holding the socket speaks for its live state."""
        return bool(conn.sessions.get(conv))

    def relay(event: dict) -> None:
        fanout.send("hub", event)

    async def receive(event: dict, sender: str) -> None:
        conv = event.get("conversation")
        if isinstance(conv, str):
            kind = event.get("type")
            if kind == "chat":
                if local(conv):
                    return  # ours: our own chat events are the truth (a "ticket" event updates them)
                remote[conv] = sender
                rounds[conv] = 0
            elif kind == "ended":
                remote.pop(conv, None)
                rounds.pop(conv, None)
            elif kind == "ticket" and local(conv) and event.get("ticket_id"):
                # another instance's worker committed it (and wrote the shared transcript)
                await conn.ticket_committed(conv, event["ticket_id"], store=False)
        hub.receive(event)
        if isinstance(conv, str) and local(conv):
            await conn.deliver_remote(event)  # a reply sent there, the agent typing there… reach our visitor

    async def signal(data: dict, sender: str) -> None:
        conv, agent = data.get("conversation"), data.get("agent")
        if not isinstance(conv, str) or not isinstance(agent, str) or not local(conv):
            return  # not ours: the instance with the visitor answers
        if data.get("kind") == "typing":
            await hub.agent_typing(conv, agent, bool(data.get("on")), forward=False)
        elif data.get("kind") == "read" and isinstance(data.get("seq"), int):
            await hub.agent_read(conv, agent, data["seq"], forward=False)

    def forward(kind: str, conversation: str, agent: str, value: Any) -> bool:
        if conversation not in remote:
            return False
        fanout.send("signal", {"kind": kind, "conversation": conversation, "agent": agent,
                               "on" if kind == "typing" else "seq": value})
        return True

    def hello(_: dict, sender: str) -> None:
        for conv, chat in list(hub.live.items()):
            if conv not in remote:
                fanout.send("hub", dict(chat))

    def bye(_: dict, sender: str) -> None:
        for conv in [c for c, who in remote.items() if who == sender]:
            remote.pop(conv, None)
            rounds.pop(conv, None)
            hub.receive({"type": "ended", "conversation": conv})

    def alive(data: dict, sender: str) -> None:
        for conv in data.get("conversations") or ():
            if remote.get(conv) == sender:
                rounds[conv] = 0

    def refresh() -> None:
        """Say which chats are ours; drop others' chats their instance stopped naming (SIGKILL: no bye)."""
        fanout.send("alive", {"conversations": [c for c in hub.live if c not in remote]})
        for conv in list(remote):
            rounds[conv] = rounds.get(conv, 0) + 1
            if rounds[conv] > STALE_AFTER:
                remote.pop(conv, None)
                rounds.pop(conv, None)
                hub.receive({"type": "ended", "conversation": conv})

    hub.relay = relay
    hub.forward = forward
    fanout.on("hub", receive)
    fanout.on("signal", signal)
    fanout.on("hello", hello)
    fanout.on("bye", bye)
    fanout.on("alive", alive)
    fanout.periodic.append(refresh)


def setup(app: Any) -> None:
    """With ``redis_url``: one fanout per daemon, wired to the webchat hub and
    the console's bus (both stay in-process with SQLite)."""
    from gateway import keys

    config, store = app[keys.CONFIG], app[keys.STORE]
    if not config.redis_url or getattr(store, "backend", None) != "redis":
        return
    fanout = RedisFanout(store.r, store.k.live_channel)
    app[FANOUT] = fanout
    conn = app[keys.CONNECTORS].get("webchat")
    if conn is not None:
        connect_hub(fanout, conn)
    from gateway.console import CONSOLE

    console = app.get(CONSOLE)
    if console is not None:
        bus = console.bus
        bus.relay = lambda: fanout.send("nudge", {})
        fanout.on("nudge", lambda _d, _s: bus.wake())
        fanout.on("resubscribed", lambda _d, _s: bus.wake())
    app.cleanup_ctx.append(_fanout_ctx)


async def _fanout_ctx(app: Any) -> AsyncIterator[None]:
    fanout = app[FANOUT]
    task = fanout.task = asyncio.create_task(fanout.run(), name="omnigate-fanout")
    yield
    fanout.send("bye", {})
    await fanout.flush()
    await cancel_and_wait(task)


FANOUT: web.AppKey[RedisFanout] = web.AppKey("fanout", RedisFanout)
