"""A local stand-in for Meta's Graph API: the WhatsApp Cloud API and the
Messenger/Instagram Send API (test code, never shipped).

It speaks the protocol of https://developers.facebook.com/docs/whatsapp/cloud-api
and https://developers.facebook.com/docs/messenger-platform/reference/send-api:
``/{version}/{phone-number-id}/messages`` and ``/media``, ``/{version}/{media-id}``
(media info with a short-lived download URL that needs the same bearer token),
``/{version}/me/messages`` (JSON or multipart with ``filedata``), bearer
tokens, and errors as ``{"error": {"message", "type", "code",
"error_data": {"details"}, "fbtrace_id"}}`` — among them 131047 (more than
24 hours since the customer wrote: only a template may be sent), 130429 and
613 (rate limits), 190 (bad token). Tests script a bad day with
:meth:`GraphApiStandIn.fail_next` and :attr:`GraphApiStandIn.closed_windows`.
"""

from __future__ import annotations

import hashlib
import base64
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web


def graph_error(code: int, message: str, *, status: int = 400, details: str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    err: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AbCdEf123"}
    if details:
        err["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return status, {"error": err}, headers or {}


REENGAGEMENT = graph_error(131047, "(#131047) Re-engagement message",
                           details="Message failed to send because more than 24 hours have passed since the "
                                   "customer last replied to this number.")
THROUGHPUT = graph_error(130429, "(#130429) Rate limit hit", details="Cloud API message throughput has been reached.")
MESSENGER_WINDOW = graph_error(10, "(#10) This message is sent outside of allowed window. Learn more about the new "
                                     "policy here: https://developers.facebook.com/docs/messenger-platform/policy-overview")
MESSENGER_WINDOW[1]["error"]["error_subcode"] = 2018278
CALLS_LIMIT = graph_error(613, "(#613) Calls to this api have exceeded the rate limit.", headers={"Retry-After": "2"})


@dataclass
class GraphApiStandIn:
    version: str = "v21.0"
    #: phone-number-id or page/ig id → the bearer token it accepts
    tokens: dict[str, str] = field(default_factory=dict)
    #: (kind, recipient, payload) of every accepted message; kind "whatsapp" or "messenger"
    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    media: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # media id → (mime type, bytes)
    cdn: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # path → (mime type, bytes)
    uploads: list[tuple[str, bytes]] = field(default_factory=list)
    #: recipients whose 24-hour window is closed: WhatsApp free text answers
    #: 131047, Messenger without the HUMAN_AGENT tag 10/2018278
    closed_windows: set[str] = field(default_factory=set)
    failures: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    #: (messaging_type, tag) of every JSON Send API call, refused ones included
    messaging_types: list[tuple[str | None, str | None]] = field(default_factory=list)
    base: str = ""
    #: awaited with the new wamid before the send is answered (a status webhook racing the answer)
    before_answer: Callable[[str], Awaitable[None]] | None = None
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def fail_next(self, error: tuple[int, dict[str, Any], dict[str, str]]) -> None:
        self.failures.append(error)

    def add_media(self, media_id: str, mime: str, data: bytes) -> None:
        self.media[media_id] = (mime, data)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{version}/me/messages", self._me_messages)
        app.router.add_post("/{version}/{phone}/messages", self._wa_messages)
        app.router.add_post("/{version}/{phone}/media", self._wa_upload)
        app.router.add_get("/{version}/{media_id}", self._media_info)
        app.router.add_get("/download/{media_id}", self._media_download)
        app.router.add_get("/cdn/{name}", self._cdn)
        return app

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _error(error: tuple[int, dict[str, Any], dict[str, str]]) -> web.Response:
        status, body, headers = error
        return web.json_response(body, status=status, headers=headers)

    def _auth(self, request: web.Request, owner: str | None) -> web.Response | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        valid = self.tokens.get(owner) == token if owner else token in self.tokens.values()
        if not token or not valid:
            return self._error(graph_error(190, "Invalid OAuth access token - Cannot parse access token", status=401))
        return None

    def _failure(self) -> web.Response | None:
        return self._error(self.failures.pop(0)) if self.failures else None

    # ------------------------------------------------------------ WhatsApp

    async def _wa_messages(self, request: web.Request) -> web.Response:
        phone = request.match_info["phone"]
        refused = self._auth(request, phone) or self._failure()
        if refused:
            return refused
        body = await request.json()
        # a username-only user is addressed by BSUID (recipient), recorded as "bsuid:<BSUID>"
        if "recipient" in body and "to" not in body:
            body["to"] = f"bsuid:{body['recipient']}"
        elif body.get("messaging_product") != "whatsapp" or not str(body.get("to", "")).isdigit():
            return self._error(graph_error(100, "(#100) Invalid parameter", details="messaging_product and to are required"))
        kind = body.get("type")
        if kind not in ("text", "template", "image", "document", "video", "audio"):
            return self._error(graph_error(100, f"(#100) Invalid parameter: type {kind!r}"))
        if kind != "template" and body["to"] in self.closed_windows:
            return self._error(REENGAGEMENT)
        if kind == "template" and not (body["template"].get("name") and body["template"].get("language", {}).get("code")):
            return self._error(graph_error(132000, "(#132000) Number of parameters does not match the expected number"))
        self.sent.append(("whatsapp", body["to"], body))
        wamid = f"wamid.standin{next(self._ids)}"
        if self.before_answer is not None:
            await self.before_answer(wamid)
        return web.json_response({"messaging_product": "whatsapp", "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                                  "messages": [{"id": wamid}]})

    async def _wa_upload(self, request: web.Request) -> web.Response:
        refused = self._auth(request, request.match_info["phone"])
        if refused:
            return refused
        form = await request.post()
        file = form.get("file")
        if form.get("messaging_product") != "whatsapp" or file is None:
            return self._error(graph_error(100, "(#100) The parameter messaging_product and file are required"))
        data = file.file.read()
        media_id = f"media{next(self._ids)}"
        self.media[media_id] = (file.content_type, data)
        self.uploads.append((file.filename, data))
        return web.json_response({"id": media_id})

    async def _media_info(self, request: web.Request) -> web.Response:
        refused = self._auth(request, None)
        if refused:
            return refused
        media_id = request.match_info["media_id"]
        if media_id not in self.media:
            return self._error(graph_error(100, "(#100) Invalid parameter", status=404))
        mime, data = self.media[media_id]
        return web.json_response({"messaging_product": "whatsapp", "id": media_id, "mime_type": mime,
                                  "sha256": base64.b64encode(hashlib.sha256(data).digest()).decode(),
                                  "file_size": len(data), "url": f"{self.base}/download/{media_id}"})

    async def _media_download(self, request: web.Request) -> web.Response:
        refused = self._auth(request, None)  # the download needs the same token
        if refused:
            return refused
        mime, data = self.media[request.match_info["media_id"]]
        return web.Response(body=data, content_type=mime)

    # ------------------------------------------------------------ Messenger / Instagram

    async def _me_messages(self, request: web.Request) -> web.Response:
        refused = self._auth(request, None) or self._failure()
        if refused:
            return refused
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            recipient = json.loads(form["recipient"])
            message = json.loads(form["message"])
            self.uploads.append((form["filedata"].filename, form["filedata"].file.read()))
        else:
            body = await request.json()
            recipient, message = body.get("recipient", {}), body.get("message", {})
            self.messaging_types.append((body.get("messaging_type"), body.get("tag")))
            if body.get("messaging_type") not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
                return self._error(graph_error(100, "(#100) messaging_type is required"))
            if body.get("messaging_type") == "MESSAGE_TAG" and body.get("tag") not in ("HUMAN_AGENT", "ACCOUNT_UPDATE",
                                                                                       "CONFIRMED_EVENT_UPDATE",
                                                                                       "POST_PURCHASE_UPDATE"):
                return self._error(graph_error(100, "(#100) Param tag must be one of {...}"))
            if recipient.get("id") in self.closed_windows and body.get("tag") != "HUMAN_AGENT":
                return self._error(MESSENGER_WINDOW)
            if "text" in message and len(message["text"]) > 2000:
                return self._error(graph_error(100, "(#100) Length of param message[text] must be less than or equal to 2000"))
        # a Chat Plugin guest is addressed by its user_ref (recorded as "user_ref:<ref>")
        who = recipient.get("id") or (f"user_ref:{recipient['user_ref']}" if recipient.get("user_ref") else None)
        if not who:
            return self._error(graph_error(100, "(#100) The parameter recipient is required"))
        self.sent.append(("messenger", who, message))
        return web.json_response({"recipient_id": recipient.get("id", ""), "message_id": f"m_standin{next(self._ids)}"})

    async def _cdn(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.cdn:
            return web.Response(status=404)
        mime, data = self.cdn[name]
        return web.Response(body=data, content_type=mime)
