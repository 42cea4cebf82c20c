"""Attachments every instance can read: in Redis below a size, on a shared volume above it.

With ``redis_url`` an attachment stored by instance A (a customer's photo
ingested there, an agent's upload to A's replies API) must be readable by B
(B's console shows it, B's outbox sends it). Refs stay the content's sha256,
as in :class:`gateway.attachments.AttachmentStore`, so nothing else changes:

- up to ``store.redis_attachment_max_bytes`` (default 1 MiB): the bytes in
  Redis under ``<prefix>att:<sha256>`` (``SET NX``: written once per
  content, like the files). Most attachments are small (stickers, photos
  from a phone after the platforms' compression, PDFs of a page or two);
  they cost no extra infrastructure and are replicated, persisted (AOF) and
  failed over with everything else;
- above it: files in ``store.attachments_dir``, a folder every instance
  mounts (an NFS export, a Kubernetes ``ReadWriteMany`` volume, a compose
  named volume), with the same temporary-name-and-rename writes. Without
  ``store.attachments_dir`` every attachment goes to Redis (nothing is left
  on one instance's disk; Redis memory pays for it).

Reads look in Redis, then in the folder (a migrated installation's files
may be in either). Raw payloads need nothing of this: the journal entries,
raw bytes included, are in Redis already.

Why not an S3-compatible store: it would be one more service to run and
secure, with no server to test against here (no MinIO package on this
machine, and the tests use real parts); a mounted volume serves the same
purpose with the file code the SQLite deployment already trusts. An S3
back end could be added behind the same ``aput``/``aget``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from gateway.attachments import AttachmentStore
from gateway.store.base import StoreError

#: default ``store.redis_attachment_max_bytes``
REDIS_MAX_BYTES = 1024 * 1024


class SharedAttachments(AttachmentStore):
    """``aput``/``aget`` over Redis (small) and a shared folder (big); the sync
    ``put``/``get`` of the parent class reach the folder only."""

    def __init__(self, store: Any, root: str | os.PathLike | None, *, redis_max_bytes: int = REDIS_MAX_BYTES):
        super().__init__(root if root is not None else os.devnull)
        self.redis = store.r
        self.keys = store.k
        self.shared = root is not None
        self.redis_max_bytes = redis_max_bytes

    def in_redis(self, size: int) -> bool:
        return not self.shared or size <= self.redis_max_bytes

    async def aput(self, data: bytes) -> str:
        if not self.in_redis(len(data)):
            return await super().aput(data)
        digest = hashlib.sha256(data).hexdigest()
        try:
            await self.redis.set(self.keys.attachment(digest), data, nx=True)
        except Exception as exc:  # noqa: BLE001 - Redis down: nothing stored, the caller answers 503
            raise StoreError(f"redis unavailable: cannot store attachment: {exc}") from None
        return digest

    async def aget(self, sha256: str) -> bytes | None:
        try:
            self.path_of(sha256)  # validates the ref
        except ValueError:
            return None
        try:
            data = await self.redis.get(self.keys.attachment(sha256))
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"redis unavailable: cannot read attachment: {exc}") from None
        if data is not None:
            return bytes(data)
        return await super().aget(sha256) if self.shared else None


def attachments_for(config: Any, store: Any, default_root: Any) -> AttachmentStore:
    """The daemon's attachment store: shared with Redis, the data folder's (``default_root``) otherwise."""
    if getattr(store, "backend", None) == "redis":
        return SharedAttachments(store, config.store.attachments_dir,
                                 redis_max_bytes=config.store.redis_attachment_max_bytes)
    return AttachmentStore(default_root)
