"""IMAP intake: watch one mailbox folder and journal every new message once.

:meth:`ImapWatcher.run` is one connection's life — connect, log in, select,
catch up, then wait for news (IDLE push when the server's CAPABILITY has it,
a NOOP poll every ``poll_interval`` otherwise), catch up again, and so on.
It never retries by itself: it raises ``NotReady`` (network, timeouts,
unexpected server replies), ``AuthFailed`` (login refused) or ``Fatal``
(the folder does not exist) and the gateway's supervisor reconnects with
back-off.

No message is fetched twice or missed across reconnects and restarts: the
folder's UIDVALIDITY and the last journaled UID are kept through
``ctx.state_get/state_set`` under ``imap:<account>:<folder>``. A message is
journaled first, then the after-action (``seen`` / ``move:<folder>`` /
``leave``) runs, then the last UID advances — so a crash in between only
means fetching that one message again, which the journal's idempotency key
(the Message-ID) answers as a redelivery. When UIDVALIDITY changes (the
server renumbered the folder) the whole folder is synced again, for the
same reason safely.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable
from typing import TypeVar

import aioimaplib
import msgspec
import structlog

from connectors.base import AuthFailed, ConnectorContext, Fatal, NotReady
from connectors.email.keys import message_key
from connectors.email.settings import AfterAction, ImapSettings, after_action

log = structlog.get_logger(__name__)

T = TypeVar("T")

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH_LITERAL = re.compile(rb"FETCH \(.*\bUID (\d+)\b.*\{\d+\}$")
_LOGOUT_TIMEOUT_S = 2.0


class FolderState(msgspec.Struct, frozen=True):
    """What is journaled already: UIDs up to ``last_uid`` under ``uidvalidity``."""

    uidvalidity: int
    last_uid: int = 0


_encode_state = msgspec.json.Encoder().encode
_decode_state = msgspec.json.Decoder(FolderState).decode


def state_key(account: str, folder: str) -> str:
    return f"imap:{account}:{folder}"


def _ok(response: aioimaplib.Response, what: str) -> aioimaplib.Response:
    if response.result != "OK":
        raise NotReady(f"{what}: {response.result} {_text(response)}")
    return response


def _text(response: aioimaplib.Response) -> str:
    last = response.lines[-1] if response.lines else b""
    return bytes(last).decode("utf-8", "replace")[:200]


def parse_uids(response: aioimaplib.Response) -> list[int]:
    """The UIDs of a ``UID SEARCH`` answer (the last line is the status text)."""
    return sorted({int(tok) for line in response.lines[:-1] for tok in bytes(line).split() if tok.isdigit()})


def fetched_body(response: aioimaplib.Response, uid: int) -> bytes | None:
    """The message literal of ``uid`` in a ``UID FETCH … BODY.PEEK[]`` answer
    (None when the message was expunged meanwhile)."""
    lines = response.lines
    for head, body in zip(lines, lines[1:]):
        if isinstance(head, bytes) and isinstance(body, bytearray):
            found = _FETCH_LITERAL.search(head)
            if found and int(found.group(1)) == uid:
                return bytes(body)
    return None


class ImapWatcher:
    """One IMAP account (one folder) feeding the journal."""

    def __init__(self, account: str, settings: ImapSettings, ctx: ConnectorContext) -> None:
        self.account = account
        self.settings = settings
        self._ctx = ctx
        self._after: AfterAction = after_action(settings.after)
        self._key = state_key(account, settings.folder)
        self._lost: asyncio.Event = asyncio.Event()
        self._saved: FolderState | None = None  # what state_set last stored
        self._log = log.bind(account=account, folder=settings.folder)

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        client = self._open()
        try:
            await self._log_in(client)
            uidvalidity = await self._select(client)
            if self._after.kind == "move":
                await self._ensure_folder(client, self._after.folder or "")
            while True:
                await self._catch_up(client, uidvalidity)
                await self._wait_for_news(client)
        except (aioimaplib.AioImapException, asyncio.TimeoutError) as exc:
            raise NotReady(f"imap {self.account}: {type(exc).__name__}: {exc}") from exc
        finally:
            await self._logout(client)

    def _open(self) -> aioimaplib.IMAP4:
        """A client whose connection is being made (aioimaplib connects in a task)."""
        s = self.settings
        self._lost = asyncio.Event()
        client = (aioimaplib.IMAP4_SSL if s.ssl else aioimaplib.IMAP4)(host=s.host, port=self._port, timeout=s.timeout)
        # IMAP4_SSL does not pass this callback through; a dead socket must
        # end the wait for IDLE pushes at once, not after the refresh timeout
        client.protocol.conn_lost_cb = lambda exc: self._lost.set()
        return client

    @property
    def _port(self) -> int:
        return self.settings.port or (993 if self.settings.ssl else 143)

    async def _log_in(self, client: aioimaplib.IMAP4) -> None:
        s = self.settings
        try:
            await client.wait_hello_from_server()
        except (OSError, asyncio.TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            raise NotReady(f"imap {self.account}: cannot connect to {s.host}:{self._port}: {reason}") from exc
        response = await client.login(s.user, s.password)
        if response.result != "OK":
            text = _text(response)
            if "UNAVAILABLE" in text:  # RFC 5530: a server problem, not the credentials
                raise NotReady(f"imap {self.account}: login unavailable: {text}")
            raise AuthFailed(f"imap {self.account}: login refused for {s.user!r}: {text}")
        # capabilities may grow after login (IDLE, MOVE, UIDPLUS)
        await client.protocol.capability()
        self._log.info("imap_connected", host=s.host, port=self._port, idle=client.has_capability("IDLE"))

    async def _select(self, client: aioimaplib.IMAP4) -> int:
        folder = self.settings.folder
        response = await client.select(aioimaplib.quoted(folder))
        if response.result != "OK":
            raise Fatal(f"imap {self.account}: cannot select folder {folder!r}: {_text(response)}")
        for line in response.lines:
            found = _UIDVALIDITY.search(bytes(line))
            if found:
                return int(found.group(1))
        raise NotReady(f"imap {self.account}: SELECT {folder!r} gave no UIDVALIDITY")

    async def _ensure_folder(self, client: aioimaplib.IMAP4, folder: str) -> None:
        # CREATE answers NO when the folder exists: that is fine, nothing to check
        await client.create(aioimaplib.quoted(folder))

    async def _logout(self, client: aioimaplib.IMAP4) -> None:
        # best effort: the connection may be gone already
        if not self._lost.is_set():
            if client.has_pending_idle():
                client.idle_done()  # cancelled while IDLE was starting: LOGOUT would queue behind it
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.logout(), _LOGOUT_TIMEOUT_S)
        transport = client.protocol.transport
        if transport is not None:
            transport.close()

    # ------------------------------------------------------------ sync

    async def _load_state(self, uidvalidity: int) -> FolderState:
        stored = await self._ctx.state_get(self._key)
        if stored is None:
            return FolderState(uidvalidity)
        state = _decode_state(stored)
        if state.uidvalidity != uidvalidity:
            # the server renumbered the folder: sync it all again; the journal
            # dedupes what it already has by Message-ID
            self._log.warning("imap_uidvalidity_changed", old=state.uidvalidity, new=uidvalidity)
            return FolderState(uidvalidity)
        return state

    async def _save_state(self, state: FolderState) -> None:
        if state != self._saved:
            await self._ctx.state_set(self._key, _encode_state(state).decode())
            self._saved = state

    async def _catch_up(self, client: aioimaplib.IMAP4, uidvalidity: int) -> None:
        state = await self._load_state(uidvalidity)
        search = _ok(await client.uid_search("UID", f"{state.last_uid + 1}:*", charset=None), "UID SEARCH")
        # "n:*" always matches the highest UID, even when it is below n
        uids = [u for u in parse_uids(search) if u > state.last_uid]
        await self._save_state(state)  # records a new UIDVALIDITY even for an empty folder
        for uid in uids:
            await self._take(client, uid, uidvalidity)
            await self._save_state(FolderState(uidvalidity, uid))

    async def _take(self, client: aioimaplib.IMAP4, uid: int, uidvalidity: int) -> None:
        # BODY.PEEK: fetching must not set \Seen; the after-action decides
        response = _ok(await client.uid("fetch", str(uid), "(UID BODY.PEEK[])"), "UID FETCH")
        raw = fetched_body(response, uid)
        if raw is None:
            self._log.info("imap_message_gone", uid=uid)
            return
        key = message_key(raw)
        meta = {"folder": self.settings.folder, "uid": uid, "uidvalidity": uidvalidity}
        result = await self._ctx.ingest(self.account, key, raw, meta)
        self._log.info("imap_ingested", uid=uid, key=key, size=len(raw), new=result.created)
        await self._apply_after(client, uid)

    async def _apply_after(self, client: aioimaplib.IMAP4, uid: int) -> None:
        """Flag or move the journaled message. A failure is logged, not
        raised: the message is safe in the journal, and retrying the whole
        connection would not make a missing folder appear."""
        after, uid_set = self._after, str(uid)
        if after.kind == "leave":
            return
        if after.kind == "seen":
            response = await client.uid("store", uid_set, "+FLAGS.SILENT", r"(\Seen)")
        elif client.has_capability("MOVE"):
            response = await client.uid("move", uid_set, aioimaplib.quoted(after.folder or ""))
        else:
            response = await self._copy_and_delete(client, uid_set, after.folder or "")
        if response.result != "OK":
            self._log.warning("imap_after_action_failed", uid=uid, action=self.settings.after, reply=_text(response))

    async def _copy_and_delete(self, client: aioimaplib.IMAP4, uid_set: str, folder: str) -> aioimaplib.Response:
        """MOVE for servers without it (RFC 6851 §3.3): COPY, flag \\Deleted,
        and expunge just this UID when UIDPLUS allows; a plain EXPUNGE would
        also remove messages someone else flagged, so without UIDPLUS the
        message stays flagged \\Deleted."""
        response = await client.uid("copy", uid_set, aioimaplib.quoted(folder))
        if response.result != "OK":
            return response
        response = await client.uid("store", uid_set, "+FLAGS.SILENT", r"(\Deleted)")
        if response.result == "OK" and client.has_capability("UIDPLUS"):
            response = await client.uid("expunge", uid_set)
        return response

    # ------------------------------------------------------------ waiting

    async def _wait_for_news(self, client: aioimaplib.IMAP4) -> None:
        idle = client.has_capability("IDLE")
        self._log.info("imap_waiting", mode="idle" if idle else "poll")
        if idle:
            await self._idle(client)
        else:
            await self._unless_lost(asyncio.sleep(self.settings.poll_interval))
            # NOOP is the RFC 3501 way to let the server report new messages
            _ok(await client.noop(), "NOOP")

    async def _idle(self, client: aioimaplib.IMAP4) -> None:
        """Wait in IDLE until the server reports a new message (EXISTS) or
        the refresh interval passes (aioimaplib then pushes its stop marker)."""
        s = self.settings
        idle = await client.idle_start(timeout=s.idle_refresh)
        try:
            while True:
                push = await self._unless_lost(client.wait_server_push(timeout=s.idle_refresh + s.timeout))
                if push == aioimaplib.STOP_WAIT_SERVER_PUSH or any(
                    isinstance(line, bytes) and line.endswith(b"EXISTS") for line in push
                ):
                    return
        finally:
            if not self._lost.is_set():
                client.idle_done()
                await asyncio.wait_for(idle, s.timeout)

    async def _unless_lost(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable``, or raise NotReady as soon as the connection drops."""
        work = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not work.done():
                work.cancel()
        if work.done() and not work.cancelled():
            return work.result()
        raise NotReady(f"imap {self.account}: connection lost")
