"""Readiness checks that are not a component's own: can the data folder take
a write (a full disk makes every acknowledgement impossible, so the daemon
must leave the load balancer before callers see 503s)."""

from __future__ import annotations

import os
from pathlib import Path

PROBE_NAME = ".readyz-probe"
PROBE_BYTES = 4096  # one page: what SQLite needs to grow its WAL


def disk_check(data_dir: str | os.PathLike):
    """A ``/readyz`` check: write (and remove) a one-page probe file in
    ``data_dir``; not ready with the reason (``ENOSPC``…) while that fails."""
    path = Path(data_dir) / PROBE_NAME

    def check() -> tuple[bool, dict]:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                written = os.write(fd, b"\0" * PROBE_BYTES)
                if written != PROBE_BYTES:
                    raise OSError(28, "short write (disk full?)")
            finally:
                os.close(fd)
                path.unlink(missing_ok=True)
        except OSError as exc:
            import errno

            name = errno.errorcode.get(exc.errno or 0, "OSError")
            return False, {"writable": False, "error": f"{name}: {exc.strerror or exc}", "path": str(data_dir)}
        return True, {"writable": True}

    return check
