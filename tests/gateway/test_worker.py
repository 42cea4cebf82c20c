"""The worker's per-sender ordering primitive."""

from __future__ import annotations

import asyncio

from gateway.worker import KeyedLocks


async def test_keyed_locks_serve_one_key_in_request_order_and_clean_up():
    locks = KeyedLocks()
    order: list[str] = []

    async def job(key: str, name: str, hold: float) -> None:
        async with locks(key):
            order.append(f"{name}+")
            await asyncio.sleep(hold)
            order.append(f"{name}-")

    await asyncio.gather(job("a", "a1", 0.02), job("a", "a2", 0), job("b", "b1", 0), job("a", "a3", 0))
    assert order.index("a1-") < order.index("a2+") < order.index("a2-") < order.index("a3+")
    assert order.index("b1+") < order.index("a1-")  # another sender does not wait
    assert locks._locks == {}
