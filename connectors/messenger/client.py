"""Messenger and Instagram messaging I/O: one class serves both channels.

The ``messenger`` and ``instagram`` channels are separate folders with
separate manifests and config sections (a Page webhook and an Instagram
webhook are separate subscriptions in Meta's app dashboard, and with
Instagram Login the Instagram app has its own secret), but the same code:
the channel comes from the context the gateway builds it with.

- ``GET /channels/<channel>``: the verification handshake;
- ``POST /channels/<channel>``: read whole (size-limited), the
  ``X-Hub-Signature-256`` checked (401, nothing stored), the ``object``
  checked against the channel (``page`` / ``instagram``), journaled under a
  key built from the message ids or the events' content, answered 200;
- ``send``: ``POST {graph}/{version}/me/messages`` with the Page's (or the
  Instagram account's) token: text split at 2000 characters (Messenger's
  limit; Instagram's is 1000), files uploaded with the message (multipart).
  Past the 24-hour standard window the platform refuses (``10``/``2018278``)
  and the message is sent again with the ``HUMAN_AGENT`` tag (7 days; the
  app needs Meta's Human Agent permission); past 7 days
  :meth:`MessengerConnector.can_send` makes the reply API answer 409.
  A Messenger reply carries ``metadata: "omnigate:<id>"``, so its echo is
  recognised as ours; an echo from the account's ``app_id`` is ours too
  (Instagram has no metadata).
- ``fetch_media``: attachments are CDN URLs, downloaded size-limited.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Mapping

import aiohttp
import msgspec
import structlog
from aiohttp import web

from connectors.base import ConnectorContext, Fatal, SendError, SendResult
from connectors.graph import (
    DEFAULT_API_VERSION,
    DEFAULT_GRAPH_BASE,
    MESSENGER_WINDOW_SUBCODE,
    HttpClient,
    MediaTooLarge,
    verification,
)
from connectors.messenger.parse import OBJECTS, OWN_METADATA, SIGNATURE_HEADER, body_key, decode, events
from connectors.http import Refused, journal, read_webhook
from connectors.text import split_text
from connectors.webhooks import hub_signature_ok
from routing.model import Attachment, Inbound, Outbound

log = structlog.get_logger(__name__)

TEXT_LIMIT = {"messenger": 2000, "instagram": 1000}
HUMAN_AGENT_WINDOW = timedelta(days=7)
FILE_TYPES = {"image": "image", "video": "video", "audio": "audio"}


def recipient_of(identity: str) -> dict[str, str]:
    """The Send API recipient of a contact's ``<account>:<psid>`` identity;
    a Chat Plugin guest's ``<account>:user_ref:<ref>`` is answered by ``user_ref``."""
    _account, _, who = identity.partition(":")
    if who.startswith("user_ref:"):
        return {"user_ref": who.removeprefix("user_ref:")}
    return {"id": identity.rpartition(":")[2]}


class PageConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    page_id: str | int
    access_token: str | None = None
    #: the app that sends omnigate's replies: its echoes are our own messages
    app_id: str | int | None = None


class IgAccountConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    ig_id: str | int
    access_token: str | None = None
    app_id: str | int | None = None


@dataclass(frozen=True)
class AccountConfig:
    id: str
    access_token: str | None


class _Common(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    graph_base: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/]")] = DEFAULT_GRAPH_BASE
    api_version: Annotated[str, msgspec.Meta(pattern=r"^v[0-9]+\.[0-9]+$")] = DEFAULT_API_VERSION
    app_secret: str | None = None
    verify_token: str | None = None
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1048576
    max_media_bytes: Annotated[int, msgspec.Meta(gt=0)] = 25 * 1048576


class MessengerSection(_Common, forbid_unknown_fields=True, frozen=True):
    """The ``messenger`` section: Pages."""

    pages: dict[str, PageConfig] = {}


class InstagramSection(_Common, forbid_unknown_fields=True, frozen=True):
    """The ``instagram`` section: Instagram professional accounts."""

    accounts: dict[str, IgAccountConfig] = {}


@dataclass(frozen=True)
class MessengerConfig:
    api: str
    app_secret: str
    verify_token: str | None
    accounts: dict[str, AccountConfig]
    max_body_bytes: int
    max_media_bytes: int


def load_config(channel: str, raw: Mapping[str, Any]) -> MessengerConfig:
    kind = InstagramSection if channel == "instagram" else MessengerSection
    try:
        s = msgspec.convert(dict(raw), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise Fatal(f"{channel} config: {exc}") from None
    if not s.app_secret:
        raise Fatal(f"{channel} config: app_secret is required (app_secret_file: the secret signing the webhooks)")
    if isinstance(s, InstagramSection):
        accounts = {name: AccountConfig(str(a.ig_id), a.access_token) for name, a in s.accounts.items()}
    else:
        accounts = {name: AccountConfig(str(p.page_id), p.access_token) for name, p in s.pages.items()}
    return MessengerConfig(f"{s.graph_base.rstrip('/')}/{s.api_version}", s.app_secret, s.verify_token, accounts,
                           s.max_body_bytes, s.max_media_bytes)


class MessengerConnector:
    """The ``messenger`` or the ``instagram`` channel (``ctx.channel`` says which)."""

    def __init__(self, ctx: ConnectorContext):
        self._ctx = ctx
        self.channel = ctx.channel
        self._object = next(obj for obj, ch in OBJECTS.items() if ch == ctx.channel)
        self._config = load_config(ctx.channel, ctx.config)
        self._by_id = {a.id: a for a in self._config.accounts.values()}
        self._http = HttpClient()

    def routes(self) -> list[web.RouteDef]:
        path = f"/channels/{self.channel}"
        return [web.get(path, self._verify), web.post(path, self._webhook)]

    async def run(self) -> None:
        return None

    async def close(self) -> None:
        await self._http.close()

    async def _verify(self, request: web.Request) -> web.Response:
        return verification(request, self._config.verify_token)

    async def _webhook(self, request: web.Request) -> web.Response:
        bound = log.bind(channel=self.channel)
        secret = self._config.app_secret
        try:
            body, obj = await read_webhook(request, self._config.max_body_bytes, decode, signature_header=SIGNATURE_HEADER,
                                           signature_ok=lambda body, sig: hub_signature_ok(body, sig, secret))
            if obj["object"] != self._object:
                reason = (f"object {obj['object']!r} posted to the {self.channel} webhook: subscribe it at "
                          f"/channels/{OBJECTS[obj['object']]}")
                raise Refused(400, reason, reason=reason, field="object")
            evs = events(obj)
            account = evs[0][0] if evs and evs[0][0] else self.channel
            key = body_key(obj, body)
            result = await journal(self._ctx, account, key, body, bound, "messenger.webhook.journal_failed")
        except Refused as exc:
            return exc.answer(bound, "messenger.webhook.refused")
        bound.info("messenger.webhook", key=key, account=account, journal_id=result.journal_id, created=result.created)
        return web.Response(status=200, text="EVENT_RECEIVED")

    # ------------------------------------------------------------ send

    def _account(self, account: str) -> AccountConfig:
        a = self._by_id.get(account) or self._config.accounts.get(account)
        if a is None or not a.access_token:
            raise SendError(f"no {self.channel} account {account!r} with an access_token is configured")
        return a

    async def send(self, outbound: Outbound) -> SendResult:
        account = self._account(outbound.account)
        recipient = recipient_of(outbound.to.value)
        url = f"{self._config.api}/me/messages"
        first: str | None = None
        parts = split_text(outbound.text, TEXT_LIMIT.get(self.channel, 2000))
        if not parts and not outbound.attachments:
            raise SendError("nothing to send: empty text and no attachments")
        for part in parts:
            message: dict[str, Any] = {"text": part}
            if self.channel == "messenger":
                message["metadata"] = f"{OWN_METADATA}{outbound.id}"
            answer = await self._post_message(url, account, {"recipient": recipient, "message": message})
            first = first or (answer.get("message_id") if isinstance(answer, dict) else None)
        for a in outbound.attachments:
            mid = await self._send_file(url, account, recipient, a)
            first = first or mid
        log.info(f"{self.channel}.sent", account=account.id, parts=len(parts), files=len(outbound.attachments))
        return SendResult(external_id=first)

    async def _post_message(self, url: str, account: AccountConfig, body: dict[str, Any]) -> Any:
        """A standard-window message (``RESPONSE``); when the platform says the
        24-hour window has closed, the same message with the ``HUMAN_AGENT``
        tag, which lets a person answer for 7 days after the customer wrote."""
        platform = self.channel.capitalize()
        try:
            return await self._http.json_call("POST", url, token=account.access_token, platform=platform,
                                              json={**body, "messaging_type": "RESPONSE"})
        except SendError as exc:
            if exc.code != f"10/{MESSENGER_WINDOW_SUBCODE}":
                raise
        log.info(f"{self.channel}.send.human_agent_tag", account=account.id)
        return await self._http.json_call("POST", url, token=account.access_token, platform=platform,
                                          json={**body, "messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"})

    def can_send(self, outbound: Outbound, facts: Mapping[str, Any]) -> str | None:
        """Why no reply can go (None when one can; connectors/base.py
        SendChecker): a Page or Instagram account may answer a person within
        7 days of their last message (the last 6 of them with the HUMAN_AGENT
        tag, which ``send`` adds when needed)."""
        last_inbound_at, now = facts.get("last_inbound_at"), facts["now"]
        if last_inbound_at is None:
            return f"the customer has not written on {self.channel.capitalize()}: a Page cannot start a conversation"
        if now - last_inbound_at >= HUMAN_AGENT_WINDOW:
            days = (now - last_inbound_at).total_seconds() / 86400
            return (f"the customer last wrote {days:.0f} days ago: {self.channel.capitalize()} lets a person answer "
                    "for 7 days only")
        return None

    async def _send_file(self, url: str, account: AccountConfig, recipient: dict, a: Attachment) -> str | None:
        if a.data is None:
            raise SendError(f"attachment {a.name!r} has no data to upload")
        kind = FILE_TYPES.get(a.content_type.split("/")[0], "file")
        form = aiohttp.FormData()
        form.add_field("recipient", json.dumps(recipient))
        form.add_field("message", json.dumps({"attachment": {"type": kind, "payload": {"is_reusable": False}}}))
        form.add_field("filedata", a.data, filename=a.name or "file", content_type=a.content_type)
        answer = await self._http.upload(url, form, token=account.access_token, platform=self.channel.capitalize(),
                                         unreachable=self.channel)
        return answer.get("message_id") if isinstance(answer, dict) else None

    # ------------------------------------------------------------ media

    async def fetch_media(self, inbound: Inbound) -> None:
        for a in [a for a in inbound.attachments if a.data is None and a.url]:
            try:
                data, content_type, status = await self._http.download(a.url, token=None,
                                                                       limit=self._config.max_media_bytes)
            except (MediaTooLarge, aiohttp.ClientError, TimeoutError) as exc:
                inbound.defects.append(f"attachment {a.url} not downloaded: {exc}")
                continue
            if status >= 400:
                inbound.defects.append(f"attachment {a.url} not downloaded: HTTP {status}")
                continue
            a.data, a.size, a.sha256 = data, len(data), hashlib.sha256(data).hexdigest()
            if content_type:
                a.content_type = content_type.split(";")[0]
