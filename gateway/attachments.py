"""Content-addressed attachment storage under ``<data_dir>/attachments``.

A file is stored once per content: its path is derived from its sha256
(``ab/cdef…``), so the same logo in a thousand signatures costs one file,
and writing it again (a replay) changes nothing. Files are written to a
temporary name and renamed, so a crash never leaves a half file under a
valid name. A write that fails (a full disk: ENOSPC) removes its temporary
file and raises :class:`AttachmentWriteError`, a
:class:`~gateway.store.base.StoreError`, which HTTP handlers answer with 503
(nothing was stored; retry later).

The daemon reaches attachments through :meth:`AttachmentStore.aput` /
:meth:`AttachmentStore.aget` (the file work on a thread). With ``redis_url``
it uses :class:`gateway.store.redis_attachments.SharedAttachments` instead:
same refs, the bytes in Redis below a size and on a shared volume above it,
so every instance reads what any instance stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from gateway.store.base import StoreError


class AttachmentWriteError(StoreError):
    """An attachment could not be written (disk full, read-only, …); no file is left behind."""


class AttachmentStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path_of(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:]

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its storage ref (the sha256)."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_of(digest)
        if path.exists():
            return digest
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise AttachmentWriteError(f"cannot write attachment: {exc.strerror or exc}") from None
        return digest

    def get(self, sha256: str) -> bytes | None:
        try:
            return self.path_of(sha256).read_bytes()
        except (OSError, ValueError):
            return None

    async def aput(self, data: bytes) -> str:
        """:meth:`put` off the event loop."""
        return await asyncio.to_thread(self.put, data)

    async def aget(self, sha256: str) -> bytes | None:
        """:meth:`get` off the event loop."""
        return await asyncio.to_thread(self.get, sha256)
