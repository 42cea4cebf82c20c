"""A local stand-in for the Telegram Bot API (test code, never shipped).

It speaks the protocol of https://core.telegram.org/bots/api ("Making
requests"): ``/bot<token>/<method>`` with parameters in the query string,
``application/x-www-form-urlencoded``, ``application/json`` or
``multipart/form-data``; method names are case-insensitive; every answer is
``{"ok": true, "result": …}`` or ``{"ok": false, "error_code", "description"
[, "parameters"]}`` with the HTTP status equal to ``error_code``. Files are
served from ``/file/bot<token>/<file_path>``.

Implemented: getMe, getUpdates (offset confirms earlier updates, timeout
long-polls), sendMessage, sendPhoto, sendDocument, getFile,
answerCallbackQuery. Like the real server, a getUpdates that arrives
while another is long-polling ends the earlier one with 409 "Conflict:
terminated by other getUpdates request" (two pollers of one bot; counted in
:attr:`BotState.conflicts`). Tests script what the real server does on a bad day:
:meth:`BotState.fail_next` (e.g. 429 with ``retry_after``) and
:attr:`BotState.blocked_chats` (403 "bot was blocked by the user").
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

Params = dict[str, Any]


class ApiError(Exception):
    """An error answer of the Bot API."""

    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters

    def response(self) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": self.code, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return web.json_response(body, status=self.code)


def rate_limited(retry_after: int) -> ApiError:
    return ApiError(429, f"Too Many Requests: retry after {retry_after}", {"retry_after": retry_after})


@dataclass
class BotState:
    token: str
    username: str
    updates: list[dict[str, Any]] = field(default_factory=list)  # unconfirmed, oldest first
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # file_id -> (file_path, bytes)
    blocked_chats: set[str] = field(default_factory=set)
    sent: list[tuple[str, Params]] = field(default_factory=list)  # (method, params) of sends
    answered_callbacks: list[str] = field(default_factory=list)
    poll_offsets: list[int | None] = field(default_factory=list)  # offset of each getUpdates call
    failures: dict[str, list[ApiError]] = field(default_factory=dict)  # method (lower case) -> next answers
    _next_update_id: itertools.count = field(default_factory=lambda: itertools.count(700000001))
    _next_message_id: itertools.count = field(default_factory=lambda: itertools.count(1))
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    conflicts: int = 0  # getUpdates calls ended by another one (two pollers)
    _polling: asyncio.Future | None = None  # the long poll waiting now

    @property
    def id(self) -> int:
        return int(self.token.partition(":")[0])

    def push_update(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Queue an update, as Telegram does when a user writes to the bot."""
        update = {"update_id": next(self._next_update_id), kind: body}
        self.updates.append(update)
        self._arrived.set()
        return update

    def add_file(self, file_id: str, file_path: str, data: bytes) -> None:
        self.files[file_id] = (file_path, data)

    def fail_next(self, method: str, error: ApiError) -> None:
        """The next call of ``method`` answers ``error`` instead."""
        self.failures.setdefault(method.lower(), []).append(error)

    def user(self) -> dict[str, Any]:
        return {"id": self.id, "is_bot": True, "first_name": self.username, "username": self.username}


def _chat(chat_id: str) -> dict[str, Any]:
    return {"id": int(chat_id) if chat_id.lstrip("-").isdigit() else 0, "type": "private"}


class TelegramApiStandIn:
    """The aiohttp application; ``add_bot`` before the bot's first call."""

    def __init__(self) -> None:
        self.bots: dict[str, BotState] = {}
        self._methods: dict[str, Callable[[BotState, Params], Awaitable[Any]]] = {
            "getme": self._get_me,
            "getupdates": self._get_updates,
            "sendmessage": self._send_message,
            "sendphoto": self._send_photo,
            "senddocument": self._send_document,
            "getfile": self._get_file,
            "answercallbackquery": self._answer_callback_query,
        }

    def add_bot(self, token: str, username: str) -> BotState:
        self.bots[token] = state = BotState(token, username)
        return state

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._call)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        return app

    # ------------------------------------------------------------ transport

    async def _call(self, request: web.Request) -> web.Response:
        bot = self.bots.get(request.match_info["token"])
        if bot is None:
            return ApiError(401, "Unauthorized").response()
        method = request.match_info["method"].lower()
        handler = self._methods.get(method)
        if handler is None:
            return ApiError(404, "Not Found").response()
        try:
            scripted = bot.failures.get(method)
            if scripted:
                raise scripted.pop(0)
            result = await handler(bot, await _params(request))
        except ApiError as exc:
            return exc.response()
        return web.json_response({"ok": True, "result": result})

    async def _file(self, request: web.Request) -> web.Response:
        bot = self.bots.get(request.match_info["token"])
        path = request.match_info["path"]
        match = [data for file_path, data in (bot.files.values() if bot else ()) if file_path == path]
        if not match:
            return ApiError(404, "Not Found").response()
        return web.Response(body=match[0], content_type="application/octet-stream")

    # ------------------------------------------------------------ methods

    async def _get_me(self, bot: BotState, params: Params) -> dict[str, Any]:
        return bot.user()

    async def _get_updates(self, bot: BotState, params: Params) -> list[dict[str, Any]]:
        offset = int(params["offset"]) if "offset" in params else None
        bot.poll_offsets.append(offset)
        if offset is not None and offset > 0:  # "confirmed as soon as getUpdates is called with a higher offset"
            bot.updates = [u for u in bot.updates if u["update_id"] >= offset]
        limit = int(params.get("limit", 100))
        if bot._polling is not None and not bot._polling.done():  # another poller is waiting: end its call
            bot._polling.set_result(True)
        if not bot.updates and int(params.get("timeout", 0)) > 0:
            bot._arrived.clear()
            terminated = bot._polling = asyncio.get_running_loop().create_future()
            arrived = asyncio.ensure_future(bot._arrived.wait())
            try:
                await asyncio.wait({arrived, terminated}, timeout=float(params["timeout"]),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrived.cancel()
            if terminated.done():
                bot.conflicts += 1
                raise ApiError(409, "Conflict: terminated by other getUpdates request; "
                                    "make sure that only one bot instance is running")
            terminated.cancel()
        return bot.updates[:limit]

    def _message(self, bot: BotState, chat_id: str, **content: Any) -> dict[str, Any]:
        if chat_id in bot.blocked_chats:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return {
            "message_id": next(bot._next_message_id),
            "from": bot.user(),
            "chat": _chat(chat_id),
            "date": int(time.time()),
            **content,
        }

    async def _send_message(self, bot: BotState, params: Params) -> dict[str, Any]:
        text = str(params.get("text", ""))
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        message = self._message(bot, str(params["chat_id"]), text=text)
        bot.sent.append(("sendMessage", params))
        return message

    def _upload(self, bot: BotState, params: Params, field_name: str) -> tuple[str, Any]:
        upload = params.get(field_name)
        if not isinstance(upload, web.FileField):
            raise ApiError(400, f"Bad Request: there is no {field_name} in the request")
        data = upload.file.read()
        file_id = f"{field_name}-{len(bot.files) + 1}"
        bot.add_file(file_id, f"{field_name}s/{upload.filename}", data)
        return file_id, upload

    async def _send_photo(self, bot: BotState, params: Params) -> dict[str, Any]:
        file_id, _ = self._upload(bot, params, "photo")
        size = len(bot.files[file_id][1])
        photo = [{"file_id": file_id, "file_unique_id": file_id, "width": 1, "height": 1, "file_size": size}]
        message = self._message(bot, str(params["chat_id"]), photo=photo)
        bot.sent.append(("sendPhoto", params))
        return message

    async def _send_document(self, bot: BotState, params: Params) -> dict[str, Any]:
        file_id, upload = self._upload(bot, params, "document")
        document = {
            "file_id": file_id,
            "file_unique_id": file_id,
            "file_name": upload.filename,
            "mime_type": upload.content_type,
            "file_size": len(bot.files[file_id][1]),
        }
        message = self._message(bot, str(params["chat_id"]), document=document)
        bot.sent.append(("sendDocument", params))
        return message

    async def _get_file(self, bot: BotState, params: Params) -> dict[str, Any]:
        file_id = str(params.get("file_id", ""))
        if file_id not in bot.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        file_path, data = bot.files[file_id]
        return {"file_id": file_id, "file_unique_id": file_id, "file_size": len(data), "file_path": file_path}

    async def _answer_callback_query(self, bot: BotState, params: Params) -> bool:
        bot.answered_callbacks.append(str(params["callback_query_id"]))
        return True


async def _params(request: web.Request) -> Params:
    """Parameters from the query string and any of the three body encodings."""
    params: Params = dict(request.query)
    if request.method != "POST" or not request.can_read_body:
        return params
    if request.content_type == "application/json":
        params.update(await request.json())
    else:  # urlencoded or multipart: aiohttp reads both
        params.update(await request.post())
    return params
