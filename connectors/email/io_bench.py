"""``omnigate bench`` figure of email intake: SMTP accept → durable → ``250``.

Several concurrent SMTP clients deliver one message per transaction over
kept-alive connections to

- the connector's real SMTP server (:func:`.smtp_server.start_smtp`: RCPT
  check, idempotency key, ``ctx.ingest``, then ``250``), whose context
  appends each message to a file and fsyncs it — a stand-in for the journal
  until the bench is wired to the real one (no group commit, so this is the
  one-fsync-per-message floor);
- the raw baseline: aiosmtpd with a handler that answers ``250`` at once.

The clients are a minimal SMTP dialogue on asyncio streams (lighter than a
client library, so the server is what is measured), in the same process and
event loop as the server; the fsync runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from connectors.base import IngestResult
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


class FsyncFileContext:
    """A ConnectorContext whose ingest is an fsync'd append to one file."""

    channel = "email"

    def __init__(self, path: Path) -> None:
        self.config: Mapping[str, Any] = {}
        self.data_dir = str(path.parent)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._state: dict[str, str] = {}
        self.count = 0

    def _append(self, record: bytes) -> None:
        os.write(self._fd, record)  # one write per record: O_APPEND keeps records whole
        os.fsync(self._fd)

    async def ingest(self, account: str, key: str, raw: bytes, meta: Mapping[str, Any] | None = None) -> IngestResult:
        record = f"{account}\t{key}\t{len(raw)}\n".encode() + raw
        await asyncio.to_thread(self._append, record)
        self.count += 1
        return IngestResult(str(self.count), created=True)

    async def state_get(self, key: str) -> str | None:
        return self._state.get(key)

    async def state_set(self, key: str, value: str) -> None:
        self._state[key] = value

    def close(self) -> None:
        os.close(self._fd)


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
    with tempfile.TemporaryDirectory(prefix="omnigate-email-bench-") as tmp:
        ctx = FsyncFileContext(Path(tmp) / "journal.log")
        try:
            settings = SmtpSettings(listen="127.0.0.1:0", mailboxes={"support": RECIPIENT})
            value = await _serve_and_measure(await start_smtp(ctx, settings), 0)
        finally:
            ctx.close()
    raw = await asyncio.get_running_loop().create_server(lambda: SMTP(_AcceptAll()), "127.0.0.1", 0)
    baseline = await _serve_and_measure(raw, 10_000_000)
    return {
        "email_smtp_accept": {
            "value": round(value, 1),
            "unit": "msg/s",
            "baseline": round(baseline, 1),
            "baseline_label": "aiosmtpd answering 250 at once (no journal)",
            "ratio": round(value / baseline, 3),
            "detail": (
                f"{CLIENTS} concurrent SMTP clients, one {len(_message(0))}-byte message per transaction; "
                "250 only after an fsync'd file append (journal stand-in, one fsync per message)"
            ),
        }
    }
