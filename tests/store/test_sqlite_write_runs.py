"""A group commit's consecutive replayable writes share one savepoint
(``gateway.store.sqlite._Writer._run_replayable``): a write that fails still fails
alone, and the others land as if each had had its own savepoint."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from gateway.store.base import Conflict
from gateway.store.sqlite import SQLiteStore, replayable
from routing.model import Inbound, Sender, utcnow
from routing.pipeline import Settings, decide, lookup

calls: Counter[str] = Counter()


@replayable
def _put(conn, key: str, fail: bool) -> str:
    calls[key] += 1
    conn.execute("INSERT INTO state (key, value, updated_at) VALUES (?, 'v', 0)", (key,))
    if fail:
        raise Conflict(f"{key} conflicts")
    return key


def _keys(store: SQLiteStore) -> set[str]:
    return {r[0] for r in store._writer.conn.execute("SELECT key FROM state WHERE key LIKE 'k%'")}


async def _one_group(store: SQLiteStore, writes: list) -> list:
    """``writes`` queued together: they run in one group commit."""
    before = store.group_commit_stats[0]
    out = await asyncio.gather(*(store._write(fn, *args) for fn, *args in writes), return_exceptions=True)
    assert store.group_commit_stats[0] == before + 1
    return out


async def test_a_run_without_failures_runs_each_write_once(tmp_path):
    store = SQLiteStore.in_dir(tmp_path)
    calls.clear()
    out = await _one_group(store, [(_put, f"k{i}", False) for i in range(6)])
    assert out == [f"k{i}" for i in range(6)]
    assert _keys(store) == {f"k{i}" for i in range(6)}
    assert set(calls.values()) == {1}
    await store.close()


@pytest.mark.parametrize("failing", [0, 3, 5])
async def test_a_failing_write_fails_alone_and_the_others_land(tmp_path, failing):
    store = SQLiteStore.in_dir(tmp_path)
    calls.clear()
    out = await _one_group(store, [(_put, f"k{i}", i == failing) for i in range(6)])
    assert isinstance(out[failing], Conflict)
    assert [o for i, o in enumerate(out) if i != failing] == [f"k{i}" for i in range(6) if i != failing]
    # the failed write's row went with it; the others' rows are there once (they ran again)
    assert _keys(store) == {f"k{i}" for i in range(6) if i != failing}
    await store.close()


async def test_other_writes_between_replayable_ones_keep_their_own_savepoints(tmp_path):
    store = SQLiteStore.in_dir(tmp_path)

    def plain(conn, key: str) -> str:  # not replayable: runs alone, as before
        conn.execute("INSERT INTO state (key, value, updated_at) VALUES (?, 'v', 0)", (key,))
        raise RuntimeError("plain fails")

    out = await _one_group(store, [(_put, "k0", False), (_put, "k1", False), (plain, "k2"),
                                   (_put, "k3", False), (_put, "k4", True)])
    assert out[:2] == ["k0", "k1"] and isinstance(out[2], RuntimeError) and out[3] == "k3"
    assert isinstance(out[4], Conflict)
    assert _keys(store) == {"k0", "k1", "k3"}
    await store.close()


def _msg(ext: str, sender: str) -> Inbound:
    return Inbound(channel="api", account="api", external_id=ext, kind="message",
                   sender=Sender("email", sender, "A"), text=f"text of {ext}")


async def test_pipeline_commits_in_one_group_one_stale(tmp_path):
    """Two new contacts for one identity decided from the same snapshot: the
    second conflicts inside the group; the commits before and after it land."""
    store = SQLiteStore.in_dir(tmp_path)
    settings = Settings()
    msgs = [_msg("a1", "a@example.cn"), _msg("b1", "b@example.cn"), _msg("b2", "b@example.cn"),
            _msg("c1", "c@example.cn")]
    commits = []
    for m in msgs:
        j = (await store.journal_append("api", "api", m.external_id, b"{}")).journal_id
        look = lookup(m, settings)
        commits.append(decide(m, j, await store.snapshot(look, utcnow()), settings, look))
    before = store.group_commit_stats[0]
    out = await asyncio.gather(*(store.commit(c) for c in commits), return_exceptions=True)
    assert store.group_commit_stats[0] == before + 1
    assert isinstance(out[2], Conflict)
    assert [o.outcome for i, o in enumerate(out) if i != 2] == ["processed"] * 3
    assert (await store.journal_get(commits[2].journal_id)).status == "pending"  # nothing of it stayed
    counts = await store.counts()
    assert (counts["contacts"], counts["tickets"]) == (3, 3)
    for c, o in zip(commits, out):
        if c is not commits[2]:
            assert (await store.journal_get(c.journal_id)).status == "processed"
            assert (await store.get_ticket(o.ticket_id)) is not None
    await store.close()
