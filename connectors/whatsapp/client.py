"""WhatsApp Cloud API's I/O: the webhook (GET handshake, signed POSTs),
replies and templates through the Graph API, media downloads.

- ``GET /channels/whatsapp``: the verification handshake (``hub.verify_token``).
- ``POST /channels/whatsapp``: the body is read whole (size-limited), its
  ``X-Hub-Signature-256`` checked with the app secret — 401 and nothing
  stored when it does not verify — then journaled under a key built from
  the message and status ids (a redelivered body is the same entry), and
  only then answered 200. These platforms sign no timestamp, so the
  signature and the idempotency keys are the replay defence.
- ``send``: ``POST {graph}/{version}/{phone-number-id}/messages`` — text (split
  at 4096 characters), attachments (uploaded to ``/media`` first), or an
  approved template (name, language, body parameters). The answer's
  ``messages[0].id`` (the wamid) is the delivery's ``external_id``: the
  statuses WhatsApp posts later find the reply's timeline entry by it.
- The 24-hour customer-service window: :meth:`WhatsAppConnector.can_send`
  says why a free-text reply cannot go (the reply API answers 409); a
  template can always go.
- ``fetch_media``: ``GET /{media-id}`` gives a short-lived URL, downloaded
  with the same bearer token, at most ``max_media_bytes``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Mapping

import aiohttp
import msgspec
import structlog
from aiohttp import web

from connectors.base import ConnectorContext, Fatal, SendError, SendResult
from connectors.graph import DEFAULT_API_VERSION, DEFAULT_GRAPH_BASE, HttpClient, MediaTooLarge, verification
from connectors.http import Refused, journal, read_webhook
from connectors.text import split_text
from connectors.webhooks import hub_signature_ok
from connectors.whatsapp.parse import BSUID_PREFIX, CHANNEL, SIGNATURE_HEADER, body_key, changes, decode
from routing.model import Attachment, Inbound, Outbound

log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/channels/whatsapp"
MAX_TEXT_CHARS = 4096
SERVICE_WINDOW = timedelta(hours=24)
MEDIA_KINDS = {"image/jpeg": "image", "image/png": "image", "video/mp4": "video", "video/3gpp": "video",
               "audio/aac": "audio", "audio/mp4": "audio", "audio/mpeg": "audio", "audio/amr": "audio",
               "audio/ogg": "audio"}


class NumberConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    phone_number_id: str | int
    access_token: str | None = None


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    graph_base: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/]")] = DEFAULT_GRAPH_BASE
    api_version: Annotated[str, msgspec.Meta(pattern=r"^v[0-9]+\.[0-9]+$")] = DEFAULT_API_VERSION
    app_secret: str | None = None
    verify_token: str | None = None
    numbers: dict[str, NumberConfig] = {}
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1048576
    max_media_bytes: Annotated[int, msgspec.Meta(gt=0)] = 16 * 1048576


@dataclass(frozen=True)
class WhatsAppConfig:
    api: str  # graph_base/api_version
    app_secret: str
    verify_token: str | None
    numbers: dict[str, NumberConfig]
    max_body_bytes: int
    max_media_bytes: int


def load_config(raw: Mapping[str, Any]) -> WhatsAppConfig:
    try:
        s = msgspec.convert(dict(raw), _Section, strict=False)
    except msgspec.ValidationError as exc:  # names the path, never the value
        raise Fatal(f"whatsapp config: {exc}") from None
    if not s.app_secret:
        raise Fatal("whatsapp config: app_secret is required (app_secret_file: the Meta app secret signing webhooks)")
    numbers = {name: NumberConfig(str(n.phone_number_id), n.access_token) for name, n in s.numbers.items()}
    return WhatsAppConfig(f"{s.graph_base.rstrip('/')}/{s.api_version}", s.app_secret, s.verify_token, numbers,
                          s.max_body_bytes, s.max_media_bytes)


def window_refusal(last_inbound_at: datetime | None, now: datetime) -> str | None:
    """Why a free-text message cannot be sent now (None when it can): WhatsApp
    delivers free text only within 24 hours of the customer's last message."""
    if last_inbound_at is None:
        return ("the customer has not written on WhatsApp: outside the 24-hour customer service window only an "
                "approved template can be sent")
    if now - last_inbound_at >= SERVICE_WINDOW:
        hours = (now - last_inbound_at).total_seconds() / 3600
        return (f"the customer last wrote {hours:.0f} hours ago: outside the 24-hour customer service window only "
                "an approved template can be sent")
    return None


def addressee(identity_value: str) -> dict[str, str]:
    """Whom a message goes to: ``to`` (the phone number's digits) for a
    ``+<wa_id>``, ``recipient`` (the BSUID) for a username-only user's
    ``whatsapp-user:<BSUID>``."""
    if identity_value.startswith(BSUID_PREFIX):
        return {"recipient": identity_value.removeprefix(BSUID_PREFIX)}
    return {"to": "".join(ch for ch in identity_value if ch.isdigit())}


def template_payload(to: dict[str, str], template: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"name": template.name, "language": {"code": template.language}}
    if template.parameters:
        payload["components"] = [{"type": "body", "parameters": [{"type": "text", "text": p}
                                                                 for p in template.parameters]}]
    return {"messaging_product": "whatsapp", "recipient_type": "individual", **to, "type": "template",
            "template": payload}


class WhatsAppConnector:
    channel = CHANNEL
    #: replies on this channel may be approved templates (the reply API's ``template``)
    supports_templates = True

    def __init__(self, ctx: ConnectorContext):
        self._ctx = ctx
        self._config = load_config(ctx.config)
        self._by_id = {n.phone_number_id: n for n in self._config.numbers.values()}
        self._http = HttpClient()

    def routes(self) -> list[web.RouteDef]:
        return [web.get(WEBHOOK_PATH, self._verify), web.post(WEBHOOK_PATH, self._webhook)]

    async def run(self) -> None:
        return None

    async def close(self) -> None:
        await self._http.close()

    def can_send(self, outbound: Outbound, facts: Mapping[str, Any]) -> str | None:
        """The reply API's 409 (connectors/base.py SendChecker): free text only
        within 24 hours of the customer's last message; a template always."""
        if outbound.template is not None:
            return None
        reason = window_refusal(facts.get("last_inbound_at"), facts["now"])
        return f"{reason}; send a template (field template)" if reason else None

    # ------------------------------------------------------------ webhook

    async def _verify(self, request: web.Request) -> web.Response:
        return verification(request, self._config.verify_token)

    async def _webhook(self, request: web.Request) -> web.Response:
        secret = self._config.app_secret
        try:
            body, obj = await read_webhook(request, self._config.max_body_bytes, decode, signature_header=SIGNATURE_HEADER,
                                           signature_ok=lambda body, sig: hub_signature_ok(body, sig, secret))
            values = changes(obj)
            account = next((str(v["metadata"]["phone_number_id"]) for v in values
                            if isinstance(v.get("metadata"), dict) and v["metadata"].get("phone_number_id")), CHANNEL)
            key = body_key(obj, body)
            # the journal could not take it: 503, Meta retries on non-200
            result = await journal(self._ctx, account, key, body, log, "whatsapp.webhook.journal_failed")
        except Refused as exc:
            return exc.answer(log, "whatsapp.webhook.refused")
        log.info("whatsapp.webhook", key=key, account=account, journal_id=result.journal_id, created=result.created)
        return web.Response(status=200, text="ok")

    # ------------------------------------------------------------ send

    def _number(self, account: str) -> NumberConfig:
        number = self._by_id.get(account) or self._config.numbers.get(account)
        if number is None or not number.access_token:
            raise SendError(f"no whatsapp number {account!r} with an access_token is configured")
        return number

    async def send(self, outbound: Outbound) -> SendResult:
        number = self._number(outbound.account)
        to = addressee(outbound.to.value)
        url = f"{self._config.api}/{number.phone_number_id}/messages"
        payloads: list[dict[str, Any]] = []
        template = getattr(outbound, "template", None)
        if template is not None:
            payloads.append(template_payload(to, template))
        else:
            payloads += [{"messaging_product": "whatsapp", "recipient_type": "individual", **to, "type": "text",
                          "text": {"body": part, "preview_url": False}}
                         for part in split_text(outbound.text, MAX_TEXT_CHARS)]
            for a in outbound.attachments:
                payloads.append(await self._media_message(number, to, a))
        if not payloads:
            raise SendError("nothing to send: empty text and no attachments")
        first: str | None = None
        for payload in payloads:
            answer = await self._http.json_call("POST", url, token=number.access_token, json=payload,
                                                platform="WhatsApp")
            messages = answer.get("messages") if isinstance(answer, dict) else None
            wamid = messages[0].get("id") if isinstance(messages, list) and messages and isinstance(messages[0], dict) else None
            first = first or wamid
        log.info("whatsapp.sent", account=number.phone_number_id, messages=len(payloads),
                 template=template.name if template is not None else None)
        return SendResult(external_id=first)

    async def _media_message(self, number: NumberConfig, to: dict[str, str], a: Attachment) -> dict[str, Any]:
        """Upload a file (``POST /{phone-number-id}/media``) and the message that shows it."""
        if a.data is None:
            raise SendError(f"attachment {a.name!r} has no data to upload")
        kind = MEDIA_KINDS.get(a.content_type, "document")
        form = aiohttp.FormData()
        form.add_field("messaging_product", "whatsapp")
        form.add_field("type", a.content_type)
        form.add_field("file", a.data, filename=a.name or "file", content_type=a.content_type)
        url = f"{self._config.api}/{number.phone_number_id}/media"
        answer = await self._http.upload(url, form, token=number.access_token, platform="WhatsApp")
        media: dict[str, Any] = {"id": answer.get("id")}
        if kind == "document" and a.name:
            media["filename"] = a.name
        return {"messaging_product": "whatsapp", "recipient_type": "individual", **to, "type": kind, kind: media}

    # ------------------------------------------------------------ media

    async def fetch_media(self, inbound: Inbound) -> None:
        """Download every attachment still referenced by media id; a failure
        is a defect of the Inbound, the others still download."""
        pending = [a for a in inbound.attachments if a.data is None and a.url]
        number = self._by_id.get(inbound.account)
        if number is None or not number.access_token:
            if pending:
                inbound.defects.append(f"media not downloaded: no access_token for number {inbound.account!r}")
            return
        for a in pending:
            try:
                await self._download(number, a)
            except (SendError, MediaTooLarge, aiohttp.ClientError, TimeoutError) as exc:
                inbound.defects.append(f"media {a.url} not downloaded: {exc}")

    async def _download(self, number: NumberConfig, a: Attachment) -> None:
        assert a.url is not None
        info = await self._http.json_call("GET", f"{self._config.api}/{a.url}", token=number.access_token,
                                          platform="WhatsApp")
        if not isinstance(info, dict) or not isinstance(info.get("url"), str):
            raise SendError("media info without a url")
        size = info.get("file_size")
        if isinstance(size, int) and size > self._config.max_media_bytes:
            raise MediaTooLarge(f"{size} bytes, more than {self._config.max_media_bytes}")
        data, content_type, status = await self._http.download(info["url"], token=number.access_token,
                                                               limit=self._config.max_media_bytes)
        if status >= 400:
            raise SendError(f"download answered HTTP {status}")
        a.data, a.size, a.sha256 = data, len(data), hashlib.sha256(data).hexdigest()
        if isinstance(info.get("mime_type"), str):
            a.content_type = info["mime_type"]
        elif content_type:
            a.content_type = content_type.split(";")[0]
