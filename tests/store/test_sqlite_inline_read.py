"""The pipeline's inline snapshot read on SQLite: on the writer's connection
between groups (its page cache survives its own commits), on the loop's
read-only connection while a group is open — never a group's uncommitted
rows, never waiting for its COMMIT; the reads of one turn of the loop share
one read transaction, which a group or the next turn ends."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

from gateway.store.sqlite import SQLiteStore


def _count(conn) -> int:
    return conn.execute("SELECT count(*) FROM state").fetchone()[0]


def _insert(conn, key: str) -> None:
    conn.execute("INSERT INTO state (key, value, updated_at) VALUES (?, 'v', 0)", (key,))


def _inline_now(store: SQLiteStore) -> int:
    """An inline read run to its end right here (it never suspends)."""
    coro = store._read(_count, inline=True)
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("an inline read suspended")


async def test_an_inline_read_while_a_group_runs_sees_committed_rows_only(tmp_path):
    store = SQLiteStore.in_dir(tmp_path)
    try:
        seen = []

        def write(conn) -> None:
            _insert(conn, "a")
            seen.append(_inline_now(store))  # inside the group: its own row is not committed yet

        await store._write(write)
        seen.append(await store._read(_count, inline=True))
        assert seen == [0, 1]
    finally:
        await store.close()


async def test_an_inline_read_during_the_commit_neither_waits_nor_sees_the_group(tmp_path):
    store = SQLiteStore.in_dir(tmp_path)
    release, committing = threading.Event(), asyncio.Event()

    class HeldCommits(ThreadPoolExecutor):
        def submit(self, fn, *args):  # the COMMIT waits until the test has read
            committing.set()
            return super().submit(lambda: (release.wait(10), fn(*args))[1])

    store._writer._thread = HeldCommits(max_workers=1)
    try:
        write = asyncio.create_task(store._write(_insert, "a"))
        await asyncio.wait_for(committing.wait(), 10)
        assert store._writer.in_group
        assert await store._read(_count, inline=True) == 0  # answered at once, from the reader
        release.set()
        await write
        assert not store._writer.in_group
        assert await store._read(_count, inline=True) == 1
    finally:
        release.set()
        await store.close()


async def test_the_reads_of_one_turn_share_one_read_transaction(tmp_path):
    store = SQLiteStore.in_dir(tmp_path)
    seen: list[str] = []
    try:
        store._writer.conn.set_trace_callback(seen.append)
        assert await asyncio.gather(*(store._read(_count, inline=True) for _ in range(5))) == [0] * 5
        assert seen.count("BEGIN") == 1 and not store._writer.conn.in_transaction  # ended at the next turn
        await store._read(_count, inline=True)
        assert seen.count("BEGIN") == 2  # a later turn: a transaction of its own
    finally:
        store._writer.conn.set_trace_callback(None)
        await store.close()


async def test_a_group_ends_the_turns_read_transaction_and_the_next_read_sees_it(tmp_path):
    store = SQLiteStore.in_dir(tmp_path)
    try:
        assert _inline_now(store) == 0  # the turn's read transaction is open now …
        assert store._writer.conn.in_transaction
        await store._write(_insert, "a")  # … and the group (its BEGIN IMMEDIATE) ends it first
        assert _inline_now(store) == 1
    finally:
        await store.close()


async def test_another_connections_commit_is_seen_from_the_next_turn(tmp_path):
    store = SQLiteStore.in_dir(tmp_path)
    other = sqlite3.connect(tmp_path / "omnigate.db", isolation_level=None)
    try:
        assert _inline_now(store) == 0
        _insert(other, "b")  # another process commits during the turn
        assert _inline_now(store) == 0  # the turn's snapshot, as a read a moment earlier
        await asyncio.sleep(0)
        assert _inline_now(store) == 1
    finally:
        other.close()
        await store.close()
