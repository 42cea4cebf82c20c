"""Inbound SMTP: the gateway as an MX, or as the relay target of a mail server.

An aiosmtpd server on the configured address. Its handler's return values
are the SMTP replies (aiosmtpd's convention), which is what makes the
"acknowledge only once durable" rule direct:

- ``RCPT`` to a configured mailbox → ``250``; to another address of a
  configured domain → ``550 5.1.1``; to any other domain → ``550 5.7.1``
  (not an open relay);
- at most ``smtp.max_recipients`` accepted recipients per message (more get
  ``452 4.5.3``, RFC 5321 4.5.3.1.8: the client sends the rest in another
  transaction); a session that has had ``smtp.max_refused_recipients``
  recipients refused (someone probing for addresses) gets ``421`` and is
  closed;
- ``SIZE`` is advertised and a larger message gets ``552`` (aiosmtpd);
- ``DATA``: the raw bytes go to ``ctx.ingest`` once per receiving account,
  and only then ``250``; if the journal cannot take them, ``451 4.3.0`` so
  the sending server keeps the message and retries;
- ``STARTTLS`` is offered when a certificate is configured (never required:
  an MX must accept plain-text delivery, RFC 3207).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session

from connectors.base import ConnectorContext, Fatal
from connectors.email.keys import message_key
from connectors.email.settings import SmtpSettings, address_of, host_port

log = structlog.get_logger(__name__)

REPLY_OK = "250 2.0.0 OK: queued"
REPLY_RCPT_OK = "250 2.1.5 OK"
REPLY_UNKNOWN_MAILBOX = "550 5.1.1 No such mailbox here"
REPLY_NO_RELAY = "550 5.7.1 Relaying denied: not a domain served here"
REPLY_BAD_ADDRESS = "553 5.1.3 Bad recipient address syntax"
REPLY_JOURNAL_DOWN = "451 4.3.0 Cannot store the message now, try again later"
#: The optional backlog limit (``pipeline.backlog_limit``): the sending MTA retries later.
REPLY_BACKLOG_FULL = "451 4.3.2 Backlog limit reached, try again later"
#: Shed while the pipeline is starved (``pipeline.admission_shed``): the sending MTA retries later.
REPLY_OVERLOADED = "451 4.3.2 System busy, try again later"
REPLY_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
REPLY_TOO_MANY_REFUSED = "421 4.7.0 Too many refused recipients, closing connection"


class Recipients:
    """Which account a recipient address belongs to, by the ``smtp`` settings."""

    def __init__(self, settings: SmtpSettings) -> None:
        self._accounts = {address_of(addr): name for name, addr in settings.mailboxes.items()}
        self._domains = {d.lower() for d in settings.domains} or {
            a.rpartition("@")[2] for a in self._accounts
        }

    def verdict(self, address: str) -> tuple[str | None, str]:
        """``(account, reply)``: the account is None when the reply refuses."""
        try:
            addr = address_of(address)
        except ValueError:
            return None, REPLY_BAD_ADDRESS
        account = self._accounts.get(addr)
        if account is not None:
            return account, REPLY_RCPT_OK
        if addr.rpartition("@")[2] in self._domains:
            return None, REPLY_UNKNOWN_MAILBOX
        return None, REPLY_NO_RELAY

    def accounts(self, addresses: list[str]) -> list[str]:
        """The distinct accounts of accepted recipients, in envelope order."""
        found = (self.verdict(a)[0] for a in addresses)
        return list(dict.fromkeys(a for a in found if a is not None))


class InboundHandler:
    """aiosmtpd handler: refuse unknown recipients, journal the data, then 250."""

    def __init__(self, ctx: ConnectorContext, settings: SmtpSettings) -> None:
        self._ctx = ctx
        self._recipients = Recipients(settings)
        self._max_rcpts = settings.max_recipients
        self._max_refused = settings.max_refused_recipients

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self._max_rcpts:
            log.info("smtp_rcpt_too_many", peer=_peer(session), limit=self._max_rcpts)
            return REPLY_TOO_MANY_RCPTS
        account, reply = self._recipients.verdict(address)
        if account is None:
            refused = getattr(session, "omnigate_refused", 0) + 1
            session.omnigate_refused = refused  # type: ignore[attr-defined]
            if refused >= self._max_refused:
                log.warning("smtp_session_closed_refused_rcpts", peer=_peer(session), refused=refused)
                # the reply is written before the loop runs this: then the connection closes
                asyncio.get_running_loop().call_soon(server.transport.close)
                return REPLY_TOO_MANY_REFUSED
            log.info("smtp_rcpt_refused", peer=_peer(session), reply=reply[:9])
            return reply
        envelope.rcpt_tos.append(address)
        return reply

    def _refusal_for_load(self) -> str | None:
        """``"backlog_full"`` (``pipeline.backlog_limit``), ``"overloaded"``
        (the pipeline starved, ``pipeline.admission_shed``) or None: the two
        refusals for load a sender that retries for days may get (451)."""
        for reason, ask in (("backlog_full", "backlog_full"), ("overloaded", "shed")):
            check = getattr(self._ctx, ask, None)
            if check is not None and check():
                return reason
        return None

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        key = message_key(raw)
        meta: dict[str, Any] = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "peer": _peer(session),
        }
        accounts = self._recipients.accounts(envelope.rcpt_tos)
        refusal = self._refusal_for_load()
        if refusal is not None:
            log.warning(f"smtp_{refusal}", key=key, accounts=accounts, peer=meta["peer"])
            rejected = getattr(self._ctx, "rejected", None)
            if rejected is not None:
                rejected(refusal)
            return REPLY_BACKLOG_FULL if refusal == "backlog_full" else REPLY_OVERLOADED
        try:
            for account in accounts:
                await self._ctx.ingest(account, key, raw, meta)
        except Exception as exc:  # whatever the journal raised, the sender must retry
            log.error("smtp_ingest_failed", key=key, accounts=accounts, error=f"{type(exc).__name__}: {exc}")
            return REPLY_JOURNAL_DOWN
        log.info("smtp_accepted", key=key, accounts=accounts, size=len(raw), peer=meta["peer"])
        return REPLY_OK


def _peer(session: Session) -> str | None:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None if peer is None else str(peer)


def tls_context(settings: SmtpSettings) -> ssl.SSLContext | None:
    """The STARTTLS context from the configured certificate, if any."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except OSError as exc:  # ssl.SSLError included
        raise Fatal(f"email config: smtp.tls_cert/tls_key cannot be loaded: {exc}") from None
    return context


async def start_smtp(ctx: ConnectorContext, settings: SmtpSettings) -> asyncio.Server:
    """Bind the configured address and start accepting (raises OSError when
    the address cannot be bound)."""
    host, port = host_port(settings.listen)
    handler = InboundHandler(ctx, settings)
    tls = tls_context(settings)

    def protocol() -> SMTP:
        return SMTP(
            handler,
            data_size_limit=settings.max_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=settings.hostname,
            ident="omnigate ESMTP",
            tls_context=tls,
        )

    server = await asyncio.get_running_loop().create_server(protocol, host, port)
    log.info("smtp_listening", host=host, port=port, starttls=tls is not None, max_bytes=settings.max_bytes)
    return server


async def serve_smtp(ctx: ConnectorContext, settings: SmtpSettings) -> None:
    """Listen until cancelled. A bind failure raises OSError: the supervisor
    retries (the port may be free again soon)."""
    server = await start_smtp(ctx, settings)
    try:
        await server.serve_forever()
    finally:
        server.close()
        await server.wait_closed()
