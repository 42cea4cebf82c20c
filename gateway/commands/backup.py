"""``omnigate backup DEST``: a consistent online copy of the SQLite store and
the attachments, taken while the daemon runs.

The copy is a data folder itself: ``DEST/omnigate.db`` (the store: journal,
contacts, tickets, timelines, tokens, offsets), ``DEST/attachments/`` (the
content-addressed files), whatever else the data folder holds (a
connector's own SQLite file such as ``webchat.db``, its files and keys) and
``DEST/backup.json`` (what was copied, when). Restoring is putting those in
place of a stopped daemon's data folder (README, "Backup and restore").

Consistency: the store is copied with SQLite's online backup API
(``sqlite3.Connection.backup``) in steps of ``--pages`` pages, all inside
one read transaction of a read-only connection. In WAL mode a reader never
blocks the daemon's writer (it only keeps checkpoints from moving past the
snapshot while the copy runs), and holding the one transaction means the
daemon's writes between two steps neither restart the copy nor leak into
it: the copy is the store exactly as it was when the read began, so every
entry acknowledged before the backup started is in it. Attachments are
written (and renamed into place) before the commit that refers to them, so
copying the folder after the snapshot covers every file the copy names;
files already in ``DEST`` with the same size and time are not copied again
(attachments never change once written), which makes repeated backups into
one folder incremental. Every other SQLite file of the folder (a connector's
view, e.g. ``webchat.db``) is copied the same way, each in a snapshot of its
own taken *before* the store's, so it never runs ahead of the store (the
store is the record); the other folders and files after it.

It only reads the data folder and takes no lock a running daemon holds; the
daemon needs no pause. With no daemon running it holds a *shared* lock on
``omnigate.lock`` (a daemon starting meanwhile waits for the next try)
and, when the store has no WAL files, reads the file as immutable, so it
never creates files (``-wal``/``-shm``) in a folder another user owns.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import os
import shutil
import sqlite3
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

DB_NAME = "omnigate.db"
MANIFEST_NAME = "backup.json"


class BackupError(Exception):
    """The backup cannot be taken; the message says why."""


@dataclass
class BackupResult:
    dest: str
    started_at: str
    finished_at: str
    db_bytes: int
    pages: int
    steps: int
    schema_version: int
    journal_entries: int
    last_journal_id: str | None
    #: files copied besides the SQLite files (attachments, a connector's files and keys)
    files_copied: int
    files_present: int
    #: the other SQLite files copied (e.g. webchat.db)
    databases: list[str]
    integrity: str


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@contextmanager
def _source(db: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection on the live store, with the folder's lock shared
    when no daemon holds it (module docstring)."""
    lock_fd = -1
    lock_path = db.parent / "omnigate.lock"
    daemon = False
    if lock_path.exists():
        lock_fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            daemon = True  # the daemon holds it: its -wal and -shm exist
    wal = Path(f"{db}-wal").exists() and Path(f"{db}-shm").exists()
    # no WAL files and nobody writing: the main file is the whole store
    immutable = "&immutable=1" if not daemon and not wal else ""
    conn = sqlite3.connect(f"file:{db}?mode=ro{immutable}", uri=True, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()
        if lock_fd >= 0:
            os.close(lock_fd)


#: Never copied: the lock, the readiness probe, SQLite's companions (the
#: snapshot copies hold everything), temporary files of writes under way.
_SKIP_SUFFIXES = ("-wal", "-shm", "-journal", ".tmp")


def _skipped(name: str) -> bool:
    return name.startswith(".") or name == "omnigate.lock" or name.endswith(_SKIP_SUFFIXES)


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _copy_tree(entry: Path, target: Path) -> tuple[int, int]:
    """Copy a file, or a folder's files, that ``target`` lacks or holds in
    another size or time (attachments never change: same name, same
    content); (copied, already there)."""
    if entry.is_dir() and not entry.is_symlink():
        copied = present = 0
        for child in sorted(entry.iterdir()):
            if not _skipped(child.name):
                c, p = _copy_tree(child, target / child.name)
                copied, present = copied + c, present + p
        return copied, present
    if not entry.is_file():
        return 0, 0
    st = entry.stat()
    try:
        t = target.stat()
        if t.st_size == st.st_size and t.st_mtime_ns == st.st_mtime_ns:
            return 0, 1
    except FileNotFoundError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copy2(entry, tmp)  # mode and times too (a key file stays 0600)
    except FileNotFoundError:
        return 0, 0  # removed meanwhile
    os.replace(tmp, target)
    return 1, 0


def _copy_sqlite(db: Path, dest: Path, *, pages: int, sleep: float, verify: bool,
                 step: Callable[[int, int, int], None] | None = None) -> tuple[str, int, tuple, int]:
    """One SQLite file copied with the backup API inside one read transaction
    (module docstring), checked, renamed into place; (integrity, page count,
    journal count and last id — the store only —, schema version)."""
    tmp = dest / f".{db.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        with _source(db) as src:
            src.execute("BEGIN")  # one read transaction for every step: one snapshot
            journal = src.execute("SELECT count(*), max(id) FROM journal").fetchone() if db.name == DB_NAME else (0, None)
            schema = src.execute("PRAGMA user_version").fetchone()[0]
            out = sqlite3.connect(tmp, isolation_level=None)
            try:
                src.backup(out, pages=pages, progress=step, sleep=sleep)
                src.execute("COMMIT")
                # the copy is a plain rollback-journal file: it opens anywhere
                # without -wal/-shm companions (the daemon turns WAL on again)
                out.execute("PRAGMA journal_mode=DELETE")
                integrity = out.execute("PRAGMA integrity_check").fetchone()[0] if verify else "not checked"
                page_count = out.execute("PRAGMA page_count").fetchone()[0]
            finally:
                out.close()
        if verify and integrity != "ok":
            raise BackupError(f"the copy of {db.name} failed its integrity check: {integrity}")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        for stale in ("-wal", "-shm", "-journal"):
            (dest / f"{db.name}{stale}").unlink(missing_ok=True)  # never pair the new copy with an old WAL
        os.replace(tmp, dest / db.name)
    except sqlite3.Error as exc:
        raise BackupError(f"{db}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return integrity, page_count, journal, schema


def backup(data_dir: str | os.PathLike, dest: str | os.PathLike, *, pages: int = 1024, sleep: float = 0.005,
           verify: bool = True, clock: Callable[[], datetime] = _utc_now,
           progress: Callable[[int, int], None] | None = None) -> BackupResult:
    """Copy ``data_dir``'s store and attachments into ``dest`` (module docstring)."""
    data_dir, dest = Path(data_dir), Path(dest)
    db = data_dir / DB_NAME
    if not db.is_file():
        raise BackupError(f"{db}: no SQLite store here (is --data-dir right?)")
    dest.mkdir(parents=True, exist_ok=True)
    if dest.resolve() == data_dir.resolve() or data_dir.resolve() in dest.resolve().parents:
        raise BackupError(f"{dest} is the data folder itself or inside it; back up into another folder")
    from gateway import datalock

    if datalock.holder(dest) is not None:
        raise BackupError(f"{dest} is a daemon's data folder in use; back up into another folder")
    started = clock()
    steps = 0

    def step(status: int, remaining: int, total: int) -> None:
        nonlocal steps
        steps += 1
        if progress is not None:
            progress(total - remaining, total)

    # a connector's own SQLite files first (views that must not run ahead of
    # the store), then the store, then everything else
    others = sorted(p for p in data_dir.iterdir() if p.is_file() and p.name != DB_NAME and p.suffix == ".db"
                    and not _skipped(p.name) and _is_sqlite(p))
    for other in others:
        _copy_sqlite(other, dest, pages=pages, sleep=sleep, verify=verify)
    integrity, page_count, journal, schema = _copy_sqlite(db, dest, pages=pages, sleep=sleep, verify=verify,
                                                          step=step)
    copied = present = 0
    done = {DB_NAME, *(p.name for p in others), MANIFEST_NAME}
    for entry in sorted(data_dir.iterdir()):
        if entry.name not in done and not _skipped(entry.name):
            c, p = _copy_tree(entry, dest / entry.name)
            copied, present = copied + c, present + p
    result = BackupResult(
        dest=str(dest), started_at=started.isoformat(), finished_at=clock().isoformat(),
        db_bytes=(dest / DB_NAME).stat().st_size, pages=page_count, steps=steps, schema_version=schema,
        journal_entries=journal[0], last_journal_id=journal[1], files_copied=copied,
        files_present=present, databases=[p.name for p in others], integrity=integrity,
    )
    manifest = dest / MANIFEST_NAME
    manifest.with_suffix(".tmp").write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    os.replace(manifest.with_suffix(".tmp"), manifest)
    try:  # the renames themselves survive a crash
        fd = os.open(dest, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return result


def main(argv: list[str], prog: str = "omnigate backup") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="A consistent online copy of the SQLite store, the "
                                 "attachments and the rest of the data folder, safe while the daemon runs "
                                 "(it only reads; README, \"Backup and restore\").")
    from gateway.commands.common import add_config_flags, load_config

    add_config_flags(ap)
    ap.add_argument("dest", metavar="DEST", help="folder to write the copy into (created if missing; "
                    "attachments already there are kept)")
    ap.add_argument("--pages", type=int, default=1024, help="pages copied per step (default 1024)")
    ap.add_argument("--sleep", type=float, default=0.005, help="seconds between steps (default 0.005)")
    ap.add_argument("--no-verify", action="store_true", help="skip PRAGMA integrity_check on the copy")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    config = load_config(args, prog)
    if config is None:
        return 2
    if getattr(config, "redis_url", None):
        print(f"{prog}: with redis_url the state is in Redis: back up Redis (README, \"Backup and restore\"); "
              "this command copies the embedded SQLite store", file=sys.stderr)
        return 2
    if args.pages == 0 or args.sleep < 0:
        print(f"{prog}: --pages must be positive (or -1: all at once), --sleep not negative", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        result = backup(config.data_dir, args.dest, pages=args.pages, sleep=args.sleep, verify=not args.no_verify)
    except BackupError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: {exc.filename or args.dest}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        print(f"{result.dest}: store {result.db_bytes} bytes ({result.journal_entries} journal entries, "
              f"last {result.last_journal_id}, schema {result.schema_version}, integrity {result.integrity}), "
              f"{''.join(d + ', ' for d in result.databases)}files {result.files_copied} copied, "
              f"{result.files_present} already there; "
              f"{time.monotonic() - t0:.1f} s")
    return 0
