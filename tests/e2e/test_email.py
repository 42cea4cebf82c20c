"""Email end to end: a corpus mail in over the gateway's SMTP server, the
agent's reply out through an aiosmtpd relay sink (threading headers and the
``[#n]`` subject tag), and the customer's answer to that reply threaded back
onto the same ticket by its Message-ID."""

from __future__ import annotations

import aiosmtplib
import pytest

from tests.clock import BUSINESS_HOURS
from tests.connectors.email.conftest import listening
from tests.connectors.email.test_send import sink
from tests.corpus import require_corpus
from tests.e2e.conftest import Gateway, wait_for

MAILBOX = "bob@example.com"  # the To: of the corpus mail

pytestmark = pytest.mark.integration


async def deliver(port: int, raw: bytes, sender: str) -> None:
    await aiosmtplib.send(raw, sender=sender, recipients=[MAILBOX], hostname="127.0.0.1", port=port)


@pytest.mark.clock(BUSINESS_HOURS)  # asserts every send: the evening's opening-hours reply aside
async def test_mail_in_reply_out_and_the_answer_threads_back(start_gateway, unused_tcp_port_factory) -> None:
    raw = (require_corpus() / "email" / "talon_gmail.eml").read_bytes()
    smtp_port = unused_tcp_port_factory()
    async with sink() as relay:
        gw: Gateway = await start_gateway(email={
            "smtp": {"listen": f"127.0.0.1:{smtp_port}", "mailboxes": {"support": MAILBOX}},
            "relay": {"host": "127.0.0.1", "port": relay.port, "security": "none",
                      "from": f"Support <{MAILBOX}>"},
        })
        await listening(smtp_port)
        await deliver(smtp_port, raw, "xxx@gmail.com")
        await wait_for(gw.journal, lambda items: len(items) == 1)
        await gw.drain()
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
        await deliver(smtp_port, answer, "xxx@gmail.com")
        await wait_for(gw.journal, lambda items: len(items) == 2)
        await gw.drain()
        items = await gw.journal()
        assert [e.get("ticket_id") for e in items] == [ticket["id"], ticket["id"]]
        texts = [e["text"] for e in await gw.timeline(ticket["id"], "message_in", "message_out")]
        assert texts[-1].startswith("Great, thank you!")

        # the reply bounces: the DSN (RFC 3464) names it, and joins its ticket, unanswered
        await deliver(smtp_port, dsn(bounced=msg["Message-ID"].strip(), to=MAILBOX), "mailer-daemon@mx.example.org")
        await wait_for(gw.journal, lambda items: len(items) == 3)
        await gw.drain()
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
