"""Replies out: an :class:`Outbound` becomes a MIME message sent through the
configured SMTP relay (aiosmtplib).

The message is what the customer's mail client threads and what stops mail
loops:

- its own ``Message-ID`` ``<ULID@from-domain>``, returned as the
  ``SendResult`` so the next customer reply (``In-Reply-To`` it) threads;
- ``outbound.thread`` carries the reply's threading: ``in_reply_to`` is the
  Message-ID answered (the ticket's last inbound message), ``references``
  the chain before it; ``ticket_ref`` the ticket number for the subject
  ``Re: <original> [#1234]``;
- auto-replies carry ``Auto-Submitted: auto-replied`` (RFC 3834) and
  ``X-Auto-Response-Suppress: All`` (Exchange), are never sent in answer to
  a message the parser marked automatic, and are rate-limited per recipient.

The rate limit lives in ``ctx.state`` (key ``email:auto-replies:<address>``,
the send times of the last hour), so it holds across restarts and across
gateway instances sharing a store; a reservation is made before sending,
and a failed send still counts — for a loop breaker, erring on the side of
silence is right.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime

import aiosmtplib
import msgspec
import structlog

from connectors.base import ConnectorContext, SendError, SendResult
from connectors.email.settings import RelaySettings, address_of
from routing.model import Outbound, new_id, utcnow

log = structlog.get_logger(__name__)

_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|antw|回复|答复)\s*[:：]", re.IGNORECASE)
_DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
_HOUR_S = 3600.0


# ---------------------------------------------------------------- the message


def reply_subject(original: str | None, ticket_ref: str | None) -> str:
    """``Re: <original> [#1234]``, without doubling a ``Re:`` or the tag."""
    subject = (original or "").strip()
    if not _REPLY_PREFIX.match(subject):
        subject = f"Re: {subject}".rstrip()
    number = (ticket_ref or "").strip().lstrip("#")
    tag = f"[#{number}]"
    if number and tag not in subject:
        subject = f"{subject} {tag}"
    return subject


def msg_id(ref: str) -> str:
    """A Message-ID as a header wants it: in angle brackets (the model keeps
    ids bare, as the parser reads them)."""
    ref = ref.strip()
    return ref if ref.startswith("<") else f"<{ref}>"


def references(outbound: Outbound) -> list[str]:
    """The ``References`` chain: the known chain, then the message answered."""
    chain = [msg_id(r) for r in outbound.thread.references if r]
    parent = msg_id(outbound.thread.in_reply_to) if outbound.thread.in_reply_to else None
    if parent and (not chain or chain[-1] != parent):
        chain = [r for r in chain if r != parent] + [parent]
    return chain


def build_message(outbound: Outbound, *, sender: str, message_id: str, now: datetime) -> EmailMessage:
    """The MIME message for ``outbound`` (pure: the id and the time are given)."""
    if any(a.data is None for a in outbound.attachments):
        missing = ", ".join(a.name or a.sha256[:12] for a in outbound.attachments if a.data is None)
        raise SendError(f"email: attachment bytes not loaded: {missing}", retryable=False)
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = sender
    msg["To"] = outbound.to.value
    msg["Subject"] = reply_subject(outbound.subject, outbound.thread.ticket_ref)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = message_id
    if outbound.thread.in_reply_to:
        msg["In-Reply-To"] = msg_id(outbound.thread.in_reply_to)
    chain = references(outbound)
    if chain:
        msg["References"] = " ".join(chain)
    if outbound.auto:
        msg["Auto-Submitted"] = "auto-replied"
        msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(outbound.text, charset="utf-8")
    if outbound.html:
        msg.add_alternative(outbound.html, subtype="html", charset="utf-8")
    for a in outbound.attachments:
        maintype, _, subtype = a.content_type.partition("/")
        msg.add_attachment(a.data, maintype=maintype or "application", subtype=subtype or "octet-stream", filename=a.name)
    return msg


# ---------------------------------------------------------------- loop breaker


class AutoReplyLimiter:
    """At most ``per_hour`` auto-replies to one address in any hour."""

    def __init__(self, ctx: ConnectorContext, per_hour: int, clock: Callable[[], float] = time.time) -> None:
        self._ctx = ctx
        self._per_hour = per_hour
        self._clock = clock
        self._lock = asyncio.Lock()  # check-and-reserve is one step within this instance

    async def reserve(self, address: str) -> bool:
        """Count one auto-reply to ``address``; False when over the limit."""
        key = f"email:auto-replies:{address}"
        async with self._lock:
            now = self._clock()
            stored = await self._ctx.state_get(key)
            recent = [t for t in (msgspec.json.decode(stored, type=list[float]) if stored else []) if now - t < _HOUR_S]
            if len(recent) >= self._per_hour:
                return False
            await self._ctx.state_set(key, msgspec.json.encode([*recent, now]).decode())
            return True


# ---------------------------------------------------------------- sending


class RelaySender:
    """Sends Outbounds through the configured relay."""

    def __init__(self, relay: RelaySettings, limiter: AutoReplyLimiter, senders: dict[str, str]) -> None:
        self._relay = relay
        self._limiter = limiter
        # a reply leaves from the address the customer wrote to, when known
        self._senders = senders
        self._tls = _client_tls(relay)

    async def send(self, outbound: Outbound) -> SendResult:
        recipient = self._recipient(outbound)
        if outbound.auto:
            await self._check_auto(outbound, recipient)
        sender = self._senders.get(outbound.account, self._relay.from_)
        envelope_from = address_of(sender)
        message_id = f"<{new_id()}@{envelope_from.rpartition('@')[2]}>"
        msg = build_message(outbound, sender=sender, message_id=message_id, now=utcnow())
        await self._deliver(msg, envelope_from, recipient)
        log.info("email_sent", outbound=outbound.id, ticket=outbound.ticket_id, message_id=message_id, auto=outbound.auto)
        return SendResult(external_id=message_id, thread_ref=message_id)

    def _recipient(self, outbound: Outbound) -> str:
        if outbound.to.kind != "email":
            raise SendError(f"email: cannot send to a {outbound.to.kind!r} identity", retryable=False)
        try:
            return address_of(outbound.to.value)
        except ValueError as exc:
            raise SendError(f"email: {exc}", retryable=False) from None

    async def _check_auto(self, outbound: Outbound, recipient: str) -> None:
        if outbound.in_reply_to_auto:
            # the core checks this too; a second check here is cheap insurance against loops
            raise SendError(f"email: no auto-reply to an automatic message ({outbound.in_reply_to_auto})", code="auto")
        if not await self._limiter.reserve(recipient):
            log.warning("email_auto_reply_limited", outbound=outbound.id, ticket=outbound.ticket_id)
            raise SendError("email: auto-reply rate limit reached for this recipient", code="rate_limited")

    async def _deliver(self, msg: EmailMessage, envelope_from: str, recipient: str) -> None:
        r = self._relay
        try:
            await aiosmtplib.send(
                msg,
                sender=envelope_from,
                recipients=[recipient],
                hostname=r.host,
                port=r.port or _DEFAULT_PORTS[r.security],
                username=r.user,
                password=r.password,
                use_tls=r.security == "tls",
                start_tls=r.security == "starttls",
                tls_context=self._tls,
                timeout=r.timeout,
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise SendError(f"email: relay refused the credentials: {exc.code}", code=str(exc.code)) from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [e.code for e in exc.recipients]
            raise _refused("recipient refused", codes[0] if codes else 550) from None
        except aiosmtplib.SMTPResponseException as exc:
            raise _refused(exc.message, exc.code) from None
        except (aiosmtplib.SMTPException, OSError) as exc:  # connect, disconnect, timeout
            raise SendError(f"email: relay unreachable: {type(exc).__name__}: {exc}", retryable=True) from None


def _refused(what: str, code: int) -> SendError:
    # 4xx is the relay saying "later", 5xx "never"
    return SendError(f"email: relay answered {code}: {what}", retryable=400 <= code < 500, code=str(code))


def _client_tls(relay: RelaySettings) -> ssl.SSLContext | None:
    if relay.security == "none":
        return None
    return ssl.create_default_context(cafile=relay.ca_file)
