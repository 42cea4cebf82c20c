"""The Redis fanout (gateway/fanout.py) stops whole when cancelled, even when
the Redis client answers the cancel with an error: no part of it is left
running (a publisher left behind kept a test's event loop from closing, for
ever, in the faketime re-run under load)."""

from __future__ import annotations

import asyncio

from gateway.fanout import RedisFanout
from gateway.tasks import cancel_and_wait


class ErrorOnCancel:
    """A Redis client as redis-py may behave: a cancel that hits a call comes
    back as a connection error. Publishing never answers; nothing is published
    to us (each read waits its timeout)."""

    def __init__(self) -> None:
        self.publishing = 0  # calls in progress

    def pipeline(self, transaction: bool = False) -> "ErrorOnCancel.Pipe":
        return ErrorOnCancel.Pipe(self)

    def pubsub(self, ignore_subscribe_messages: bool = True) -> "ErrorOnCancel.PubSub":
        return ErrorOnCancel.PubSub(self)

    @staticmethod
    async def _call(seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            raise ConnectionError("Connection closed by server.") from None

    class Pipe:
        def __init__(self, client: "ErrorOnCancel") -> None:
            self.client = client

        async def __aenter__(self) -> "ErrorOnCancel.Pipe":
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        def publish(self, channel: str, message: bytes) -> None:
            pass

        async def execute(self) -> None:
            self.client.publishing += 1
            try:
                await ErrorOnCancel._call(3600)
            finally:
                self.client.publishing -= 1

    class PubSub:
        def __init__(self, client: "ErrorOnCancel") -> None:
            self.client = client

        async def subscribe(self, channel: str) -> None:
            pass

        async def get_message(self, timeout: float) -> None:
            await ErrorOnCancel._call(timeout)

        async def aclose(self) -> None:
            pass


def fanout_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks()
            if not t.done() and getattr(t.get_coro(), "__qualname__", "").startswith("RedisFanout.")]


async def test_a_cancel_the_client_turns_into_an_error_still_stops_every_part_of_the_fanout():
    client = ErrorOnCancel()
    fanout = RedisFanout(client, "og:live")
    task = asyncio.create_task(fanout.run())
    try:
        await asyncio.wait_for(fanout.subscribed.wait(), 10)
        for _ in range(1000):  # its "hello" is being published: the publisher is in its call
            if client.publishing:
                break
            await asyncio.sleep(0.01)
        assert client.publishing == 1
        task.cancel()  # once, as a shutdown or the test's event loop at its close does
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "the fanout did not stop"
        assert fanout_tasks() == [], "a part of the fanout runs on"
        assert client.publishing == 0
    finally:
        await cancel_and_wait(task, *fanout_tasks())  # a failing run must not leave them to the loop's close
