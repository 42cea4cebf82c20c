"""Inbound SMTP against the real aiosmtpd server the connector runs on
loopback, spoken to by a real SMTP client (aiosmtplib): recipients, size
limit, 250 only once journaled, 451 when the journal fails or the backlog
limit is reached, STARTTLS;
and the idempotency key taken from the header block."""

from __future__ import annotations

import hashlib
from email.message import EmailMessage

import aiosmtplib
import pytest

from connectors.email.keys import content_digest, message_key
from tests.connectors.email.conftest import Cert, MemoryContext, listening, running
from tests.integration.dovecot import free_port

pytestmark = pytest.mark.integration

MAX_BYTES = 20_000


def config(port: int, **smtp: object) -> dict:
    return {
        "smtp": {
            "listen": f"127.0.0.1:{port}",
            "domains": ["example.com", "example.org"],
            "mailboxes": {"support": "support@example.com", "sales": "Sales <sales@example.org>"},
            "max_bytes": MAX_BYTES,
            **smtp,
        }
    }


def mail(message_id: str | None = "<order-1@customer.example.net>", body: str = "我的订单还没到，请帮忙查一下。") -> bytes:
    msg = EmailMessage()
    msg["From"] = "张三 <zhang@customer.example.net>"
    msg["To"] = "support@example.com"
    msg["Subject"] = "订单 1001 未到"
    if message_id:
        msg["Message-ID"] = message_id
    msg.set_content(body)
    return msg.as_bytes()


@pytest.fixture
def smtp_ctx() -> tuple[MemoryContext, int]:
    port = free_port()
    return MemoryContext(config(port)), port


async def client(port: int, **kw: object) -> aiosmtplib.SMTP:
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, **kw)
    await smtp.connect()
    await smtp.ehlo()
    return smtp


async def test_accepts_for_a_mailbox_only_once_journaled(smtp_ctx):
    ctx, port = smtp_ctx
    raw = mail()
    async with running(ctx):
        await listening(port)
        smtp = await client(port)
        await smtp.mail("zhang@customer.example.net")
        code, _ = await smtp.rcpt("Support@Example.com")
        assert code == 250
        code, reply = await smtp.data(raw)
        await smtp.quit()
    assert code == 250
    # the 250 came after the ingest: the entry is there, exactly as sent
    [entry] = ctx.journal
    assert entry.account == "support"
    assert entry.key == "mid:<order-1@customer.example.net>#" + content_digest(raw)
    assert entry.raw.replace(b"\r\n", b"\n") == raw.replace(b"\r\n", b"\n")
    assert entry.meta == {
        "mail_from": "zhang@customer.example.net",
        "rcpt_tos": ["Support@Example.com"],
        "peer": "127.0.0.1",
    }


async def test_refuses_unknown_mailbox_and_foreign_domain(smtp_ctx):
    ctx, port = smtp_ctx
    async with running(ctx):
        await listening(port)
        smtp = await client(port)
        await smtp.mail("zhang@customer.example.net")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as unknown:
            await smtp.rcpt("nobody@example.com")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as relay:
            await smtp.rcpt("victim@elsewhere.example.net")
        await smtp.quit()
    assert (unknown.value.code, unknown.value.message[:5]) == (550, "5.1.1")
    assert (relay.value.code, relay.value.message[:5]) == (550, "5.7.1")
    assert ctx.calls == []


async def test_one_entry_per_receiving_account(smtp_ctx):
    ctx, port = smtp_ctx
    async with running(ctx):
        await listening(port)
        await aiosmtplib.send(
            mail(), hostname="127.0.0.1", port=port, start_tls=False,
            sender="zhang@customer.example.net",
            recipients=["support@example.com", "sales@example.org", "SUPPORT@example.com"],
        )
    assert [(e.account, e.key.split("#")[0]) for e in ctx.journal] == [
        ("support", "mid:<order-1@customer.example.net>"),
        ("sales", "mid:<order-1@customer.example.net>"),
    ]


async def test_message_without_message_id_is_keyed_by_its_bytes(smtp_ctx):
    ctx, port = smtp_ctx
    raw = mail(message_id=None)
    async with running(ctx):
        await listening(port)
        await aiosmtplib.send(raw, hostname="127.0.0.1", port=port, start_tls=False,
                              sender="zhang@customer.example.net", recipients=["support@example.com"])
    [entry] = ctx.journal
    assert entry.key == "sha256:" + hashlib.sha256(entry.raw).hexdigest()


async def test_size_is_advertised_and_enforced(smtp_ctx):
    ctx, port = smtp_ctx
    async with running(ctx):
        await listening(port)
        smtp = await client(port)
        assert smtp.supports_extension("size")
        assert smtp.esmtp_extensions["size"] == str(MAX_BYTES)
        # declared too big up front: refused at MAIL
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as declared:
            await smtp.mail("zhang@customer.example.net", options=[f"SIZE={MAX_BYTES + 1}"])
        assert declared.value.code == 552
        await smtp.rset()
        # not declared, but too big: refused after DATA
        await smtp.mail("zhang@customer.example.net")
        await smtp.rcpt("support@example.com")
        with pytest.raises(aiosmtplib.SMTPDataError) as sent:
            await smtp.data(mail(body="x" * (MAX_BYTES + 10)))
        assert sent.value.code == 552
        await smtp.quit()
    assert ctx.calls == []


async def test_journal_failure_answers_451_and_the_retry_lands(smtp_ctx):
    ctx, port = smtp_ctx
    raw = mail()
    send = dict(hostname="127.0.0.1", port=port, start_tls=False,
                sender="zhang@customer.example.net", recipients=["support@example.com"])
    async with running(ctx):
        await listening(port)
        ctx.fail_ingest = True
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await aiosmtplib.send(raw, **send)
        assert (refused.value.code, refused.value.message[:5]) == (451, "4.3.0")
        assert ctx.journal == []
        ctx.fail_ingest = False
        await aiosmtplib.send(raw, **send)  # the sending server's retry
        await aiosmtplib.send(raw, **send)  # and a duplicate delivery: same key, one entry
    assert len(ctx.journal) == 1 and len(ctx.calls) == 2


@pytest.mark.parametrize("hook, reason", [("backlog_full", "backlog_full"), ("shed", "overloaded")])
async def test_refused_for_load_answers_451_4_3_2_and_the_retry_lands(smtp_ctx, hook, reason):
    """At the optional backlog limit (pipeline.backlog_limit) and while the
    pipeline is starved (shedding, pipeline.admission_shed) the sending MTA is
    told to retry (it does, for days): nothing journaled, counted as a refusal
    with its own reason; once the load is gone the retry is taken."""
    ctx, port = smtp_ctx
    loaded = [True]
    setattr(ctx, hook, lambda: loaded[0])  # the gateway's ChannelContext.backlog_full / .shed
    send = dict(hostname="127.0.0.1", port=port, start_tls=False,
                sender="zhang@customer.example.net", recipients=["support@example.com"])
    async with running(ctx):
        await listening(port)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await aiosmtplib.send(mail(), **send)
        assert (refused.value.code, refused.value.message[:5]) == (451, "4.3.2")
        assert ctx.calls == [] and ctx.refusals == [reason]
        loaded[0] = False
        await aiosmtplib.send(mail(), **send)  # the sending server's retry
    assert len(ctx.journal) == 1


async def test_starttls_with_the_configured_certificate(self_signed: Cert):
    port = free_port()
    ctx = MemoryContext(config(port, tls_cert=str(self_signed.cert), tls_key=str(self_signed.key)))
    async with running(ctx):
        await listening(port)
        smtp = await client(port, tls_context=self_signed.client_context())
        assert smtp.supports_extension("starttls")
        await smtp.starttls()
        await smtp.ehlo()
        assert smtp.get_transport_info("sslcontext") is not None
        await smtp.sendmail("zhang@customer.example.net", ["support@example.com"], mail())
        await smtp.quit()
    assert [e.account for e in ctx.journal] == ["support"]


async def test_no_starttls_without_a_certificate(smtp_ctx):
    ctx, port = smtp_ctx
    async with running(ctx):
        await listening(port)
        smtp = await client(port)
        assert not smtp.supports_extension("starttls")
        await smtp.quit()


@pytest.mark.parametrize(("raw", "key"), [
    (b"Subject: x\r\nMessage-ID: <a@b.example>\r\n\r\nbody", "mid:<a@b.example>"),
    (b"message-id:\r\n  <folded@b.example>\r\nSubject: x\r\n\r\n", "mid:<folded@b.example>"),
    (b"Message-Id: <first@x> <second@x>\n\nbody", "mid:<first@x>"),
])
def test_key_is_the_message_id(raw: bytes, key: str):
    assert message_key(raw) == key + "#" + content_digest(raw)


def test_same_message_id_with_another_body_is_another_key_but_transport_differences_are_not():
    a = b"Subject: x\r\nMessage-ID: <a@b.example>\r\n\r\nhello  \r\nworld\r\n\r\n"
    same = b"Received: by mx\nSubject: x\nMessage-ID: <a@b.example>\n\nhello\nworld\n"  # the IMAP copy
    other = b"Subject: x\r\nMessage-ID: <a@b.example>\r\n\r\nsend the money elsewhere\r\n"
    assert message_key(a) == message_key(same) != message_key(other)
    assert message_key(a).split("#")[0] == message_key(other).split("#")[0] == "mid:<a@b.example>"


@pytest.mark.parametrize("raw", [
    b"Subject: no id\r\n\r\nMessage-ID: <in-the-body@x>\r\n",  # only the header block counts
    b"Message-ID: not-an-id\r\n\r\nbody",
])
def test_key_falls_back_to_the_bytes(raw: bytes):
    assert message_key(raw) == "sha256:" + hashlib.sha256(raw).hexdigest()


async def test_recipients_per_message_are_capped_with_452(tmp_path):
    port = free_port()
    ctx = MemoryContext(config(port, max_recipients=2, domains=["example.com"],
                               mailboxes={"a": "a@example.com", "b": "b@example.com", "c": "c@example.com"}))
    async with running(ctx):
        await listening(port)
        smtp = await client(port)
        await smtp.mail("zhang@customer.example.net")
        assert (await smtp.rcpt("a@example.com"))[0] == 250
        assert (await smtp.rcpt("b@example.com"))[0] == 250
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as third:
            await smtp.rcpt("c@example.com")
        assert third.value.code == 452 and "too many recipients" in third.value.message.lower()
        code, _ = await smtp.data(mail())
        await smtp.quit()
    assert code == 250 and sorted(e.account for e in ctx.journal) == ["a", "b"]


async def test_a_session_probing_addresses_is_closed_after_the_refused_limit():
    port = free_port()
    ctx = MemoryContext(config(port, max_refused_recipients=3))
    async with running(ctx):
        await listening(port)
        smtp = await client(port)
        await smtp.mail("prober@spam.example.net")
        codes = []
        for n in range(3):
            try:
                await smtp.rcpt(f"guess{n}@example.com")
            except aiosmtplib.SMTPRecipientRefused as exc:
                codes.append(exc.code)
        assert codes == [550, 550, 421]
        with pytest.raises(aiosmtplib.SMTPException):  # the server hung up
            await smtp.rcpt("support@example.com")
    assert ctx.calls == []
