"""Who is calling ``/api/v1``, what they may do, and how fast.

Every ``/api/v1`` handler starts with ``p = await authenticate(request)``
(or :func:`require`), then asks the helpers below about the object at hand:
``can_read_ticket``, ``can_manage_ticket``, ``may_see_sensitive``. New
endpoints (console, webhooks admin) use the same helpers.

Credentials:

- a per-agent token ``og_…`` (``omnigate tokens create`` or ``POST
  /api/v1/tokens``): its SHA-256 is looked up in the store through a small
  in-process cache (``rest.token_cache_s``); a revocation through the API
  clears the cache at once — on the Redis backend on every instance: each
  request reads the store's revocation epoch (one ``GET``) and drops the
  cache when another instance revoked a token;
- the shared ``OMNIGATE_API_TOKEN``: the bootstrap admin; the acting agent
  is ``X-Omnigate-Actor`` (default ``api``), as before per-agent tokens.

Roles (a token's own role; its agent's teams come from the agents table):

- ``agent``: tickets of their teams and assigned to them — read, reply,
  note, change status; their own presence; contacts without sensitive
  attributes, other teams' tickets as summary lines only;
- ``lead``: everything on their teams' tickets (reassign, priority, team
  within their teams, tags), merge/unmerge contacts, contact attributes,
  journal reads, stats, their team members' presence;
- ``admin``: everything: agents, tokens, journal replay, rules test.

401 for no or a bad token, 403 for a valid token without the right, 429
(``Retry-After``) over the token's rate — all problem+json.
"""

from __future__ import annotations

import hmac
import math
import time
from datetime import datetime, timedelta
from typing import Any, Callable

import msgspec
import structlog
from aiohttp import web

from gateway import keys
from gateway.config import RestConfig
from gateway.http_util import Problem
from gateway.store.sqlite_tokens import TOKEN_PREFIX, TokenInfo, hash_token
from routing.model import utcnow

log = structlog.get_logger(__name__)

ROLE_RANK = {"agent": 0, "lead": 1, "admin": 2}
#: Last use is written at most this often per token (not a write per request).
TOUCH_EVERY = timedelta(minutes=1)


class Principal(msgspec.Struct, frozen=True):
    """The caller of one request."""

    agent_id: str
    role: str
    teams: frozenset[str] = frozenset()
    token_id: str | None = None  # None: the bootstrap token

    def at_least(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# ---------------------------------------------------------------- rights


def can_read_ticket(p: Principal, ticket: Any) -> bool:
    """Admins: all; others: tickets of their teams and tickets assigned to them."""
    return p.is_admin or ticket.assignee == p.agent_id or (ticket.team is not None and ticket.team in p.teams)


def can_manage_ticket(p: Principal, ticket: Any) -> bool:
    """Change priority, team, assignee, tags: admins, and leads on their teams' tickets."""
    return p.is_admin or (p.role == "lead" and ticket.team is not None and ticket.team in p.teams)


def may_see_sensitive(p: Principal) -> bool:
    return p.role != "agent"


def forbid(detail: str) -> Problem:
    return Problem(403, "Forbidden", detail)


def visible_ticket(p: Principal, ticket: Any) -> None:
    """404 rather than 403 for a ticket the caller may not open? No: the
    number is not secret (it is on the contact's timeline): 403 says why."""
    if not can_read_ticket(p, ticket):
        raise forbid(f"ticket #{ticket.number} belongs to team {ticket.team or '-'}: {p.agent_id} may not open it")


# ---------------------------------------------------------------- authentication


class _Cached(msgspec.Struct):
    info: TokenInfo
    teams: frozenset[str]
    until: float


class Auth:
    """Authentication, the token cache, last-use recording and the rate limiter of one app."""

    def __init__(self, store: Any, config: RestConfig, bootstrap_token: str | None, *,
                 clock: Callable[[], datetime] = utcnow, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.config = config
        self.bootstrap = bootstrap_token
        self.clock = clock
        self.monotonic = monotonic
        from gateway.shared import LocalLimiter, RedisLimiter, limiter_for

        #: one token bucket per token (``monotonic``: tests pass their own)
        self.limiter = LocalLimiter(config.rate_limit_per_minute / 60.0, config.rate_limit_burst, clock=monotonic)

        # several instances on Redis: one budget per token for all of them (gateway/shared.py)
        shared = limiter_for(store, "api", config.rate_limit_per_minute / 60.0, config.rate_limit_burst,
                             wall_clock=lambda: self.clock().timestamp())
        self.shared_limiter: RedisLimiter | None = shared if isinstance(shared, RedisLimiter) else None
        self._cache: dict[str, _Cached] = {}
        self._touched: dict[str, datetime] = {}
        #: the store's revocation epoch (a store shared by several instances has one)
        self._epoch_of: Callable[[], Any] | None = getattr(store, "token_epoch", None)
        self._epoch: int | None = None

    def invalidate(self, token_id: str | None = None) -> None:
        """Forget cached tokens (one, or all): the next request reads the store."""
        if token_id is None:
            self._cache.clear()
        else:
            for digest in [d for d, c in self._cache.items() if c.info.id == token_id]:
                del self._cache[digest]

    async def authenticate(self, request: web.Request) -> Principal:
        given = _bearer(request)
        if given is None:
            raise Problem(401, "Unauthorized", "missing bearer token (Authorization: Bearer …)",
                          headers={"WWW-Authenticate": 'Bearer realm="omnigate"'})
        if self.bootstrap and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self.bootstrap.encode()):
            p = Principal(agent_id=request.headers.get("X-Omnigate-Actor") or "api", role="admin")
            await self._limit("bootstrap")
            return p
        if not given.startswith(TOKEN_PREFIX) or len(given) > 200:
            raise _bad_token()
        digest = hash_token(given)
        if self._epoch_of is not None:
            epoch = await self._epoch_of()
            if epoch != self._epoch:  # a token was revoked (maybe through another instance)
                self._cache.clear()
                self._epoch = epoch
        mono = self.monotonic()
        cached = self._cache.get(digest)
        if cached is None or cached.until <= mono:
            info = await self.store.token_lookup(given)
            if info is None:
                raise _bad_token()
            agent = await self.store.get_agent(info.agent_id)
            teams = frozenset(agent.teams) if agent is not None else frozenset()
            if len(self._cache) > 10_000:
                self._cache.clear()
            cached = self._cache[digest] = _Cached(info, teams, mono + self.config.token_cache_s)
        info = cached.info
        now = self.clock()
        if info.revoked_at is not None:
            raise Problem(401, "Unauthorized", f"token {info.prefix}… was revoked")
        if info.expires_at is not None and info.expires_at <= now:
            raise Problem(401, "Unauthorized", f"token {info.prefix}… expired at {info.expires_at.isoformat()}")
        await self._limit(info.id)
        last = self._touched.get(info.id)
        if last is None or now - last >= TOUCH_EVERY:
            self._touched[info.id] = now
            await self.store.token_touch(info.id, now)
        return Principal(agent_id=info.agent_id, role=info.role, teams=cached.teams, token_id=info.id)

    async def _limit(self, key: str) -> None:
        wait = await self.shared_limiter.take(key) if self.shared_limiter is not None else self.limiter.take_now(key)
        if wait > 0:
            raise Problem(429, "Too many requests",
                          f"this token's rate limit ({self.config.rate_limit_per_minute}/min) is spent; "
                          f"retry in {math.ceil(wait)}s", headers={"Retry-After": str(max(1, math.ceil(wait)))})


def _bad_token() -> Problem:
    return Problem(401, "Unauthorized", "unknown bearer token",
                   headers={"WWW-Authenticate": 'Bearer realm="omnigate", error="invalid_token"'})


def _bearer(request: web.Request) -> str | None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    return given if scheme.lower() == "bearer" and given else None


AUTH: web.AppKey[Auth] = web.AppKey("auth")


def setup(app: web.Application, clock: Callable[[], datetime] = utcnow) -> Auth:
    config = app[keys.CONFIG]
    auth = app[AUTH] = Auth(app[keys.STORE], config.rest, config.api_token, clock=clock)
    return auth


async def authenticate(request: web.Request) -> Principal:
    """The caller (401/429 as problem+json otherwise)."""
    return await request.app[AUTH].authenticate(request)


async def require(request: web.Request, role: str = "agent") -> Principal:
    """The caller, who must hold at least ``role`` (403 otherwise)."""
    p = await authenticate(request)
    if not p.at_least(role):
        raise forbid(f"this needs the {role} role; the token of {p.agent_id} has {p.role}")
    return p


def redact_contact(p: Principal, contact: Any, sensitive: list[str]) -> Any:
    """The contact as ``p`` may see it: sensitive attributes omitted for agents."""
    if may_see_sensitive(p) or not contact.attributes:
        return contact
    hidden = set(sensitive)
    return msgspec.structs.replace(contact, attributes={k: v for k, v in contact.attributes.items()
                                                        if k not in hidden})
