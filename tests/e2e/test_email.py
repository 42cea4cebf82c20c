"""Email end to end: a corpus mail in over the gateway's SMTP server, the
agent's reply out through an aiosmtpd relay sink (threading headers and the
``[#n]`` subject tag), and the customer's answer to that reply threaded back
onto the same ticket by its Message-ID."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import aiosmtplib
import pytest

from tests.clock import BUSINESS_HOURS
from tests.connectors.email.conftest import listening
from tests.connectors.email.test_send import sink
from tests.corpus import require_corpus
from tests.e2e.conftest import Gateway, wait_for

MAILBOX = "bob@example.com"  # the To: of the corpus mail

pytestmark = pytest.mark.integration


@asynccontextmanager
async def email_gateway(start_gateway, smtp_port: int) -> AsyncIterator[tuple[Gateway, Any]]:
    """A gateway taking mail for :data:`MAILBOX` on ``smtp_port`` and sending
    through a relay sink: (gateway, sink), once its SMTP server listens."""
    async with sink() as relay:
        gw: Gateway = await start_gateway(email={
            "smtp": {"listen": f"127.0.0.1:{smtp_port}", "mailboxes": {"support": MAILBOX}},
            "relay": {"host": "127.0.0.1", "port": relay.port, "security": "none",
                      "from": f"Support <{MAILBOX}>"},
        })
        await listening(smtp_port)
        yield gw, relay


async def take(gw: Gateway, port: int, count: int, raw: bytes, sender: str) -> None:
    """Deliver one mail, then wait until the journal holds ``count`` entries
    and the pipeline has processed them."""
    await deliver(port, raw, sender)
    await wait_for(gw.journal, lambda items: len(items) == count)
    await gw.drain()


async def deliver(port: int, raw: bytes, sender: str) -> None:
    if sender:
        await aiosmtplib.send(raw, sender=sender, recipients=[MAILBOX], hostname="127.0.0.1", port=port)
        return
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await smtp.connect()
    await smtp.sendmail("", [MAILBOX], raw)  # MAIL FROM:<> (a null reverse-path)
    await smtp.quit()


@pytest.mark.clock(BUSINESS_HOURS)  # asserts every send: the evening's opening-hours reply aside
async def test_mail_in_reply_out_and_the_answer_threads_back(start_gateway, unused_tcp_port_factory) -> None:
    raw = (require_corpus() / "email" / "talon_gmail.eml").read_bytes()
    smtp_port = unused_tcp_port_factory()
    async with email_gateway(start_gateway, smtp_port) as (gw, relay):
        await take(gw, smtp_port, 1, raw, "xxx@gmail.com")
        _, ticket, contact = await gw.only_ticket()
        assert {"kind": "email", "value": "xxx@gmail.com"} in contact["identities"]

        reply = await gw.reply(ticket["id"], "Thanks, fixed.")
        delivery = await gw.delivery(ticket["id"], reply["id"], lambda d: d["status"] != "queued")
        assert delivery["status"] == "sent", delivery
        msg = relay.message()
        original = "<CAKsfaBW4hj0Gek6TwbR3erng4P1y0CZzJ0d=pXtCNnYnbe7PLg@mail.gmail.com>"
        # a long msg-id may be folded onto its own line (legal RFC 5322 folding)
        assert msg["In-Reply-To"].strip() == original and original in msg["References"]
        assert msg["Subject"] == f"Re: Test [#{ticket['number']}]"
        assert msg["Message-ID"].strip() == delivery["external_id"]

        answer = (f"From: Megan One <xxx@gmail.com>\r\nTo: {MAILBOX}\r\nSubject: Re: Test\r\n"
                  f"Message-ID: <answer-1@mail.gmail.com>\r\nIn-Reply-To: {msg['Message-ID'].strip()}\r\n"
                  "Date: Mon, 2 Nov 2026 10:00:00 +0000\r\n\r\nGreat, thank you!\r\n").encode()
        await take(gw, smtp_port, 2, answer, "xxx@gmail.com")
        items = await gw.journal()
        assert [e.get("ticket_id") for e in items] == [ticket["id"], ticket["id"]]
        texts = [e["text"] for e in await gw.timeline(ticket["id"], "message_in", "message_out")]
        assert texts[-1].startswith("Great, thank you!")

        # the reply bounces: the DSN (RFC 3464) names it, and joins its ticket, unanswered
        await take(gw, smtp_port, 3, dsn(bounced=msg["Message-ID"].strip(), to=MAILBOX),
                   "mailer-daemon@mx.example.org")
        bounce = (await gw.journal())[-1]
        assert bounce["status"] == "processed" and bounce["ticket_id"] == ticket["id"]
        [entry] = [e for e in await gw.timeline(ticket["id"], "message_in") if e["data"].get("auto") == "bounce"]
        assert entry["data"]["reasons"]["threading"]["ref"] == msg["Message-ID"].strip().strip("<>")
        assert len(relay.received) == 1  # nothing answered the bounce


def dsn(bounced: str, to: str) -> bytes:
    """A delivery-status notification for ``bounced`` (synthetic, after RFC 3464's example)."""
    return (
        f"From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\nTo: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn-1@mx.example.org>\r\n"
        "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
        "Final-Recipient: rfc822; xxx@gmail.com\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {to}\r\nTo: xxx@gmail.com\r\nSubject: Re: Test\r\nMessage-ID: {bounced}\r\n"
        "--B--\r\n"
    ).encode()


def mail(sender: str, subject: str, message_id: str, text: str, **headers: str) -> bytes:
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (f"From: {sender}\r\nTo: {MAILBOX}\r\nSubject: {subject}\r\nMessage-ID: <{message_id}>\r\n{extra}"
            "Date: Mon, 2 Nov 2026 10:00:00 +0000\r\n\r\n" + text + "\r\n").encode()


async def test_a_stranger_quoting_a_customers_message_id_cannot_take_over_the_ticket(
        start_gateway, unused_tcp_port_factory) -> None:
    """Issue 10, item 2: header threading trusts only the ticket's contact and its participants."""
    smtp_port = unused_tcp_port_factory()
    async with email_gateway(start_gateway, smtp_port) as (gw, relay):
        await take(gw, smtp_port, 1, mail("Li Lei <li@example.cn>", "Invoice 4411", "li-1@example.cn",
                                          "My invoice address is wrong.", Cc="boss@example.cn"), "li@example.cn")
        _, ticket, _ = await gw.only_ticket()

        # a stranger replies to the customer's Message-ID: own ticket, which mentions the customer's
        await take(gw, smtp_port, 2, mail("Mallory <mallory@evil.example>", "Re: Invoice 4411", "m-1@evil.example",
                                          "Please send the invoice to me instead.", In_Reply_To="<li-1@example.cn>"),
                   "mallory@evil.example")
        stranger = (await gw.journal())[-1]
        assert stranger["status"] == "processed" and stranger["ticket_id"] != ticket["id"]
        [mention] = [e for e in await gw.timeline(stranger["ticket_id"], "event")]
        assert mention["data"]["mentions"] == {"ticket_id": ticket["id"], "number": ticket["number"]}
        assert f"mentions ticket #{ticket['number']}" in mention["text"]
        [noted] = [e for e in await gw.timeline(ticket["id"], "event")]
        assert noted["data"]["mentioned_by"]["ticket_id"] == stranger["ticket_id"]
        assert [e["text"] for e in await gw.timeline(ticket["id"], "message_in")] == ["My invoice address is wrong."]

        # the Cc of the customer's mail is a participant: it joins, but the replies stay with the customer
        await take(gw, smtp_port, 3, mail("Boss <boss@example.cn>", "Re: Invoice 4411", "boss-1@example.cn",
                                          "Approved.", In_Reply_To="<li-1@example.cn>"), "boss@example.cn")
        assert (await gw.journal())[-1]["ticket_id"] == ticket["id"]

        reply = await gw.reply(ticket["id"], "Your invoice has been corrected.")
        delivery = await gw.delivery(ticket["id"], reply["id"], lambda d: d["status"] != "queued")
        assert delivery["status"] == "sent", delivery
        # (auto-replies aside: at some hours the shipped after-hours rule answers each sender's envelope)
        [envelope] = [e for e in relay.received if b"Auto-Submitted:" not in e.original_content]
        assert envelope.rcpt_tos == ["li@example.cn"]  # not mallory, not the boss


async def test_a_reused_message_id_with_other_content_is_kept_and_a_null_sender_gets_no_auto_reply(
        start_gateway, unused_tcp_port_factory) -> None:
    """Issue 10, item 4: no silent drop of a reused Message-ID; RFC 3834 on the SMTP envelope."""
    smtp_port = unused_tcp_port_factory()
    async with email_gateway(start_gateway, smtp_port) as (gw, relay):
        await deliver(smtp_port, mail("li@example.cn", "Password", "dup@example.cn",
                                      "I forgot my password, please help me reset password"), "li@example.cn")
        await deliver(smtp_port, mail("li@example.cn", "Password", "dup@example.cn",
                                      "Different words under the same id"), "li@example.cn")
        # a forged From with a null envelope sender (MAIL FROM:<>): never answered automatically
        await take(gw, smtp_port, 3, mail("victim@example.org", "Password", "forged@example.org",
                                          "I forgot my password, please help me reset password"), "")
        first, second, forged = await gw.journal()
        assert second["status"] == "processed" and second["ticket_id"] == first["ticket_id"]
        entries = await gw.timeline(first["ticket_id"], "message_in")
        assert [e["text"] for e in entries][-1] == "Different words under the same id"
        assert "message-id reused with different content" in entries[-1]["data"]["defects"]
        assert forged["status"] == "processed"
        assert not [e for e in await gw.timeline(forged["ticket_id"], "message_out")]
