"""Telegram's I/O: the webhook route, getUpdates long polling, replies, media.

One :class:`TelegramConnector` serves every bot of the ``telegram`` config
section; each bot is either pushed to (``mode: webhook``, Telegram POSTs to
``/channels/telegram/<name>``) or polled (``mode: polling``). All Bot API
calls go through python-telegram-bot (``telegram.Bot``); its ``base_url``
points wherever ``api_base`` says (a self-hosted Bot API server, or the
stand-in of the tests).

Decisions worth knowing:

- **account** = the bot id, the numeric prefix of the token: stable across
  renames of the config entry and of the bot, known without a network call.
  ``send`` also accepts the config name of a bot.
- A webhook is journaled before it is answered: a wrong or missing
  ``X-Telegram-Bot-Api-Secret-Token`` answers 401 and stores nothing, a body
  over ``max_body_bytes`` 413, a journal failure 503 (Telegram retries).
- Polling persists ``offset`` (last update id + 1) through
  ``ctx.state_set`` after each journaled update, so a restart fetches
  nothing twice. Network errors raise :class:`NotReady` and a refused token
  :class:`AuthFailed`: the gateway's supervisor owns back-off; only a 429
  is waited out here, because Telegram said exactly how long.
- ``send`` never sleeps: a 429 raises ``SendError(retryable=True,
  retry_after=…)`` so the outbox schedules the retry without holding a worker.
- Button presses are answered (answerCallbackQuery) so the user's client
  stops its spinner: in the webhook's own response, or by a call when polling.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Awaitable, Callable, Literal, Mapping

import msgspec
import structlog
import telegram
from aiohttp import web
from telegram.error import BadRequest, ChatMigrated, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.request import HTTPXRequest

from connectors.http import Refused, journal, problem, read_webhook

# PTB 22.2+ reports time periods (a 429's ``retry_after``) as ints with a
# deprecation warning on every read, or as timedeltas once opted in; this
# module reads both (:func:`retry_seconds`) and opts in, so a rate limit
# does not warn (an operator's own PTB_TIMEDELTA setting is left alone).
os.environ.setdefault("PTB_TIMEDELTA", "true")
from connectors.base import (
    AuthFailed,
    ConnectorContext,
    ConnectorError,
    Fatal,
    IngestResult,
    NotReady,
    PayloadRejected,
    SendError,
    SendResult,
    owned,
)
from connectors.telegram.parse import CHANNEL, decode_update, update_key, validate_update
from connectors.text import split_text
from routing.model import Attachment, Inbound, Outbound

log = structlog.get_logger(__name__)

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
WEBHOOK_PATH = "/channels/telegram/{bot}"
MAX_TEXT_CHARS = 4096  # sendMessage: "1-4096 characters after entities parsing"
PHOTO_TYPES = frozenset({"image/jpeg", "image/png"})  # what sendPhoto takes; other files go as documents
POLL_READ_MARGIN_S = 10.0  # a long poll's HTTP read may take poll_timeout plus this


# ---------------------------------------------------------------- configuration


class BotConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    token: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+:[A-Za-z0-9_-]+$")]
    # setWebhook's secret_token: 1-256 characters A-Z, a-z, 0-9, _ and -
    secret_token: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,256}$")] | None = None
    mode: Literal["webhook", "polling"] = "webhook"
    poll_timeout: Annotated[int, msgspec.Meta(ge=0, le=600)] = 30

    @property
    def bot_id(self) -> str:
        return self.token.partition(":")[0]


BotName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]  # a path segment of the webhook URL


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The ``telegram`` section; each bot is validated on its own so that an
    error names the bot (msgspec says ``$.bots[...]`` inside a dict)."""

    api_base: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/]")] = "https://api.telegram.org"
    bots: dict[BotName, dict[str, Any]] = {}
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1048576


@dataclass(frozen=True)
class TelegramConfig:
    api_base: str
    bots: dict[str, BotConfig]
    max_body_bytes: int


def _convert(obj: Any, type_: type[Any], path: str) -> Any:
    # ``strict=False`` lets numbers arrive as strings, as they do from
    # OMNIGATE_TELEGRAM__… environment variables. msgspec's messages name the
    # path, never the value, so no token reaches a log.
    try:
        return msgspec.convert(obj, type_, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)  # "<what> - at `$.x`", or no "at" for the object itself
        where = message.replace("`$", f"`{path}") if " - at `" in message else f"{message} - at `{path}`"
        raise Fatal(f"telegram config: {where}") from None


def load_config(raw: Mapping[str, Any]) -> TelegramConfig:
    """The validated config section; :class:`Fatal` naming what is wrong and where."""
    section: _Section = _convert(dict(raw), _Section, "$")
    bots: dict[str, BotConfig] = {name: _convert(b, BotConfig, f"$.bots.{name}") for name, b in section.bots.items()}
    for name, bot in bots.items():
        if bot.mode == "webhook" and bot.secret_token is None:
            raise Fatal(
                f"telegram config: bots.{name}: mode webhook needs a secret_token "
                "(the one given to setWebhook, checked on every call)"
            )
    shared = [bot_id for bot_id, n in Counter(b.bot_id for b in bots.values()).items() if n > 1]
    if shared:
        names = sorted(name for name, b in bots.items() if b.bot_id in shared)
        raise Fatal(f"telegram config: bots {', '.join(names)} use the same bot (id {shared[0]}); one entry per bot")
    return TelegramConfig(section.api_base.rstrip("/"), bots, section.max_body_bytes)


# ---------------------------------------------------------------- one bot


class _Bot(telegram.Bot):
    """PTB's Bot, plus getUpdates returning Telegram's JSON objects unchanged.

    The journal keeps what Telegram sent, and PTB's ``get_updates`` builds
    ``Update`` objects, which raise on a field they do not expect to miss:
    one such update would block the whole queue.
    """

    __slots__ = ()

    async def get_update_dicts(self, offset: int | None, timeout: int) -> list[Any]:
        data: dict[str, Any] = {"timeout": timeout}
        if offset is not None:
            data["offset"] = offset
        result = await self._post("getUpdates", data, read_timeout=timeout + POLL_READ_MARGIN_S)
        return result if isinstance(result, list) else []


@dataclass(frozen=True)
class _BotHandle:
    name: str
    config: BotConfig
    bot: _Bot
    requests: tuple[HTTPXRequest, ...]

    @classmethod
    def build(cls, name: str, config: BotConfig, api_base: str) -> _BotHandle:
        polls, calls = HTTPXRequest(connection_pool_size=1), HTTPXRequest()
        bot = _Bot(
            config.token,
            base_url=f"{api_base}/bot",
            base_file_url=f"{api_base}/file/bot",
            request=calls,
            get_updates_request=polls,
        )
        return cls(name, config, bot, (polls, calls))

    @property
    def account(self) -> str:
        return self.config.bot_id

    @property
    def offset_key(self) -> str:
        return f"offset:{self.account}"


# ---------------------------------------------------------------- pure helpers


def secret_matches(given: str | None, expected: str | None) -> bool:
    """The webhook's secret check, in constant time (no timing oracle); an
    empty expected secret matches nothing."""
    # header bytes that are not UTF-8 arrive as surrogate escapes: compare them as the bytes they were
    return bool(given and expected) and hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                                            expected.encode())


def callback_query_id(update: Mapping[str, Any]) -> str | None:
    query = update.get("callback_query")
    return query.get("id") if isinstance(query, dict) and isinstance(query.get("id"), str) else None


def retry_seconds(exc: RetryAfter) -> float:
    # PTB 22 gives an int or, with PTB_TIMEDELTA set, a timedelta.
    value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def send_error(exc: TelegramError) -> SendError:
    """What a failed Bot API call means for the outbox."""
    if isinstance(exc, RetryAfter):
        delay = retry_seconds(exc)
        return SendError(f"Telegram rate limit: retry after {delay:g} s", retryable=True, retry_after=delay, code="429")
    if isinstance(exc, Forbidden):
        if "blocked" in exc.message.lower():
            return SendError(f"the user blocked the bot ({exc.message})", code="403")
        return SendError(f"Telegram refused to deliver: {exc.message}", code="403")
    if isinstance(exc, ChatMigrated):
        return SendError(f"the group became supergroup {exc.new_chat_id}; reply there", code="migrated")
    if isinstance(exc, InvalidToken):
        return SendError(f"the bot token was refused: {exc.message}", code="401")
    if isinstance(exc, BadRequest):  # before NetworkError: PTB derives BadRequest from it
        return SendError(f"Telegram refused the message: {exc.message}", code="400")
    if isinstance(exc, NetworkError):  # TimedOut included; 5xx answers land here too
        return SendError(f"Telegram unreachable: {exc.message}", retryable=True)
    return SendError(f"Telegram refused the message: {exc.message}")


def _poll_error(handle: _BotHandle, exc: TelegramError) -> ConnectorError:
    if isinstance(exc, (InvalidToken, Forbidden)):
        return AuthFailed(f"telegram bot {handle.name}: token refused: {exc.message}")
    # Conflict (a webhook is set, or another instance polls this bot) lands
    # here too: its message says which, and retrying later is right for both.
    return NotReady(f"telegram bot {handle.name}: getUpdates failed: {exc.message}")


# ---------------------------------------------------------------- the connector


class TelegramConnector:
    """Every configured bot: webhook route, polling loops, send, fetch_media."""

    channel = CHANNEL

    def __init__(self, ctx: ConnectorContext):
        self._ctx = ctx
        self._config = load_config(ctx.config)
        self._bots = {name: _BotHandle.build(name, cfg, self._config.api_base) for name, cfg in self._config.bots.items()}
        self._by_account = {h.account: h for h in self._bots.values()}
        self._encoder = msgspec.json.Encoder()
        #: how the polling loop waits out a 429's retry_after (tests record it)
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def routes(self) -> list[web.RouteDef]:
        return [web.post(WEBHOOK_PATH, self._webhook)]

    def _count_refusal(self, reason: str) -> None:
        count = getattr(self._ctx, "rejected", None)  # the omnigate_rejected metric (optional in the context)
        if count is not None:
            count(reason)

    def _handle_for(self, account: str) -> _BotHandle | None:
        return self._by_account.get(account) or self._bots.get(account)

    # ------------------------------------------------------------ webhook

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        handle = self._bots.get(request.match_info["bot"])
        if handle is None or handle.config.mode != "webhook":
            return problem(404, "no such telegram webhook")
        bound = log.bind(bot=handle.name, transport="webhook")
        try:
            if not secret_matches(request.headers.get(SECRET_HEADER), handle.config.secret_token):
                raise Refused(401, "secret token missing or wrong", reason="secret token missing or wrong",
                              metric="unauthorized", field=SECRET_HEADER)
            body, update = await read_webhook(request, self._config.max_body_bytes, decode_update)
            key = update_key(update)
            # the journal could not take it: 503, Telegram retries on 5xx
            result = await journal(self._ctx, handle.account, key, body, bound, "telegram.webhook.journal_failed")
        except Refused as exc:
            if exc.metric is not None:
                self._count_refusal(exc.metric)
            return exc.answer(bound, "telegram.webhook.refused")
        _log_ingested(bound, key, result)
        query_id = callback_query_id(update)
        if query_id is None:
            return web.Response(status=200)
        # "Making requests when getting updates": the answer rides on the
        # webhook response, no extra call.
        return web.json_response({"method": "answerCallbackQuery", "callback_query_id": query_id})

    # ------------------------------------------------------------ polling

    async def run(self) -> None:
        """Poll every ``mode: polling`` bot until cancelled; return at once if none.

        The first bot that fails stops the others, and its error (NotReady,
        AuthFailed, Fatal) goes to the supervisor; offsets are persisted, so
        the restart resumes where each bot stopped.
        """
        pollers = [h for h in self._bots.values() if h.config.mode == "polling"]
        if not pollers:
            return
        # one poller per bot across instances (two get 409 Conflict): a lease when they share a Redis store
        tasks = [asyncio.create_task(owned(self._ctx, f"telegram:poll:{h.name}", lambda h=h: self._poll(h))(),
                                     name=f"telegram-poll-{h.name}") for h in pollers]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll(self, handle: _BotHandle) -> None:
        stored = await self._ctx.state_get(handle.offset_key)
        offset = int(stored) if stored and stored.isdigit() else None  # None: from the oldest unconfirmed
        log.info("telegram.polling", bot=handle.name, offset=offset, timeout=handle.config.poll_timeout)
        while True:
            for update in await self._fetch(handle, offset):
                offset = await self._take(handle, update)

    async def _fetch(self, handle: _BotHandle, offset: int | None) -> list[Any]:
        try:
            return await handle.bot.get_update_dicts(offset, handle.config.poll_timeout)
        except RetryAfter as exc:
            delay = retry_seconds(exc)
            log.warning("telegram.poll.rate_limited", bot=handle.name, retry_after=delay)
            await self.sleep(delay)
            return []
        except TelegramError as exc:
            raise _poll_error(handle, exc) from exc

    async def _take(self, handle: _BotHandle, update: Any) -> int:
        """Journal one polled update, persist the next offset, return it."""
        try:
            update = validate_update(update)
        except PayloadRejected as exc:
            raise Fatal(f"telegram bot {handle.name}: getUpdates returned {exc}; is api_base a Bot API server?") from None
        key = update_key(update)
        bound = log.bind(bot=handle.name, transport="polling")
        try:
            result = await self._ctx.ingest(handle.account, key, self._encoder.encode(update))
        except Exception as exc:  # the offset stays put: the update is fetched again after the restart
            raise NotReady(f"telegram bot {handle.name}: journal unavailable: {exc}") from exc
        _log_ingested(bound, key, result)
        offset = update["update_id"] + 1
        await self._ctx.state_set(handle.offset_key, str(offset))
        query_id = callback_query_id(update)
        if query_id is not None:
            await self._answer_callback(handle, query_id)
        return offset

    async def _answer_callback(self, handle: _BotHandle, query_id: str) -> None:
        try:
            await handle.bot.answer_callback_query(query_id)
        except TelegramError as exc:  # cosmetic (the client's spinner): never worth failing the loop
            log.warning("telegram.callback.answer_failed", bot=handle.name, error=exc.message)

    # ------------------------------------------------------------ send

    async def send(self, outbound: Outbound) -> SendResult:
        """Text by sendMessage (split at 4096 characters), then each attachment
        by sendPhoto/sendDocument, to the chat ``outbound.to.value``."""
        handle = self._handle_for(outbound.account)
        if handle is None:
            raise SendError(f"no telegram bot with account {outbound.account!r} is configured")
        chat_id = outbound.to.value
        parts = split_text(outbound.text, MAX_TEXT_CHARS)
        if not parts and not outbound.attachments:
            raise SendError("nothing to send: empty text and no attachments")
        sent: list[telegram.Message] = []
        try:
            for part in parts:
                sent.append(await handle.bot.send_message(chat_id, part))
            for attachment in outbound.attachments:
                sent.append(await _send_file(handle.bot, chat_id, attachment))
        except TelegramError as exc:
            error = send_error(exc)
            log.warning("telegram.send.failed", bot=handle.name, chat_id=chat_id, code=error.code, reason=error.reason)
            raise error from exc
        first = sent[0]
        log.info("telegram.sent", bot=handle.name, chat_id=chat_id, messages=len(sent))
        return SendResult(external_id=f"{first.chat_id}:{first.message_id}")

    # ------------------------------------------------------------ media

    async def fetch_media(self, inbound: Inbound) -> None:
        """Download every attachment still referenced by file id (getFile, then
        the file URL): sets ``data``, ``sha256``, ``size`` and a missing ``name``.
        A failure becomes a defect of the Inbound; the others still download."""
        handle = self._handle_for(inbound.account)
        pending = [a for a in inbound.attachments if a.data is None and a.url]
        if handle is None:
            if pending:
                inbound.defects.append(f"attachments not downloaded: no bot with account {inbound.account!r}")
            return
        for attachment in pending:
            try:
                await _download(handle.bot, attachment)
            except TelegramError as exc:
                inbound.defects.append(f"attachment {attachment.url} not downloaded: {exc.message}")

    async def close(self) -> None:
        for handle in self._bots.values():
            for request in handle.requests:
                await request.shutdown()


def _log_ingested(bound: Any, key: str, result: IngestResult) -> None:
    bound.info("telegram.update", key=key, journal_id=result.journal_id, created=result.created)


async def _send_file(bot: _Bot, chat_id: str, attachment: Attachment) -> telegram.Message:
    if attachment.data is None:
        raise SendError(f"attachment {attachment.name!r} has no data to upload")
    if attachment.content_type in PHOTO_TYPES:
        return await bot.send_photo(chat_id, attachment.data, filename=attachment.name)
    return await bot.send_document(chat_id, attachment.data, filename=attachment.name)


async def _download(bot: _Bot, attachment: Attachment) -> None:
    assert attachment.url is not None
    file = await bot.get_file(attachment.url)
    data = bytes(await file.download_as_bytearray())
    attachment.data = data
    attachment.size = len(data)
    attachment.sha256 = hashlib.sha256(data).hexdigest()
    if attachment.name is None and file.file_path:
        attachment.name = file.file_path.rsplit("/", 1)[-1]
