"""One writer per data folder: ``<data_dir>/omnigate.lock``.

The daemon (``omnigate serve``) holds an exclusive ``flock`` on the file for
its whole life and writes its pid and listen address into it. A second
daemon on the same folder finds the lock taken and refuses to start, naming
the holder. CLI commands that write (``omnigate replay``) ask
:func:`holder`: when a daemon holds the lock they go through its API (the
address is in the file), otherwise they take the lock themselves for their
run, so no second process ever writes behind the daemon's caches.

``flock`` locks belong to the open file: they vanish when the process dies
(``kill -9`` included), so a stale file never blocks a restart; the pid and
address in it are information, not the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path

LOCK_NAME = "omnigate.lock"


class Locked(Exception):
    """Another process holds the data folder."""

    def __init__(self, path: Path, info: LockInfo | None):
        self.path, self.info = path, info
        who = f"pid {info.pid}, listening on {info.listen}" if info and info.listen else (
            f"pid {info.pid}" if info else "another process")
        super().__init__(f"{path.parent} is in use by {who} (lock {path}); stop it first, "
                         "or give this one another --data-dir")


@dataclass(frozen=True)
class LockInfo:
    pid: int
    listen: str | None  # HOST:PORT of the holder's API; None for a CLI command


class DataLock:
    """A held lock; :meth:`release` (or process exit) lets it go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def __enter__(self) -> DataLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> LockInfo | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096) or b"null")
        return LockInfo(int(data["pid"]), data.get("listen")) if isinstance(data, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def acquire(data_dir: str | os.PathLike, listen: str | None = None) -> DataLock:
    """Take the folder's lock and record who holds it; :class:`Locked` if held."""
    path = Path(data_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        info = _read(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise Locked(path, info) from None
        raise
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "listen": listen}).encode())
    return DataLock(path, fd)


def holder(data_dir: str | os.PathLike) -> LockInfo | None:
    """Who holds the folder's lock now (None: nobody). Does not take it."""
    path = Path(data_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read(fd) or LockInfo(0, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
