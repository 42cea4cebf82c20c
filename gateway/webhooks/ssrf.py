"""Server-side request forgery guard for webhook URLs.

A webhook URL is typed by an admin or an API client; without a guard it
could reach the gateway's own admin ports, a cloud metadata service
(169.254.169.254) or the private network. Refused unless the endpoint sets
``allow_private: true``: loopback, link-local, private (RFC 1918, ULA),
shared (100.64/10), multicast, reserved and unspecified addresses — checked
on a literal IP in the URL and, for a name, on every address it resolves to
(:class:`GuardedResolver`, so a name cannot be pointed at 127.0.0.1 later).
Redirects are not followed.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL


class Refused(OSError):
    """The address is not one a webhook may reach."""


def refused_reason(host: str) -> str | None:
    """Why ``host`` (an IP literal) may not be reached, or None (also None for a name)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for attr, word in (("is_loopback", "loopback"), ("is_link_local", "link-local"), ("is_private", "private"),
                       ("is_multicast", "multicast"), ("is_unspecified", "unspecified"), ("is_reserved", "reserved")):
        if getattr(ip, attr):
            return f"{ip} is a {word} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def check_url(url: str, allow_private: bool) -> None:
    """Raise :class:`Refused` (or ValueError for a malformed URL) before anything is sent."""
    u = URL(url)
    if u.scheme not in ("http", "https") or not u.host:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if allow_private:
        return
    if u.host.lower() in ("localhost", "localhost.localdomain") or u.host.lower().endswith(".localhost"):
        raise Refused(f"{u.host} is loopback (set allow_private: true to allow it)")
    why = refused_reason(u.host)
    if why:
        raise Refused(f"{why} (set allow_private: true to allow it)")


class GuardedResolver(AbstractResolver):
    """Resolves through ``inner`` and refuses the name when any address it
    resolves to is not public (all of them: the connector may try any)."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        if inner is None:
            from aiohttp.resolver import ThreadedResolver

            inner = ThreadedResolver()
        self.inner = inner

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        for r in results:
            why = refused_reason(r["host"])
            if why:
                raise Refused(f"{host} resolves to {r['host']}: {why} (set allow_private: true to allow it)")
        return results

    async def close(self) -> None:
        await self.inner.close()


def refusal_in(exc: BaseException) -> Refused | None:
    """The :class:`Refused` behind an aiohttp connection error, if that is what it was."""
    seen: set[int] = set()
    cur: Any = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, Refused):
            return cur
        nxt = getattr(cur, "os_error", None)
        if isinstance(nxt, Refused):
            return nxt
        cur = cur.__cause__ or cur.__context__
    return None
