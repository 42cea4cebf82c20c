"""The Redis client of a ``redis_url``: a plain URL, or Sentinel.

``redis://``, ``rediss://``, ``unix://``: redis-py's ``from_url``.

``redis+sentinel://[[user]:password@]host:port[,host:port…]/service[/db][?sentinel_password=…]``:
the listed Sentinels are asked for the current primary of ``service`` (the
name in ``sentinel monitor <service> …``) through redis-py's Sentinel
support; the password in the URL is the primary's (``requirepass`` /
ACL user), ``sentinel_password`` the Sentinels' own when they have one.
After a fail-over the connections to the old primary fail (a demoted
primary answers ``READONLY``: redis-py drops the connection), the store
raises ``StoreError`` (the daemon answers 503 and the platforms retry) and
the next connection goes to the primary the Sentinels name now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel://"


@dataclass(frozen=True)
class SentinelURL:
    hosts: list[tuple[str, int]]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL; ValueError naming what is wrong."""
    if not url.startswith(SENTINEL_SCHEME):
        raise ValueError(f"not a {SENTINEL_SCHEME} URL")
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, sep, pw = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) if sep else None)
    hosts = []
    for item in hostlist.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"sentinel address {item!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("the URL names no service (…/mymaster)")
    db = 0
    if len(path) > 1:
        if not path[1].isdigit() or len(path) > 2:
            raise ValueError(f"after the service comes a database number, got {'/'.join(path[1:])!r}")
        db = int(path[1])
    query = parse_qs(parts.query)
    unknown = set(query) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"unknown option {sorted(unknown)[0]!r} (known: sentinel_password)")
    sentinel_password = query.get("sentinel_password", [None])[0]
    return SentinelURL(hosts, unquote(path[0]), db, username, password, sentinel_password)


def connect(url: str, **kw: Any) -> Any:
    """A ``redis.asyncio.Redis`` for ``url`` (``kw``: connection options such as
    ``socket_timeout``, ``decode_responses``, ``health_check_interval``): a
    :class:`~gateway.store.redis_mux.MuxRedis`, which auto-pipelines what one
    loop turn sends over one shared connection."""
    from gateway.store.redis_mux import MuxRedis

    if not url.startswith(SENTINEL_SCHEME):
        return MuxRedis.from_url(url, **kw)
    from redis.asyncio.sentinel import Sentinel

    s = parse_sentinel_url(url)
    timeouts = {k: kw[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kw}
    sentinel = Sentinel(s.hosts, sentinel_kwargs={**timeouts, "password": s.sentinel_password}, **timeouts)
    return sentinel.master_for(s.service, redis_class=MuxRedis, db=s.db, username=s.username,
                               password=s.password, **kw)
