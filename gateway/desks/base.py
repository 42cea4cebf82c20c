"""The uniform shape of a desk, and the HTTP plumbing the desks share."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any, Callable

import aiohttp
import msgspec

from gateway.clock import Clock, system_clock
from gateway.config import DeskConfig, parse_duration
from gateway.webhooks.service import parse_retry_after
from gateway.webhooks.ssrf import GuardedResolver, check_url


class DeskError(Exception):
    """A desk call failed. ``retry_after`` (seconds) when the desk said when to come back."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Comment(msgspec.Struct, frozen=True):
    """One comment (article, conversation) on a desk ticket."""

    id: str
    body: str
    public: bool
    by_agent: bool  # written by an agent of the desk (not the requester, not the system)
    author_id: str | None = None


class Changed(msgspec.Struct, frozen=True):
    """A desk ticket that changed since the cursor, with its status (the desk's word)."""

    id: str
    status: str


class NewTicket(msgspec.Struct, kw_only=True):
    """What a desk ticket is created from: the omnigate ticket and its first message."""

    ticket_id: str
    number: int
    subject: str
    text: str
    name: str
    email: str | None
    phone: str | None
    channel: str
    identity: str | None  # the WeChat openid, the phone, … as omnigate knows the customer
    team: str | None = None
    assignee: str | None = None
    #: the desk group: ``desks.<name>.group``, or (``ownership: desk``) the team omnigate's rules chose
    group: str | None = None


class DeskClient:
    """A desk's REST API. Subclasses set ``STATUS_OUT`` (omnigate status → the
    desk's) and ``STATUS_IN`` (the desk's → omnigate's) and the calls below."""

    kind = ""
    STATUS_OUT: dict[str, str] = {}
    STATUS_IN: dict[str, str] = {}

    def __init__(self, name: str, config: DeskConfig, *, clock: Clock = system_clock) -> None:
        self.name = name
        self.config = config
        self.base = config.url.rstrip("/")
        self.clock = clock
        self.timeout_s = parse_duration(config.timeout)
        self._session: aiohttp.ClientSession | None = None
        self.me: str | None = None  # the integration user's id on the desk

    # ------------------------------------------------------------ plumbing

    def auth_headers(self) -> dict[str, str]:
        return {}

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            resolver = None if self.config.allow_private else GuardedResolver()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=8),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": "omnigate-desks/1", "Accept": "application/json"})
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                   headers: dict | None = None, ok: tuple[int, ...] = ()) -> tuple[int, Any, Any]:
        """One API call: (status, decoded body, headers); a non-2xx answer not in ``ok``
        raises :class:`DeskError` (with the desk's ``Retry-After`` on 429 and 503)."""
        url = path if path.startswith("http") else self.base + path
        check_url(url, self.config.allow_private)
        try:
            async with self.session().request(method, url, json=json, params=params, allow_redirects=False,
                                              headers={**self.auth_headers(), **(headers or {})}) as resp:
                raw = await resp.read()
                body: Any = None
                if raw:
                    try:
                        body = msgspec.json.decode(raw)
                    except msgspec.DecodeError:
                        body = raw.decode(errors="replace")
                if 200 <= resp.status < 300 or resp.status in ok:
                    return resp.status, body, resp.headers
                raise DeskError(f"{self.kind} {method} {path}: HTTP {resp.status} {str(body)[:200]}",
                                status=resp.status,
                                retry_after=parse_retry_after(resp.headers.get("Retry-After"), self.clock()))
        except asyncio.TimeoutError:
            raise DeskError(f"{self.kind} {method} {path}: no answer within {self.timeout_s:g}s") from None
        except aiohttp.ClientError as exc:
            raise DeskError(f"{self.kind} {method} {path}: {type(exc).__name__}: {exc}") from None

    def to_desk(self, status: str) -> str | None:
        return self.STATUS_OUT.get(status)

    # ------------------------------------------------------------ the uniform shape

    async def whoami(self) -> str | None:
        """The integration user's id (its comments are never relayed)."""
        return None

    async def find_ticket(self, ticket_id: str) -> str | None:
        """The desk ticket made for this omnigate ticket, if one exists (the lookup before create)."""
        raise NotImplementedError

    async def create_ticket(self, t: NewTicket) -> tuple[str, list[str]]:
        """Create the desk ticket; (its id, ids of the comments this made)."""
        raise NotImplementedError

    async def add_comment(self, desk_id: str, text: str, *, internal: bool) -> str:
        """A public comment from the requester (a customer message), or an
        internal note (``internal``); the new comment's id."""
        raise NotImplementedError

    async def set_status(self, desk_id: str, status: str) -> None:
        raise NotImplementedError

    async def comments(self, desk_id: str) -> list[Comment]:
        raise NotImplementedError

    async def changed(self, cursor: str | None) -> tuple[list[Changed], str]:
        """Tickets changed since ``cursor`` (None: from now), and the next cursor."""
        raise NotImplementedError

    # ------------------------------------------------------------ the way back's verification

    def verify(self, headers: Any, body: bytes, secret: str, now: Any) -> str | None:
        """None when the nudge is the desk's; otherwise why not."""
        return "this desk has no way back"


def iso(ts: datetime) -> str:
    """An aware datetime as the desks write it: ``2026-12-01T03:00:00Z``."""
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


ClientFactory = Callable[[str, DeskConfig, Clock], DeskClient]
