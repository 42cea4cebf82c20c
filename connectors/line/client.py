"""LINE Messaging API I/O: the signed webhook, replies through the push API,
content downloads.

- ``POST /channels/line/<name>``: read whole (size-limited),
  ``X-Line-Signature`` (base64 HMAC-SHA256 of the body with the channel
  secret) checked — 401 and nothing stored when it does not verify —, then
  journaled under a key built from the events' ``webhookEventId`` (LINE keeps
  it when it redelivers with ``deliveryContext.isRedelivery``), answered 200.
  LINE's "Verify" button posts a signed body without events: answered 200,
  nothing stored.
- ``send``: ``POST {api_base}/v2/bot/message/push`` (a reply token lives a
  minute and can be used once: an agent's reply comes later, so replies
  are pushed), up to five text bubbles per call, with ``X-Line-Retry-Key``
  derived from the outbound id: a retried push that LINE had accepted
  answers 409 and is counted as sent, never delivered twice. LINE takes
  images only as public HTTPS URLs, so files are refused with a clear reason.
- ``fetch_media``: ``GET {data_base}/v2/bot/message/{id}/content`` with the
  channel access token, size-limited (202: still being prepared → a defect).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Mapping

import aiohttp
import msgspec
import structlog
from aiohttp import web

from connectors.base import ConnectorContext, Fatal, SendError, SendResult
from connectors.graph import HttpClient, MediaTooLarge
from connectors.line.parse import CHANNEL, SIGNATURE_HEADER, body_key, decode
from connectors.http import Refused, journal, problem, read_webhook
from connectors.text import split_text
from connectors.webhooks import line_signature_ok
from routing.model import Inbound, Outbound

log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/channels/line/{name}"
TEXT_LIMIT = 5000
MESSAGES_PER_PUSH = 5
RETRY_KEY_NAMESPACE = uuid.UUID("6f1b8c1e-3a52-4d59-9a3e-0c1f5b8d7e21")


class AccountConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    channel_id: str | int
    channel_secret: str
    access_token: str | None = None


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    api_base: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/]")] = "https://api.line.me"
    data_base: Annotated[str, msgspec.Meta(pattern=r"^https?://[^/]")] = "https://api-data.line.me"
    accounts: dict[str, AccountConfig] = {}
    max_body_bytes: Annotated[int, msgspec.Meta(gt=0)] = 1048576
    max_media_bytes: Annotated[int, msgspec.Meta(gt=0)] = 50 * 1048576


@dataclass(frozen=True)
class LineConfig:
    api_base: str
    data_base: str
    accounts: dict[str, AccountConfig]
    max_body_bytes: int
    max_media_bytes: int


def load_config(raw: Mapping[str, Any]) -> LineConfig:
    try:
        s = msgspec.convert(dict(raw), _Section, strict=False)
    except msgspec.ValidationError as exc:
        raise Fatal(f"line config: {exc}") from None
    accounts = {name: AccountConfig(str(a.channel_id), a.channel_secret, a.access_token) for name, a in s.accounts.items()}
    return LineConfig(s.api_base.rstrip("/"), s.data_base.rstrip("/"), accounts, s.max_body_bytes, s.max_media_bytes)


def send_error(status: int, body: Any, headers: Mapping[str, str], platform: str = "LINE") -> SendError:
    """A LINE API error answer (``{"message", "details": [...]}``) as a SendError."""
    message = body.get("message") if isinstance(body, dict) and isinstance(body.get("message"), str) else f"HTTP {status}"
    details = body.get("details") if isinstance(body, dict) and isinstance(body.get("details"), list) else []
    detail = "; ".join(f"{d.get('property')}: {d.get('message')}" for d in details if isinstance(d, dict))
    reason = f"LINE refused the message: {message}" + (f" ({detail})" if detail else "")
    if status == 429:
        if "monthly limit" in message.lower():  # the plan's message quota: no use retrying this month
            return SendError(f"LINE: {message}", code="429")
        try:
            retry_after = float(headers.get("Retry-After", "")) if headers.get("Retry-After") else 60.0
        except ValueError:
            retry_after = 60.0
        return SendError(f"LINE rate limit: {message}", retryable=True, retry_after=retry_after, code="429")
    if status >= 500:
        return SendError(f"LINE temporarily failed: {message}", retryable=True, code=str(status))
    if status == 401:
        return SendError(f"LINE refused the channel access token: {message}", code="401")
    return SendError(reason, code=str(status))


class LineConnector:
    channel = CHANNEL

    def __init__(self, ctx: ConnectorContext):
        self._ctx = ctx
        self._config = load_config(ctx.config)
        self._by_id = {a.channel_id: a for a in self._config.accounts.values()}
        self._http = HttpClient()

    def routes(self) -> list[web.RouteDef]:
        return [web.post(WEBHOOK_PATH, self._webhook)]

    async def run(self) -> None:
        return None

    async def close(self) -> None:
        await self._http.close()

    async def _webhook(self, request: web.Request) -> web.Response:
        account = self._config.accounts.get(request.match_info["name"])
        if account is None:
            return problem(404, "no such line webhook")
        bound = log.bind(account=account.channel_id)
        try:
            body, obj = await read_webhook(
                request, self._config.max_body_bytes, decode, signature_header=SIGNATURE_HEADER,
                signature_ok=lambda body, sig: line_signature_ok(body, sig, account.channel_secret))
            if not obj["events"]:  # the console's "Verify" button
                bound.info("line.webhook.verified")
                return web.Response(status=200)
            key = body_key(obj, body)
            result = await journal(self._ctx, account.channel_id, key, body, bound, "line.webhook.journal_failed")
        except Refused as exc:
            return exc.answer(bound, "line.webhook.refused")
        bound.info("line.webhook", key=key, journal_id=result.journal_id, created=result.created,
                   events=len(obj["events"]))
        return web.Response(status=200)

    # ------------------------------------------------------------ send

    def _account(self, account: str) -> AccountConfig:
        a = self._by_id.get(account) or self._config.accounts.get(account)
        if a is None or not a.access_token:
            raise SendError(f"no line channel {account!r} with an access_token is configured")
        return a

    async def send(self, outbound: Outbound) -> SendResult:
        account = self._account(outbound.account)
        if outbound.attachments:
            raise SendError("LINE sends images and files only from public HTTPS URLs; send a link in the text instead")
        to = outbound.to.value.rpartition(":")[2]
        bubbles = [{"type": "text", "text": part} for part in split_text(outbound.text, TEXT_LIMIT)]
        if not bubbles:
            raise SendError("nothing to send: empty text")
        first: str | None = None
        for n in range(0, len(bubbles), MESSAGES_PER_PUSH):
            retry_key = str(uuid.uuid5(RETRY_KEY_NAMESPACE, f"{outbound.id}:{n}"))
            first = await self._push(account, to, bubbles[n:n + MESSAGES_PER_PUSH], retry_key) or first
        log.info("line.sent", account=account.channel_id, bubbles=len(bubbles))
        return SendResult(external_id=first)

    async def _push(self, account: AccountConfig, to: str, messages: list[dict], retry_key: str) -> str | None:
        headers = {"Authorization": f"Bearer {account.access_token}", "X-Line-Retry-Key": retry_key}
        try:
            async with self._http.session().post(f"{self._config.api_base}/v2/bot/message/push",
                                                 json={"to": to, "messages": messages}, headers=headers) as resp:
                try:
                    answer = await resp.json(content_type=None)
                except ValueError:
                    answer = None
                if resp.status == 409 and resp.headers.get("X-Line-Accepted-Request-Id"):
                    return None  # accepted before (a retry of a push whose answer was lost): sent once
                if resp.status >= 400:
                    raise send_error(resp.status, answer, resp.headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"LINE unreachable: {type(exc).__name__}: {exc}", retryable=True) from exc
        sent = answer.get("sentMessages") if isinstance(answer, dict) else None
        return sent[0].get("id") if isinstance(sent, list) and sent and isinstance(sent[0], dict) else None

    # ------------------------------------------------------------ media

    async def fetch_media(self, inbound: Inbound) -> None:
        account = self._by_id.get(inbound.account)
        for a in [a for a in inbound.attachments if a.data is None and a.url]:
            external = a.url.startswith(("http://", "https://"))
            if not external and (account is None or not account.access_token):
                inbound.defects.append(f"content {a.url} not downloaded: no access_token for channel {inbound.account!r}")
                continue
            url = a.url if external else f"{self._config.data_base}/v2/bot/message/{a.url}/content"
            try:
                data, content_type, status = await self._http.download(
                    url, token=None if external else account.access_token, limit=self._config.max_media_bytes)
            except (MediaTooLarge, aiohttp.ClientError, TimeoutError) as exc:
                inbound.defects.append(f"content {a.url} not downloaded: {exc}")
                continue
            if status == 202:
                inbound.defects.append(f"content {a.url} not downloaded: LINE is still preparing it")
                continue
            if status >= 400:
                inbound.defects.append(f"content {a.url} not downloaded: HTTP {status}")
                continue
            a.data, a.size, a.sha256 = data, len(data), hashlib.sha256(data).hexdigest()
            if content_type:
                a.content_type = content_type.split(";")[0]
