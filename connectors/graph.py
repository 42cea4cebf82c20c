"""What the WhatsApp Cloud API and Messenger/Instagram connectors share:
Meta's webhook verification handshake, the Graph API's error answers, and a
small JSON/bytes HTTP client on aiohttp with size-limited downloads.

Graph errors (https://developers.facebook.com/docs/graph-api/guides/error-handling,
https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes)
arrive as ``{"error": {"message", "type", "code", "error_subcode",
"error_data": {"details"}, "fbtrace_id"}}``; :func:`send_error` says what
each means for the outbox: rate limits and temporary failures are retried
(after ``Retry-After`` when given), a closed 24-hour window (131047), a
blocked user or a bad request are not.
"""

from __future__ import annotations

from typing import Any, Mapping

import aiohttp
import structlog
from aiohttp import web

from connectors.base import SendError
from connectors.http import problem
from connectors.webhooks import secret_equal

log = structlog.get_logger(__name__)

DEFAULT_GRAPH_BASE = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v21.0"
#: Rate limits: app (4), user (17), page (32), API-specific (613), WhatsApp
#: account/throughput (80007, 130429) and pair rate (131056).
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80007, 130429, 131056})
#: Temporary server-side failures: retry.
TEMPORARY_CODES = frozenset({1, 2, 131000, 131016, 133004})
RATE_LIMIT_DEFAULT_S = 60.0  # Graph rarely says how long; a minute is what its docs advise
REENGAGEMENT = 131047  # WhatsApp: more than 24 hours since the customer last wrote
TOKEN_CODES = frozenset({190, 102})
MESSENGER_WINDOW_SUBCODE = 2018278  # Messenger/Instagram: sent outside the 24-hour standard messaging window


def verification(request: web.Request, verify_token: str | None) -> web.Response:
    """The webhook handshake (GET with ``hub.mode=subscribe``,
    ``hub.verify_token``, ``hub.challenge``): the challenge echoed when the
    token matches, 403 otherwise."""
    q = request.query
    if q.get("hub.mode") != "subscribe" or "hub.challenge" not in q:
        return problem(400, "expected hub.mode=subscribe and hub.challenge", field="hub.mode")
    if not secret_equal(q.get("hub.verify_token"), verify_token):
        log.warning("graph.webhook.verify_refused", path=request.path)
        return problem(403, "hub.verify_token does not match", field="hub.verify_token")
    log.info("graph.webhook.verified", path=request.path)
    return web.Response(text=q["hub.challenge"], content_type="text/plain")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return None


def send_error(status: int, body: Any, headers: Mapping[str, str], platform: str) -> SendError:
    """A Graph API error answer as the outbox's SendError."""
    err = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
    code = err.get("code") if isinstance(err.get("code"), int) else None
    message = str(err.get("message") or f"HTTP {status}")
    details = err.get("error_data", {}).get("details") if isinstance(err.get("error_data"), dict) else None
    reason = f"{platform} refused the message: {message}" + (f" ({details})" if details else "")
    code_s = str(code) if code is not None else str(status)
    if code == 10 and err.get("error_subcode") == MESSENGER_WINDOW_SUBCODE:
        return SendError(f"{platform}: more than 24 hours since the customer last wrote; the Page can no longer "
                         f"answer in this conversation ({message})", code=f"10/{MESSENGER_WINDOW_SUBCODE}")
    if code == 551 or (code == 10 and err.get("error_subcode") == 2018108):
        return SendError(f"{platform}: this person is not available (blocked the Page or left) ({message})",
                         code=code_s)
    if code == REENGAGEMENT:
        return SendError(f"{platform}: the 24-hour customer service window is closed; only an approved template "
                         f"can be sent ({message})", code=code_s)
    if code in RATE_LIMIT_CODES or status == 429:
        delay = _retry_after(headers) or RATE_LIMIT_DEFAULT_S
        return SendError(f"{platform} rate limit: {message}", retryable=True, retry_after=delay, code=code_s)
    if code in TEMPORARY_CODES or err.get("is_transient") is True or status >= 500:
        return SendError(f"{platform} temporarily failed: {message}", retryable=True,
                         retry_after=_retry_after(headers), code=code_s)
    if code in TOKEN_CODES or status == 401:
        return SendError(f"{platform} refused the access token: {message}", code=code_s)
    return SendError(reason, code=code_s)


class MediaTooLarge(Exception):
    pass


class HttpClient:
    """One aiohttp session per connector, opened on first use (inside the loop)."""

    def __init__(self, timeout_s: float = 30.0):
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def json_call(self, method: str, url: str, *, token: str | None, json: Any = None,
                        platform: str, error=send_error) -> Any:
        """A JSON API call; the decoded answer, or the platform's SendError."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self.session().request(method, url, json=json, headers=headers) as resp:
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    body = None
                if resp.status >= 400:
                    raise error(resp.status, body, resp.headers, platform)
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"{platform} unreachable: {type(exc).__name__}: {exc}", retryable=True) from exc

    async def upload(self, url: str, form: aiohttp.FormData, *, token: str | None, platform: str,
                     unreachable: str | None = None) -> Any:
        """A multipart POST (a file with its message); the decoded answer, or
        the platform's SendError (``unreachable``: the name in the
        unreachable message, ``platform`` by default)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self.session().post(url, data=form, headers=headers) as resp:
                answer = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise send_error(resp.status, answer, resp.headers, platform)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SendError(f"{unreachable or platform} unreachable: {exc}", retryable=True) from exc
        return answer

    async def download(self, url: str, *, token: str | None, limit: int) -> tuple[bytes, str | None, int]:
        """(bytes, content type, HTTP status) of a file, at most ``limit`` bytes."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session().get(url, headers=headers) as resp:
            if resp.status >= 400 or resp.status == 202:
                return b"", None, resp.status
            if resp.content_length is not None and resp.content_length > limit:
                raise MediaTooLarge(f"{resp.content_length} bytes, more than {limit}")
            data = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > limit:
                    raise MediaTooLarge(f"more than {limit} bytes")
            return bytes(data), resp.headers.get("Content-Type"), resp.status
