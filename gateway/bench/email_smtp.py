"""``omnigate bench`` figure of email intake: SMTP accept → durable → ``250``.

Several concurrent SMTP clients deliver one message per transaction over
kept-alive connections to

- the connector's real SMTP server (:func:`connectors.email.smtp_server.start_smtp`:
  RCPT check, idempotency key, ``ctx.ingest`` into the real journal — the
  SQLite store with group commit, through the gateway's ``Ingest`` — then
  ``250``);
- the raw baseline: aiosmtpd with a handler that answers ``250`` at once.

It lives in the bench package because it wires a connector to the store, which a
connector itself never imports.

The clients are a minimal SMTP dialogue on asyncio streams (lighter than a
client library, so the server is what is measured), in the same process and
event loop as the server; the fsync runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import tempfile
import time

from aiosmtpd.smtp import SMTP

from connectors.email.settings import SmtpSettings
from connectors.email.smtp_server import start_smtp

CLIENTS = 8
SECONDS_PER_SIDE = 4.0  # two sides and a warm-up stay well inside the 20 s budget
WARM_UP_S = 0.5
RECIPIENT = "support@example.com"
_BODY = ("Hello,\r\n\r\nmy order 1001 has not arrived yet. Could you check where it is?\r\n\r\n" * 20).encode()


def _message(n: int) -> bytes:
    headers = (
        "From: Customer <customer@example.net>\r\n"
        f"To: {RECIPIENT}\r\n"
        f"Subject: order question {n}\r\n"
        f"Message-ID: <bench-{n}@example.net>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    return headers.encode() + _BODY


class _AcceptAll:
    async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
        return "250 OK"


async def _expect(reader: asyncio.StreamReader, code: bytes) -> None:
    """Read one (possibly multi-line) reply and check its code."""
    while True:
        line = await reader.readline()
        if not line.startswith(code):
            raise RuntimeError(f"SMTP server answered {line!r}, expected {code.decode()}")
        if line[3:4] != b"-":
            return


async def _client(port: int, deadline: float, first: int) -> int:
    """Deliver messages over one connection until ``deadline``; return how many."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        await _expect(reader, b"220")
        writer.write(b"EHLO bench.example.net\r\n")
        await _expect(reader, b"250")
        while time.perf_counter() < deadline:
            for command, code in ((b"MAIL FROM:<customer@example.net>", b"250"), (f"RCPT TO:<{RECIPIENT}>".encode(), b"250"), (b"DATA", b"354")):
                writer.write(command + b"\r\n")
                await _expect(reader, code)
            writer.write(_message(first + sent) + b"\r\n.\r\n")
            await _expect(reader, b"250")
            sent += 1
        writer.write(b"QUIT\r\n")
        await _expect(reader, b"221")
    finally:
        writer.close()
    return sent


async def _rate(port: int, seconds: float, offset: int) -> float:
    """Messages per second accepted by the server on ``port`` under CLIENTS clients."""
    start = time.perf_counter()
    counts = await asyncio.gather(*(_client(port, start + seconds, offset + i * 1_000_000) for i in range(CLIENTS)))
    return sum(counts) / (time.perf_counter() - start)


async def _serve_and_measure(server: asyncio.Server, offset: int) -> float:
    port = server.sockets[0].getsockname()[1]
    try:
        await _rate(port, WARM_UP_S, offset)
        return await _rate(port, SECONDS_PER_SIDE, offset + 100_000)
    finally:
        server.close()
        await server.wait_closed()


async def figures() -> dict[str, dict]:
    from gateway.ingest import ChannelContext, Ingest
    from gateway.metrics import Metrics
    from gateway.store.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory(prefix="omnigate-email-bench-") as tmp:
        store = SQLiteStore.in_dir(tmp)
        try:
            ctx = ChannelContext("email", {}, tmp, Ingest(store, Metrics()), store)
            settings = SmtpSettings(listen="127.0.0.1:0", mailboxes={"support": RECIPIENT})
            value = await _serve_and_measure(await start_smtp(ctx, settings), 0)
            journaled = (await store.journal_counts())["pending"]
        finally:
            await store.close()
    raw = await asyncio.get_running_loop().create_server(lambda: SMTP(_AcceptAll()), "127.0.0.1", 0)
    baseline = await _serve_and_measure(raw, 10_000_000)
    return {
        "email_smtp_accept": {
            "value": round(value, 1),
            "unit": "msg/s",
            "baseline": round(baseline, 1),
            "baseline_label": "aiosmtpd answering 250 at once (no journal)",
            "ratio": round(value / baseline, 3),
            "detail": {
                "clients": CLIENTS, "message_bytes": len(_message(0)), "journaled": journaled,
                "what": "250 only after the message is durable in the journal (SQLite, group commit)",
            },
        }
    }
