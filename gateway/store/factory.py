"""The store a configuration names: Redis with ``redis_url`` (several
instances, one state), else the embedded SQLite store in ``data_dir``.
The daemon (``create_app``) and the offline commands (``replay``, ``rules
test --journal``, ``tokens``) open their store here, so a command never
reads a stale local SQLite file while the deployment lives in Redis."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from routing.model import utcnow


def has_store(config: Any) -> bool:
    """Is there a store to open (Redis is always there to ask)?"""
    return bool(config.redis_url) or (Path(config.data_dir) / "omnigate.db").exists()


def where(config: Any) -> str:
    return "redis" if config.redis_url else str(config.data_dir)


def open_store(config: Any, *, clock: Callable[[], datetime] = utcnow, consumer: str | None = None) -> Any:
    if config.redis_url:
        from gateway.store.redis_store import RedisStore, instance_name

        return RedisStore(config.redis_url, prefix=config.store.redis_prefix, clock=clock,
                          first_ticket_number=config.threading.first_ticket_number,
                          consumer=consumer or instance_name(config.listen),
                          claim_idle_s=config.store.redis_claim_idle_s,
                          wait_replicas=config.store.redis_wait_replicas)
    from gateway.store.sqlite import SQLiteStore

    return SQLiteStore.in_dir(
        config.data_dir, synchronous=config.store.synchronous, group_commit_max=config.store.group_commit_max,
        readers=config.store.readers, first_ticket_number=config.threading.first_ticket_number, clock=clock,
    )
