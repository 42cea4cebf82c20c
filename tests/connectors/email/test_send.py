"""Replies out, through a real aiosmtpd relay sink on loopback: the headers
and body the customer's mail client gets, threading, auto-reply marking and
the loop breaker, relay security (none / STARTTLS + AUTH / implicit TLS) and
how relay refusals map to SendError."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from connectors.base import SendError
from connectors.email.client import EmailConnector
from routing.model import Attachment, Identity, Outbound, ThreadHints
from tests.connectors.email.conftest import Cert, MemoryContext

pytestmark = pytest.mark.integration

RELAY_USER, RELAY_PASSWORD = "gateway", "relay-pass"
ULID = r"[0-9A-HJKMNP-TV-Z]{26}"


@dataclass
class Sink:
    """A relay that keeps what it is given; ``rcpt_reply`` refuses recipients."""

    port: int = 0
    received: list[Envelope] = field(default_factory=list)
    logins: list[bytes] = field(default_factory=list)
    rcpt_reply: str | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received.append(envelope)
        return "250 OK"

    def authenticate(self, server, session: Session, envelope, mechanism: str, auth_data) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            RELAY_USER.encode(), RELAY_PASSWORD.encode())
        if ok:
            self.logins.append(auth_data.login)
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535

    def message(self) -> EmailMessage:
        [envelope] = self.received
        return message_from_bytes(envelope.original_content, policy=policy.default)  # type: ignore[return-value]


@asynccontextmanager
async def sink(*, starttls: ssl.SSLContext | None = None, implicit_tls: ssl.SSLContext | None = None) -> AsyncIterator[Sink]:
    state = Sink()

    def protocol() -> SMTP:
        return SMTP(
            state,
            tls_context=starttls,
            authenticator=state.authenticate,
            # aiosmtpd cannot tell an implicit-TLS socket is encrypted
            auth_require_tls=implicit_tls is None,
            hostname="relay.test",
        )

    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0, ssl=implicit_tls)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def connector(port: int, *, per_hour: int = 3, **relay: object) -> tuple[EmailConnector, MemoryContext]:
    ctx = MemoryContext({
        "smtp": {"listen": "127.0.0.1:0", "mailboxes": {"sales": "Sales Team <sales@example.org>"}},
        "relay": {"host": "127.0.0.1", "port": port, "security": "none",
                  "from": "Example Support <support@example.com>", **relay},
        "auto_replies_per_hour": per_hour,
    })
    return EmailConnector(ctx), ctx


def reply(**kw: object) -> Outbound:
    fields: dict = dict(
        id="01HOUT", ticket_id="01HTICKET", channel="email", account="support",
        to=Identity("email", "Zhang@Customer.example.net"),
        subject="订单 1001 未到",
        text="您好，\n\n您的包裹已于今天发出，单号 SF123。\n\n客服小李",
        thread=ThreadHints(in_reply_to="<m2@customer.example.net>",
                           references=["<m1@customer.example.net>"], ticket_ref="1234"),
    )
    fields.update(kw)
    return Outbound(**fields)


async def test_reply_headers_and_body_the_customer_gets():
    async with sink() as relay:
        email, _ = connector(relay.port)
        result = await email.send(reply(html="<p>您好，包裹已发出。</p>"))
    [envelope] = relay.received
    assert envelope.mail_from == "support@example.com"
    assert envelope.rcpt_tos == ["zhang@customer.example.net"]
    msg = relay.message()
    assert re.fullmatch(rf"<{ULID}@example\.com>", msg["Message-ID"])
    assert result.external_id == result.thread_ref == msg["Message-ID"]
    assert msg["From"] == "Example Support <support@example.com>"
    assert msg["To"] == "Zhang@Customer.example.net"
    assert msg["Subject"] == "Re: 订单 1001 未到 [#1234]"
    assert msg["In-Reply-To"] == "<m2@customer.example.net>"
    assert msg["References"] == "<m1@customer.example.net> <m2@customer.example.net>"
    assert msg["Date"] is not None
    assert msg["Auto-Submitted"] is None and msg["X-Auto-Response-Suppress"] is None
    text = msg.get_body(("plain",))
    assert text.get_content_charset() == "utf-8"
    # MIME text travels in canonical form (CRLF line ends, RFC 2046 §4.1.1)
    assert text.get_content().replace("\r\n", "\n") == "您好，\n\n您的包裹已于今天发出，单号 SF123。\n\n客服小李\n"
    assert msg.get_body(("html",)).get_content().strip() == "<p>您好，包裹已发出。</p>"


async def test_reply_leaves_from_the_mailbox_the_customer_wrote_to():
    async with sink() as relay:
        email, _ = connector(relay.port)
        result = await email.send(reply(account="sales", subject="Re: price [#1234]"))
    msg = relay.message()
    assert msg["From"] == "Sales Team <sales@example.org>"
    assert result.external_id.endswith("@example.org>")
    assert msg["Subject"] == "Re: price [#1234]"  # neither Re: nor the tag doubled


async def test_attachments_go_along():
    pdf = b"%PDF-1.4 fake invoice"
    async with sink() as relay:
        email, _ = connector(relay.port)
        await email.send(reply(attachments=[Attachment("发票.pdf", "application/pdf", len(pdf), "0" * 64, data=pdf)]))
    [part] = list(relay.message().iter_attachments())
    assert (part.get_filename(), part.get_content_type(), part.get_content()) == ("发票.pdf", "application/pdf", pdf)


async def test_auto_reply_is_marked_and_rate_limited_per_address():
    async with sink() as relay:
        email, ctx = connector(relay.port, per_hour=2)
        for _ in range(2):
            await email.send(reply(auto=True))
        with pytest.raises(SendError) as limited:
            await email.send(reply(auto=True))
        await email.send(reply(auto=True, to=Identity("email", "li@customer.example.net")))  # another address
        await email.send(reply())  # agents' replies are never limited
    assert (limited.value.code, limited.value.retryable) == ("rate_limited", False)
    assert [e.rcpt_tos[0] for e in relay.received] == [
        "zhang@customer.example.net", "zhang@customer.example.net", "li@customer.example.net", "zhang@customer.example.net"]
    first = message_from_bytes(relay.received[0].original_content, policy=policy.default)
    assert first["Auto-Submitted"] == "auto-replied"
    assert first["X-Auto-Response-Suppress"] == "All"
    # the count lives in the context's state: a restarted connector keeps it
    assert "email:auto-replies:zhang@customer.example.net" in ctx.state


async def test_no_auto_reply_to_an_automatic_message():
    async with sink() as relay:
        email, _ = connector(relay.port)
        with pytest.raises(SendError) as refused:
            await email.send(reply(auto=True, in_reply_to_auto="bounce"))
    assert refused.value.code == "auto" and not refused.value.retryable
    assert relay.received == []


async def test_starttls_and_auth(self_signed: Cert):
    async with sink(starttls=self_signed.server_context()) as relay:
        email, _ = connector(relay.port, security="starttls", user=RELAY_USER, password=RELAY_PASSWORD,
                             ca_file=str(self_signed.cert))
        await email.send(reply())
    assert relay.logins == [RELAY_USER.encode()]
    assert len(relay.received) == 1


async def test_implicit_tls(self_signed: Cert):
    async with sink(implicit_tls=self_signed.server_context()) as relay:
        email, _ = connector(relay.port, security="tls", user=RELAY_USER, password=RELAY_PASSWORD,
                             ca_file=str(self_signed.cert))
        await email.send(reply())
    assert len(relay.received) == 1


async def test_untrusted_relay_certificate_is_not_used(self_signed: Cert):
    async with sink(starttls=self_signed.server_context()) as relay:
        email, _ = connector(relay.port, security="starttls")  # system CAs do not know it
        with pytest.raises(SendError) as failed:
            await email.send(reply())
    assert relay.received == []
    assert failed.value.retryable


async def test_wrong_relay_password_is_not_retryable(self_signed: Cert):
    async with sink(starttls=self_signed.server_context()) as relay:
        email, _ = connector(relay.port, security="starttls", user=RELAY_USER, password="wrong",
                             ca_file=str(self_signed.cert))
        with pytest.raises(SendError) as failed:
            await email.send(reply())
    assert (failed.value.code, failed.value.retryable) == ("535", False)


@pytest.mark.parametrize(("answer", "retryable"), [
    ("550 5.1.1 No such user", False),
    ("451 4.3.0 Try later", True),
])
async def test_relay_refusals(answer: str, retryable: bool):
    async with sink() as relay:
        relay.rcpt_reply = answer
        email, _ = connector(relay.port)
        with pytest.raises(SendError) as failed:
            await email.send(reply())
    assert (failed.value.code, failed.value.retryable) == (answer[:3], retryable)


async def test_relay_down_is_retryable():
    async with sink() as relay:
        port = relay.port
    email, _ = connector(port)  # nothing listens there any more
    with pytest.raises(SendError) as failed:
        await email.send(reply())
    assert failed.value.retryable


async def test_only_email_identities():
    email, _ = connector(1)
    with pytest.raises(SendError, match="wechat_openid"):
        await email.send(reply(to=Identity("wechat_openid", "wx1:o123")))
