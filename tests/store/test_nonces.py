"""Nonces remembered with the journal append, in its transaction, across a restart."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

from connectors.base import Nonce, NonceReused
from gateway.store.sqlite import SQLiteStore

NOW = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)


def nonce(value: str = "n1", now: datetime = NOW) -> Nonce:
    return Nonce(scope="wechat:wx1", value=value, expires=now + timedelta(seconds=300), now=now)


async def test_a_nonce_survives_a_restart(tmp_path) -> None:
    store = SQLiteStore.in_dir(tmp_path)
    first = await store.journal_append("wechat", "wx1", "k1", b"<xml>a</xml>", nonce=nonce())
    assert first.created
    await store.close()
    store = SQLiteStore.in_dir(tmp_path)
    try:
        again = await store.journal_append("wechat", "wx1", "k1", b"<xml>a</xml>", nonce=nonce())
        assert (again.journal_id, again.created) == (first.journal_id, False)  # a redelivery
        with pytest.raises(NonceReused):  # same nonce, another body (and another key)
            await store.journal_append("wechat", "wx1", "k2", b"<xml>forged</xml>", nonce=nonce())
        assert [e.key for e in await store.journal_list()] == ["k1"]  # nothing stored for the refusal
    finally:
        await store.close()


async def test_concurrent_appends_with_one_nonce_store_one_body(store) -> None:
    """Both backends (on Redis the nonce is checked and kept in the APPEND
    script, so instances share it: tests/store/test_redis.py)."""
    results = await asyncio.gather(
        *(store.journal_append("wechat", "wx1", f"k{i}", f"<xml>{i}</xml>".encode(), nonce=nonce())
          for i in range(5)),
        store.journal_append("wechat", "wx1", "plain", b"<xml>p</xml>"),  # the hot path beside them
        return_exceptions=True)
    assert sum(isinstance(r, NonceReused) for r in results) == 4
    assert len(await store.journal_list()) == 2


async def test_expired_nonces_are_purged(tmp_path) -> None:
    store = SQLiteStore.in_dir(tmp_path)
    try:
        await store.journal_append("wechat", "wx1", "k1", b"a", nonce=nonce("old"))
        later = NOW + timedelta(hours=1)
        await store.journal_append("wechat", "wx1", "k2", b"b", nonce=nonce("new", later))
        # "old" expired before "new" came: forgotten (its timestamp is refused by the window anyway)
        assert (await store.journal_append("wechat", "wx1", "k3", b"c", nonce=nonce("old", later))).created
    finally:
        await store.close()


async def test_a_run_of_nonce_appends_answers_each_as_one_at_a_time(store) -> None:
    """Appends queued together (on SQLite one writer run: ``journal_append_nonce.many``)
    answer each entry as appending them one after the other would."""
    seen = await store.journal_append("wechat", "wx1", "k0", b"<xml>0</xml>", nonce=nonce("n0"))
    results = await asyncio.gather(
        store.journal_append("wechat", "wx1", "k1", b"<xml>1</xml>", nonce=nonce("n1")),  # new
        store.journal_append("wechat", "wx1", "k0", b"<xml>0</xml>", nonce=nonce("n0")),  # WeChat's retry
        store.journal_append("wechat", "wx1", "kx", b"<xml>forged</xml>", nonce=nonce("n0")),  # replayed signature
        store.journal_append("wechat", "wx1", "k1", b"<xml>1</xml>", nonce=nonce("n1")),  # retry within the run
        store.journal_append("wechat", "wx1", "ky", b"<xml>other</xml>", nonce=nonce("n1")),  # replay within the run
        store.journal_append("wechat", "wx1", "k1", b"<xml>1 again</xml>", nonce=nonce("n2")),  # key seen: redelivery
        store.journal_append("wechat", "wx1", "plain", b"<xml>p</xml>"),  # the hot path between them
        store.journal_append("wechat", "wx1", "k3", b"<xml>3</xml>", nonce=nonce("n3")),  # new after it
        return_exceptions=True)
    new, retry, forged, retry_in_run, forged_in_run, same_key, plain, after = results
    assert new.created and plain.created and after.created
    assert (retry.journal_id, retry.created) == (seen.journal_id, False)
    assert (retry_in_run.journal_id, retry_in_run.created) == (new.journal_id, False)
    assert (same_key.journal_id, same_key.created) == (new.journal_id, False)
    assert isinstance(forged, NonceReused) and isinstance(forged_in_run, NonceReused)
    assert sorted(e.key for e in await store.journal_list()) == ["k0", "k1", "k3", "plain"]
    # the nonces the run stored are remembered: n2 with its body (answered by k1's entry)
    again = await store.journal_append("wechat", "wx1", "k1", b"<xml>1 again</xml>", nonce=nonce("n2"))
    assert (again.journal_id, again.created) == (new.journal_id, False)
    with pytest.raises(NonceReused):
        await store.journal_append("wechat", "wx1", "kz", b"<xml>z</xml>", nonce=nonce("n3"))


async def test_a_failing_run_stores_none_of_its_nonces(tmp_path, monkeypatch) -> None:
    """A statement failing inside a run of nonce appends undoes the run (its
    savepoint), not the writer's group, and every entry of it fails."""
    from gateway.store import sqlite as sqlite_mod

    store = SQLiteStore.in_dir(tmp_path)
    try:
        real = sqlite_mod._journal_append_many

        def failing(conn, rows):
            real(conn, rows)
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(sqlite_mod, "_journal_append_many", failing)
        results = await asyncio.gather(
            *(store.journal_append("wechat", "wx1", f"k{i}", f"<xml>{i}</xml>".encode(), nonce=nonce(f"n{i}"))
              for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, sqlite3.OperationalError) for r in results)
        monkeypatch.setattr(sqlite_mod, "_journal_append_many", real)
        assert await store.journal_list() == []
        # nothing remembered: the same requests go through now
        assert (await store.journal_append("wechat", "wx1", "k0", b"<xml>0</xml>", nonce=nonce("n0"))).created
    finally:
        await store.close()


async def test_an_expired_nonce_is_forgotten_before_it_is_looked_up(tmp_path) -> None:
    """A row lives until its request's timestamp leaves the window: a later
    request reusing the nonce (a new timestamp, within the window) is new
    even when no other append purged the row in between (as on Redis, where
    the row's TTL ends it)."""
    store = SQLiteStore.in_dir(tmp_path)
    try:
        await store.journal_append("wechat", "wx1", "k1", b"a", nonce=nonce("n1"))
        later = NOW + timedelta(hours=1)
        assert (await store.journal_append("wechat", "wx1", "k2", b"b", nonce=nonce("n1", later))).created
    finally:
        await store.close()
