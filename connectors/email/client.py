"""The email connector's I/O: SMTP intake, IMAP mailboxes, replies out.

:class:`EmailConnector` is what the gateway builds as ``EmailConnector(ctx)``
(``ctx.config`` is the ``email`` section, see :mod:`.settings`):

- ``run()`` starts the SMTP server (:mod:`.smtp_server`) when ``smtp`` is
  configured and one watcher per ``imap`` account (:mod:`.imap`), each as
  its own task under the gateway's supervisor — one failing mailbox does not
  stop the others, and the supervisor owns reconnects and back-off;
- ``send()`` delivers replies through the ``relay`` (:mod:`.outbound`);
- ``routes()`` is empty: email does not arrive over HTTP.

The supervisor comes from the context as ``ctx.supervisor`` (anything with
``async run(tasks)``, i.e. ``gateway.supervisor.Supervisor``): connectors
import nothing of the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Protocol

from connectors.base import ConnectorContext, Fatal, SendError, SendResult, owned
from connectors.email.imap import ImapWatcher
from connectors.email.outbound import AutoReplyLimiter, RelaySender
from connectors.email.settings import EmailSettings, load_settings
from connectors.email.smtp_server import serve_smtp
from routing.model import Outbound

TaskFactory = Callable[[], Awaitable[None]]


class TaskRunner(Protocol):
    """The part of the gateway's supervisor a connector uses."""

    async def run(self, tasks: Mapping[str, TaskFactory]) -> None: ...


class EmailConnector:
    channel = "email"

    def __init__(self, ctx: ConnectorContext) -> None:
        self._ctx = ctx
        self.settings: EmailSettings = load_settings(ctx.config)
        self._sender = self._make_sender()
        self._closed = asyncio.Event()

    def _make_sender(self) -> RelaySender | None:
        s = self.settings
        if s.relay is None:
            return None
        limiter = AutoReplyLimiter(self._ctx, s.auto_replies_per_hour)
        senders = dict(s.smtp.mailboxes) if s.smtp else {}
        try:
            return RelaySender(s.relay, limiter, senders)
        except OSError as exc:  # ssl.SSLError included
            raise Fatal(f"email config: relay.ca_file cannot be loaded: {exc}") from None

    def routes(self) -> list[Any]:
        return []

    def tasks(self) -> dict[str, TaskFactory]:
        """The long-running parts, by supervisor task name."""
        out: dict[str, TaskFactory] = {}
        if self.settings.smtp is not None:
            out[f"{self.channel}:smtp"] = partial(serve_smtp, self._ctx, self.settings.smtp)
        for account, imap in self.settings.imap.items():
            # one watcher object per account: it keeps what it last stored across reconnects
            # one poller per mailbox across instances (a lease when they share a Redis store)
            name = f"{self.channel}:imap:{account}"
            out[name] = owned(self._ctx, name, ImapWatcher(account, imap, self._ctx).run)
        return out

    async def run(self) -> None:
        tasks = self.tasks()
        if not tasks:
            return
        supervisor: TaskRunner | None = getattr(self._ctx, "supervisor", None)
        if supervisor is None:
            raise Fatal("email: the gateway gave the connector no supervisor (ctx.supervisor)")
        running = asyncio.ensure_future(supervisor.run(tasks))
        closing = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({running, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not running.done():
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
        if not running.cancelled():
            running.result()  # re-raise what the supervisor raised

    async def send(self, outbound: Outbound) -> SendResult:
        if self._sender is None:
            raise SendError("email: no relay configured (email.relay)", retryable=False)
        return await self._sender.send(outbound)

    async def close(self) -> None:
        """Make ``run()`` return: the SMTP server stops listening, IMAP
        connections log out."""
        self._closed.set()
