"""``omnigate backup``: a consistent online copy while a real daemon keeps
writing; the copy opens, passes ``PRAGMA integrity_check``, holds every
entry acknowledged before the backup began with its attachments, and a
daemon started on it (the README's restore) serves them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway import datalock
from gateway.commands.backup import BackupError, backup
from tests.gateway.test_datalock import OMNIGATE, _env, _free_port, _http, _wait_up


class _Writers:
    """Threads posting API-channel messages (every third with an attachment)
    until stopped; each acknowledgement is recorded with when it arrived."""

    def __init__(self, base: str, n: int = 2) -> None:
        self.base, self.acks, self.errors = base, [], []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def _run(self, w: int) -> None:
        i = 0
        while not self._stop.is_set():
            body = {"external_id": f"w{w}-{i}", "sender": {"kind": "email", "value": f"c{i % 40}@example.cn"},
                    "subject": f"order {i}", "text": f"message {i} from writer {w}"}
            data = f"attachment {w}-{i}".encode() * 50
            if i % 3 == 0:
                body["attachments"] = [{"name": f"a{i}.txt", "content_type": "text/plain",
                                        "data_base64": base64.b64encode(data).decode()}]
            try:
                status, answer = _http("POST", f"{self.base}/channels/api/messages", body)
            except OSError as exc:
                self.errors.append(repr(exc))
                return
            if status != 202:
                self.errors.append(status)
                return
            with self._lock:
                self.acks.append((time.monotonic(), answer["journal_id"],
                                  hashlib.sha256(data).hexdigest() if i % 3 == 0 else None))
            i += 1

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def snapshot(self) -> list:
        with self._lock:
            return list(self.acks)


@pytest.mark.integration
def test_backup_while_the_daemon_writes_is_consistent_complete_and_restores(tmp_path):
    data, dest = tmp_path / "data", tmp_path / "backup"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = subprocess.Popen([OMNIGATE, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data)],
                              env=_env(OMNIGATE_RULES_DIR=str(tmp_path / "no-rules")), cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    writers = _Writers(base)
    try:
        _wait_up(base, daemon)
        writers.start()
        while len(writers.snapshot()) < 300:  # a store of some size, still being written
            assert not writers.errors, writers.errors
            time.sleep(0.05)
        before = writers.snapshot()  # every entry acknowledged before the backup began
        t0 = time.monotonic()
        # one page per step with a pause between steps: the copy takes many
        # steps while the writers go on (no lock, no pause of the daemon)
        run = subprocess.run([OMNIGATE, "backup", "--data-dir", str(data), "--pages", "1", "--sleep", "0.005",
                              "--json", str(dest)], env=_env(), cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
        t1 = time.monotonic()
        during = [a for a in writers.snapshot() if t0 < a[0] < t1]
        writers.stop()
        assert run.returncode == 0, run.stderr
        assert not writers.errors, writers.errors
        assert daemon.poll() is None
        result = json.loads(run.stdout)
        assert result["steps"] > 1 and result["integrity"] == "ok"
        assert during, "the daemon acknowledged no write while the backup ran"
        all_acked = writers.snapshot()
    finally:
        writers.stop()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0

    copy = sqlite3.connect(f"file:{dest / 'omnigate.db'}?mode=ro", uri=True)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    in_copy = {r[0] for r in copy.execute("SELECT id FROM journal")}
    missing = [jid for _, jid, _ in before if jid not in in_copy]
    assert not missing, f"{len(missing)} acknowledged entries not in the copy"
    assert result["journal_entries"] == len(in_copy) < len(all_acked)  # one snapshot, not a moving copy
    # every attachment the copy's timeline names is in the copied folder
    refs = set()
    for (atts,) in copy.execute("SELECT attachments FROM timeline WHERE attachments IS NOT NULL"):
        refs |= {a["storage_ref"] for a in json.loads(atts) if a.get("storage_ref")}
    copy.close()
    assert refs, "no processed attachment in the copy"
    assert all((dest / "attachments" / r[:2] / r[2:]).is_file() for r in refs)
    assert result["files_copied"] >= len(refs)
    assert not list(dest.glob("omnigate.db-*")) and not list(dest.glob(".*.tmp"))

    # restore (README): a daemon on the copy serves what was acknowledged before the backup
    port2 = _free_port()
    restored = subprocess.Popen([OMNIGATE, "serve", "--listen", f"127.0.0.1:{port2}", "--data-dir", str(dest)],
                                env=_env(OMNIGATE_RULES_DIR=str(tmp_path / "no-rules")), cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_up(f"http://127.0.0.1:{port2}", restored)
        for _, jid, _ in (before[0], before[len(before) // 2], before[-1]):
            deadline = time.monotonic() + 60
            while True:
                status, entry = _http("GET", f"http://127.0.0.1:{port2}/api/v1/journal/{jid}")
                assert status == 200
                if entry["status"] == "processed" or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert entry["status"] == "processed" and entry["ticket_id"]
    finally:
        restored.send_signal(signal.SIGTERM)
        assert restored.wait(timeout=30) == 0


def _small_store(data: Path) -> None:
    """A store with a few entries, written by the store itself (no daemon)."""
    import asyncio

    from gateway.store.sqlite import SQLiteStore

    async def fill() -> None:
        store = SQLiteStore.in_dir(data)
        for i in range(5):
            await store.journal_append("api", "api", f"k{i}", b"{}")
        await store.close()

    asyncio.run(fill())


def test_backup_of_a_stopped_store_creates_nothing_in_the_data_folder_and_repeats_incrementally(tmp_path):
    data, dest = tmp_path / "data", tmp_path / "copy"
    _small_store(data)
    att = data / "attachments" / "ab"
    att.mkdir(parents=True)
    (att / ("c" * 62)).write_bytes(b"x")
    (att / ".tmpfile.1.tmp").write_bytes(b"half")  # a write under way is not copied
    files = data / "webchat-files" / "cd"  # a connector's own things beside the store
    files.mkdir(parents=True)
    (files / ("cd" * 32)).write_bytes(b"png")
    (files / "half.123.tmp").write_bytes(b"p")
    (data / "webchat.key").write_bytes(b"k" * 32)
    (data / "webchat.key").chmod(0o600)
    view = sqlite3.connect(data / "webchat.db")
    view.execute("PRAGMA journal_mode=WAL")
    view.execute("CREATE TABLE t (v TEXT)")
    view.execute("INSERT INTO t VALUES ('view')")
    view.commit()
    view.close()
    datalock.acquire(data).release()  # a daemon ran here once: the lock file exists, unheld
    before = sorted(p.name for p in data.iterdir())
    first = backup(data, dest, pages=2, sleep=0)
    assert sorted(p.name for p in data.iterdir()) == before  # no -wal/-shm left in the source
    assert first.journal_entries == 5 and first.integrity == "ok"
    # the attachment, the connector's key (its mode kept) and its file; webchat.db as a database
    assert (first.files_copied, first.files_present) == (3, 0) and first.databases == ["webchat.db"]
    assert (dest / "webchat.key").read_bytes() == b"k" * 32
    assert (dest / "webchat.key").stat().st_mode & 0o777 == 0o600
    assert (dest / "webchat-files" / "cd" / ("cd" * 32)).read_bytes() == b"png"
    assert not (dest / "attachments" / "ab" / ".tmpfile.1.tmp").exists()
    assert not (dest / "webchat-files" / "cd" / "half.123.tmp").exists()
    assert not (dest / "omnigate.lock").exists()
    assert json.loads((dest / "backup.json").read_text())["journal_entries"] == 5
    second = backup(data, dest)
    assert (second.files_copied, second.files_present) == (0, 3)
    conn = sqlite3.connect(dest / "omnigate.db")
    assert conn.execute("SELECT count(*) FROM journal").fetchone()[0] == 5
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # no WAL companions needed
    conn.close()
    conn = sqlite3.connect(dest / "webchat.db")
    assert conn.execute("SELECT v FROM t").fetchall() == [("view",)]
    conn.close()


def test_backup_refuses_the_data_folder_itself_a_folder_in_use_and_a_folder_without_a_store(tmp_path):
    data = tmp_path / "data"
    _small_store(data)
    with pytest.raises(BackupError, match="the data folder itself"):
        backup(data, data)
    with pytest.raises(BackupError, match="inside it"):
        backup(data, data / "backups" / "latest")
    busy = tmp_path / "busy"
    with datalock.acquire(busy):
        with pytest.raises(BackupError, match="in use"):
            backup(data, busy)
    with pytest.raises(BackupError, match="no SQLite store"):
        backup(tmp_path / "nothing", tmp_path / "out")
    run = subprocess.run([OMNIGATE, "backup", "--data-dir", str(tmp_path / "nothing"), str(tmp_path / "out")],
                         env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "no SQLite store" in run.stderr
