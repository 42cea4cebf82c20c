"""The Connector protocol: the small, uniform surface every channel offers.

A connector is a folder ``connectors/<channel>/`` holding

- ``manifest.json``: ``channel``, ``transport`` (``webhook`` | ``push`` |
  ``poll``), ``parser`` (``"module:function"``), ``connector``
  (``"module:Class"``, optional for parse-only channels) and ``options``
  (name → ``{"secret": bool, "description": str}``);
- ``parse.py``: ``parse(raw: bytes, context: dict) -> list[Inbound]``, pure and
  deterministic, raising :class:`PayloadRejected` only for input that must be
  refused (bad signature, undecryptable, not this channel's format at all);
- ``client.py``: the I/O — webhook routes, loops, tokens, ``send``.

``context`` is the shape of ``omnigate parse --context`` (CONTRACTS.md): the
account's secrets at the top level (``token``, ``encoding_aes_key``,
``appid``/``corp_id``, ``app_secret``, ``channel_secret``…), plus ``query``,
``headers`` and ``url`` of the request that carried the payload, and
``account`` when known. The daemon builds the same dict from the journal
entry and the configuration, so a replay parses exactly like the live call.

Connectors import :mod:`routing.model` and nothing else of omnigate: what they
need from the gateway comes through :class:`ConnectorContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, Mapping, Protocol, runtime_checkable

from routing.model import Inbound, Outbound

ParseFn = Callable[[bytes, Mapping[str, Any]], list[Inbound]]


class PayloadRejected(Exception):
    """The bytes must be refused: not this channel's format, bad signature,
    cannot be decrypted. The message is the specific reason, free of secrets."""


class ConnectorError(Exception):
    """Base of the lifecycle errors a connector raises; the supervisor owns
    what happens next (retry with back-off, wait for re-authentication, stop)."""


class NotReady(ConnectorError):
    """A transient failure (network down, server busy): retry with back-off."""


class AuthFailed(ConnectorError):
    """Credentials were refused: retrying with the same ones will not help."""


class Fatal(ConnectorError):
    """A configuration or programming error: the connector stops."""


class SendError(Exception):
    """A reply could not be delivered.

    ``retryable`` says whether trying again later may succeed;
    ``retry_after`` (seconds) is the platform's hint when it gave one;
    ``code`` is the platform's own error code (e.g. WeChat 45015).
    """

    def __init__(self, reason: str, *, retryable: bool = False, retry_after: float | None = None, code: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.code = code


class NonceReused(PayloadRejected):
    """A signed request's nonce was already used, with another body: a replay
    of a seen signature carrying a forged payload."""


@dataclass(frozen=True, slots=True)
class Nonce:
    """A request nonce the journal must remember with the payload it came with.

    ``scope`` names whose nonce it is (``wechat:<appid>``), ``expires`` is when
    the request's timestamp leaves the acceptance window (after which the
    nonce may be forgotten: the timestamp check refuses it anyway), ``now`` is
    the connector's clock reading (expired nonces are purged against it).
    Recorded in the same transaction as the journal append: the same nonce
    with the same body answers the first entry (a redelivery), with another
    body raises :class:`NonceReused`.
    """

    scope: str
    value: str
    expires: datetime
    now: datetime


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What the journal answered: the entry id, and whether it is new
    (False when the idempotency key was seen before: a redelivery)."""

    journal_id: str
    created: bool


@dataclass(frozen=True, slots=True)
class SendResult:
    external_id: str | None = None  # the platform's id of the sent message
    thread_ref: str | None = None  # e.g. the Message-ID of an outbound mail


class ConnectorContext(Protocol):
    """What the gateway gives a running connector."""

    channel: str
    config: Mapping[str, Any]  # this channel's configuration section
    data_dir: str
    #: The gateway's supervisor: ``await ctx.supervisor.run({name: factory})``
    #: runs a connector's loops (one per mailbox, say) with the gateway's
    #: back-off and reports their state on /readyz.
    supervisor: Any

    async def ingest(
        self, account: str, key: str, raw: bytes, meta: Mapping[str, Any] | None = None, *,
        nonce: Nonce | None = None,
    ) -> IngestResult:
        """Append the raw payload to the journal; returns once it is durable.

        ``key`` is the idempotency key (a redelivery with the same key is
        answered with the first entry). ``meta`` is what parse needs again on
        replay (``query``, ``headers``, ``url``), secrets excluded. ``nonce``
        (optional) is checked and remembered in the same transaction (see
        :class:`Nonce`; raises :class:`NonceReused`).
        Raises ``OSError``-like errors when the journal cannot take it.
        """
        ...

    # Optional members (read with ``getattr(ctx, name, None)``, so older
    # contexts keep working):
    #
    # - ``clock() -> datetime``: the gateway's clock (aware UTC); connectors
    #   judge request timestamps against it, never against the wall clock.
    # - ``rejected(reason: str) -> None``: count a request refused before
    #   anything was stored (the ``omnigate_rejected`` metric, by reason).
    # - ``backlog_full() -> bool``: the optional backlog limit is reached;
    #   only intake whose senders retry for long (SMTP) may refuse on it.
    # - ``public_url``: the gateway's outside address (``public_url``, None
    #   when unset): the base of URLs a platform signs, for a section without its own.
    # - ``shed() -> bool``: the pipeline is starved and this intake would
    #   wait for its turn (``pipeline.admission_shed``); the same intake
    #   only may refuse on it.
    # - ``ownership``: ``await ctx.ownership.run_owned(name, factory)`` runs
    #   work that must have one owner across instances (a mailbox poller, a
    #   polling bot, a tailed file) only while this instance holds the lease
    #   ``name`` (gateway/ownership.py); use :func:`owned`.

    async def state_get(self, key: str) -> str | None: ...

    async def state_set(self, key: str, value: str) -> None: ...


@runtime_checkable
class Connector(Protocol):
    """A running channel. Built by the gateway as ``Class(ctx)``."""

    channel: str

    def routes(self) -> list[Any]:
        """aiohttp RouteDefs mounted under ``/channels/<channel>/``."""
        ...

    async def run(self) -> None:
        """The long-running part (IMAP IDLE loop, SMTP server, polling);
        returns when there is nothing to run. Raise NotReady/AuthFailed/Fatal."""
        ...

    async def send(self, outbound: Outbound) -> SendResult: ...

    async def close(self) -> None: ...


class SendChecker(Protocol):
    """Optional connector method, called when an agent posts a reply, before
    anything is queued: the reason the channel will certainly refuse this
    reply (the gateway answers 409 with it), or None when it may be sent.

    ``facts`` are what the store knows about the conversation:
    ``last_inbound_at`` (datetime | None, the customer's last message on this
    channel/account), ``sent_since_inbound`` (int, replies delivered since
    then) and ``now`` (datetime, the gateway's clock)."""

    def can_send(self, outbound: Outbound, facts: Mapping[str, Any]) -> str | None: ...


class MediaFetcher(Protocol):
    """Optional connector method, called by the pipeline after ``parse`` and
    before the stages: download what the channel only references (WeChat
    media ids, Telegram file ids) and set ``attachment.data``. A failure is
    recorded as a defect of the Inbound, never fails the message."""

    async def fetch_media(self, inbound: Inbound) -> None: ...


SendFn = Callable[[Outbound], Awaitable[SendResult]]


def owned(ctx: Any, name: str, factory: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``factory`` run only while this instance owns ``name`` (one owner at a
    time across instances sharing a Redis store; see gateway/ownership.py).
    A context without ``ownership`` (one process, tests, tools) always owns."""
    ownership = getattr(ctx, "ownership", None)
    if ownership is None:
        return factory
    return lambda: ownership.run_owned(name, factory)
