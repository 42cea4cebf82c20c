"""The live hub on its own: fan-out to every subscriber, the live chat
snapshot, and a subscriber that falls behind is dropped, not waited for."""

from __future__ import annotations

from connectors.webchat.hub import LiveHub


async def test_fan_out_snapshot_and_slow_subscriber():
    hub = LiveHub()
    a, b = hub.subscribe(), hub.subscribe(maxsize=3)
    hub.update_chat("webchat:s:v1", site="s", online=True)
    hub.publish({"type": "message", "conversation": "webchat:s:v1", "text": "hi"})
    assert (await a.get(1))["type"] == "chat" and (await a.get(1))["text"] == "hi"
    assert hub.chats() == [{"type": "chat", "conversation": "webchat:s:v1", "site": "s", "online": True}]
    for n in range(5):  # b never reads
        hub.publish({"type": "typing", "conversation": "webchat:s:v1", "n": n})
    assert b.overflowed and b.closed and hub.subscribers == 1
    got = [e async for e in b]  # what it had, then the end
    assert len(got) <= 3
    hub.drop_chat("webchat:s:v1")
    assert hub.chats() == []
    a.close()
    assert hub.subscribers == 0


async def test_agent_signals_reach_only_known_conversations():
    hub = LiveHub()
    assert not await hub.agent_typing("webchat:s:v1", "ann", True)  # no connector behind it
    seen = []

    async def typing(conv, agent, on):
        seen.append((conv, agent, on))
        return conv == "webchat:s:v1"

    hub.on_agent_typing = typing
    sub = hub.subscribe()
    assert await hub.agent_typing("webchat:s:v1", "ann", True)
    assert not await hub.agent_typing("webchat:s:nope", "ann", True)
    e = await sub.get(1)
    assert (e["type"], e["from"], e["agent"]) == ("typing", "agent", "ann")
    assert await sub.get(0.05) is None  # the unknown conversation published nothing
