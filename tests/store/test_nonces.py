"""Nonces remembered with the journal append, in its transaction, across a restart."""

from __future__ import annotations

import asyncio
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
