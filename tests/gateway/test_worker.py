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


async def test_a_waiter_cancelled_before_its_turn_leaves_no_lock_behind():
    locks = KeyedLocks()
    held, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with locks("a"):
            held.set()
            await release.wait()

    async def waiter() -> None:
        async with locks("a"):
            raise AssertionError("cancelled before its turn")

    h = asyncio.create_task(holder())
    await held.wait()
    w = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    assert locks._locks["a"][1] == 2
    w.cancel()
    await asyncio.gather(w, return_exceptions=True)
    assert locks._locks["a"][1] == 1
    release.set()
    await h
    assert locks._locks == {}


def test_conflict_backoff_grows_is_capped_and_spread() -> None:
    """Workers racing on one contact (several instances on Redis) must not
    retry in lock-step: the pause doubles from 1 ms, is capped at 200 ms, and
    20 tries span seconds, not the ~0.2 s that let a busy contact's message
    fail with "gave up after 20 conflicting commits"."""
    from gateway.worker import conflict_backoff_s

    mid = [conflict_backoff_s(a, jitter=lambda: 0.5) for a in range(20)]
    assert mid[0] == 0.001 and mid[1] == 0.002 and mid[5] == 0.032
    assert max(mid) == 0.2 and sum(mid) > 2.0
    assert conflict_backoff_s(3, jitter=lambda: 0.0) == 0.004 and conflict_backoff_s(3, jitter=lambda: 1.0) == 0.012


async def test_an_entry_met_by_an_unreachable_store_stays_pending_and_is_processed_later(tmp_path) -> None:
    """A store that cannot be reached for a moment (Redis restarting) is not
    the entry's fault: it is not failed (the journal write would succeed once
    the store is back, and the message would wait for a manual replay), it
    stays pending for the worker's next try."""
    import json

    from gateway.store.base import StoreUnavailable
    from gateway.store.sqlite import SQLiteStore
    from gateway.worker import Pipeline
    from routing.pipeline import Settings

    store = SQLiteStore.in_dir(tmp_path)
    try:
        body = {"external_id": "u1", "sender": {"kind": "email", "value": "li.lei@example.cn"}, "text": "在吗"}
        await store.journal_append("api", "api", "u1", json.dumps(body).encode())
        [entry] = await store.claim_pending(0, 10)
        real_snapshot, calls = store.snapshot, []

        async def snapshot_once_unreachable(*args):
            calls.append(args)
            if len(calls) == 1:
                raise StoreUnavailable("redis unavailable: Error 111 connecting")
            return await real_snapshot(*args)

        store.snapshot = snapshot_once_unreachable
        pipeline = Pipeline(store, Settings())
        try:
            await pipeline.process(entry)
        except StoreUnavailable:
            pass
        else:
            raise AssertionError("the worker must see the store was unreachable")
        assert (await store.journal_counts())["pending"] == 1
        assert (await pipeline.process(entry)).status == "processed"
        assert (await store.journal_counts())["processed"] == 1
    finally:
        await store.close()


async def test_stopping_a_loop_that_swallows_its_cancellation_does_not_hang() -> None:
    """A loop that catches one cancel (3.11's wait_for can; a client library
    can turn it into an error) is cancelled again: cleanup finishes."""
    from gateway.tasks import cancel_and_wait

    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 1:
                    continue  # the first cancel is lost
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(task, None, retry_s=0.05), 10)
    assert task.cancelled() and swallowed == 2


def test_a_running_worker_collects_young_cycles_less_often_and_never_more_often():
    import gc

    from gateway.worker import GC_GEN0_THRESHOLD, relax_gc

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        relax_gc()
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 10, 10)
        gc.set_threshold(50_000, 5, 5)  # an operator's own setting that is already more relaxed stays
        relax_gc()
        assert gc.get_threshold() == (50_000, 5, 5)
        gc.set_threshold(0)  # the collector off stays off
        relax_gc()
        assert gc.get_threshold()[0] == 0
    finally:
        gc.set_threshold(*saved)
