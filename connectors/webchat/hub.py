"""The live hub: the in-process meeting point of visitors' sockets and agents.

The webchat connector publishes what visitors do (messages once durable,
typing previews, the page they are on, read marks, coming and going) and
agents subscribe; agents' typing and read marks come back through
:meth:`LiveHub.agent_typing` / :meth:`LiveHub.agent_read`. Agent *replies*
do not go through here: they go through the replies API and the outbox
(durable first), and the connector's ``send`` pushes them to the visitor
and publishes them here, so every agent watching sees them too.

One process: a subscriber sees what this process's visitors do. With Redis
(several instances) the gateway sets :attr:`LiveHub.relay` and
:attr:`LiveHub.forward` and feeds the other instances' events to
:meth:`LiveHub.receive` (gateway/fanout.py): agents on every instance see
every visitor, and their typing and read marks reach the instance holding
the visitor's socket.

Events (dicts, JSON-ready), each with ``type`` and ``conversation``
(``"webchat:<site>:<visitor>"`` or ``"external:<site>:<user id>"``):

- ``chat``: the conversation's live state — ``site``, ``visitor``, ``name``,
  ``online`` (a socket is open), ``page`` ``{url, title}``, ``ticket_id``;
- ``message``: ``seq``, ``from`` (``visitor``|``agent``), ``text``, ``at``
  (ms), ``cid``/``journal_id`` for a visitor's, ``author`` for an agent's,
  ``files``;
- ``ticket``: ``ticket_id``, ``contact_id``, ``journal_id`` — the pipeline
  committed a visitor message (published by the gateway);
- ``typing``: ``from``, ``on``, ``text`` (the visitor's preview, ≤ 200 chars);
- ``read``: ``from``, ``seq``;
- ``ended``: the conversation ended after inactivity.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

Event = dict[str, Any]


class Subscription:
    """An agent-side listener: ``async for event in sub`` until :meth:`close`.

    A subscriber that falls ``maxsize`` events behind is dropped (its
    iteration ends with ``overflowed`` set): it must reconnect and take a
    fresh :meth:`LiveHub.chats` snapshot rather than stall the hub."""

    def __init__(self, hub: "LiveHub", maxsize: int = 2000):
        self._hub = hub
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self.overflowed = False
        self.closed = False

    def put(self, event: Event) -> None:
        if self.closed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._hub._subs.discard(self)
            try:
                self._queue.put_nowait(None)
            except asyncio.QueueFull:
                self._queue.get_nowait()
                self._queue.put_nowait(None)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when closed (or on timeout)."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None


class LiveHub:
    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        #: conversation → its live state (the ``chat`` event's fields)
        self.live: dict[str, Event] = {}
        #: set by the connector: agent → visitor signals
        self.on_agent_typing: Callable[[str, str, bool], Awaitable[bool]] | None = None
        self.on_agent_read: Callable[[str, str, int], Awaitable[bool]] | None = None
        #: set by the gateway: is an agent of this team (None: any) online?
        self.agents_online: Callable[[str | None], Awaitable[bool]] | None = None
        #: set by the gateway with Redis: this instance's events go to the other instances
        self.relay: Callable[[Event], None] | None = None
        #: set by the gateway with Redis: ``(kind, conversation, agent, on|seq) -> bool`` hands an
        #: agent's signal to the instance holding the visitor (False: no instance knows the chat)
        self.forward: Callable[[str, str, str, Any], bool] | None = None

    # -- agent side -------------------------------------------------------

    def subscribe(self, maxsize: int = 2000) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subs.add(sub)
        return sub

    def chats(self) -> list[Event]:
        """Every conversation with an open socket or recent activity, as ``chat`` events."""
        return [dict(c) for c in self.live.values()]

    async def agent_typing(self, conversation: str, agent: str, on: bool, *, forward: bool = True) -> bool:
        """Show (or stop showing) "agent is typing" to the visitor; False: no such conversation."""
        if self.on_agent_typing is None:
            return False
        ok = await self.on_agent_typing(conversation, agent, on)
        if not ok and forward and self.forward is not None:
            return self.forward("typing", conversation, agent, on)  # the visitor's instance publishes it
        if ok:
            self.publish({"type": "typing", "conversation": conversation, "from": "agent", "agent": agent, "on": on})
        return ok

    async def agent_read(self, conversation: str, agent: str, seq: int, *, forward: bool = True) -> bool:
        """The agent has read the visitor's messages up to ``seq``: the visitor sees "read"."""
        if self.on_agent_read is None:
            return False
        ok = await self.on_agent_read(conversation, agent, seq)
        if not ok and forward and self.forward is not None:
            return self.forward("read", conversation, agent, seq)
        if ok:
            self.publish({"type": "read", "conversation": conversation, "from": "agent", "agent": agent, "seq": seq})
        return ok

    # -- visitor side (the connector) --------------------------------------

    def publish(self, event: Event) -> None:
        for sub in list(self._subs):
            sub.put(event)
        if self.relay is not None:
            self.relay(event)

    def receive(self, event: Event) -> None:
        """Another instance's event: kept in :attr:`live` (``chat``, ``ended``) and given to this
        instance's subscribers, not relayed again."""
        conv = event.get("conversation")
        if event.get("type") == "chat" and isinstance(conv, str):
            self.live[conv] = dict(event)
        elif event.get("type") == "ended" and isinstance(conv, str):
            self.live.pop(conv, None)
        for sub in list(self._subs):
            sub.put(event)

    def update_chat(self, conversation: str, **fields: Any) -> None:
        chat = self.live.setdefault(conversation, {"type": "chat", "conversation": conversation})
        chat.update(fields)
        self.publish(dict(chat))

    def drop_chat(self, conversation: str) -> None:
        if self.live.pop(conversation, None) is not None:
            self.publish({"type": "ended", "conversation": conversation})

    @property
    def subscribers(self) -> int:
        return len(self._subs)
