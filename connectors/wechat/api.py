"""WeChat's and WeCom's JSON HTTP APIs on aiohttp, in wechatpy's shapes.

wechatpy's own client is synchronous; these few calls are written on aiohttp
instead, with the same conventions: every answer is JSON with ``errcode`` /
``errmsg`` (0 or absent = success), calls carry ``access_token`` in the
query, and a token the platform calls invalid or expired (40001, 40014,
42001) is dropped and fetched again once before the call is retried.
Media downloads answer raw bytes, or the same JSON error.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import aiohttp
import msgspec
import structlog

from connectors.base import AuthFailed, NotReady
from connectors.wechat.tokens import Fetcher, TokenCache
from routing.model import Inbound

log = structlog.get_logger(__name__)

T = TypeVar("T")

#: errcodes meaning "this access_token is no good": refresh once and retry.
TOKEN_REJECTED = frozenset({40001, 40014, 42001})
#: errcodes meaning "the platform is busy": worth retrying later.
BUSY = frozenset({-1, 45009, 45011})
#: Media larger than this is not downloaded (WeChat's own limit is 10 MB for video).
MAX_MEDIA_BYTES = 20 * 1024 * 1024

_FILENAME = re.compile(r'filename="?([^";]+)"?')


class ApiError(Exception):
    """The platform answered an ``errcode`` other than 0."""

    def __init__(self, code: int, message: str, path: str):
        super().__init__(f"{path}: errcode {code}: {message}")
        self.code = code
        self.message = message
        self.path = path


@dataclass(frozen=True, slots=True)
class Media:
    data: bytes
    content_type: str
    name: str | None


def _checked(answer: Any, path: str) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise NotReady(f"{path}: answer is not a JSON object")
    code = answer.get("errcode") or 0
    if code != 0:
        raise ApiError(int(code), str(answer.get("errmsg") or ""), path)
    return answer


class ApiSession:
    """One aiohttp session to one API base (``api_base`` of the config)."""

    def __init__(self, base: str, *, timeout_s: float = 10.0) -> None:
        self.base = base.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _request(self, method: str, url: str, path: str, **kw: Any) -> tuple[bytes, str, str]:
        try:
            async with self._http().request(method, url, **kw) as resp:
                if resp.status >= 500:
                    raise NotReady(f"{path}: HTTP {resp.status}")
                data = await resp.content.read(MAX_MEDIA_BYTES + 1)
                if len(data) > MAX_MEDIA_BYTES:
                    raise ApiError(-2, f"answer larger than {MAX_MEDIA_BYTES} bytes", path)
                return data, resp.headers.get("Content-Type", ""), resp.headers.get("Content-Disposition", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NotReady(f"{path}: {type(exc).__name__}: {exc}") from None

    async def call(
        self, method: str, path: str, params: Mapping[str, str], body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """A JSON API call; :class:`ApiError` for an errcode, NotReady for the network."""
        kw: dict[str, Any] = {"params": dict(params)}
        if body is not None:
            # WeChat wants UTF-8 JSON, not \\u escapes (wechatpy sends ensure_ascii=False too)
            kw["data"] = msgspec.json.encode(body)
            kw["headers"] = {"Content-Type": "application/json; charset=utf-8"}
        data, _, _ = await self._request(method, self.base + path, path, **kw)
        try:
            answer = msgspec.json.decode(data)
        except msgspec.DecodeError:
            raise NotReady(f"{path}: answer is not JSON") from None
        return _checked(answer, path)

    async def download(self, url: str, params: Mapping[str, str], path: str) -> Media | dict[str, Any]:
        """Raw bytes, or the JSON object the platform answered instead."""
        data, ctype, disposition = await self._request("GET", url, path, params=dict(params))
        if "json" in ctype or ctype.startswith("text/plain") or data[:1] == b"{":
            try:
                return _checked(msgspec.json.decode(data), path)
            except msgspec.DecodeError:
                pass  # a text/plain file that only looked like JSON
        m = _FILENAME.search(disposition)
        return Media(data, ctype.split(";")[0].strip() or "application/octet-stream", m.group(1) if m else None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class TokenedApi:
    """An app's calls with its access_token, refreshed once when refused."""

    def __init__(self, session: ApiSession, tokens: TokenCache, key: str, fetch: Fetcher) -> None:
        self.session = session
        self._tokens = tokens
        self._key = key
        self._fetch = fetch

    async def with_token(self, fn: Callable[[str], Awaitable[T]]) -> T:
        token = await self._tokens.get(self._key, self._fetch)
        try:
            return await fn(token)
        except ApiError as exc:
            if exc.code not in TOKEN_REJECTED:
                raise
            log.info("wechat.token_refused", key=self._key, errcode=exc.code)
            await self._tokens.invalidate(self._key, token)
            return await fn(await self._tokens.get(self._key, self._fetch))

    async def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.with_token(lambda t: self.session.call("POST", path, {"access_token": t}, body))

    async def media(self, media_id: str) -> Media:
        """``GET /cgi-bin/media/get``; a video answers ``{"video_url"}`` instead of bytes."""
        path = "/cgi-bin/media/get"

        async def get(token: str) -> Media | dict[str, Any]:
            return await self.session.download(
                self.session.base + path, {"access_token": token, "media_id": media_id}, path
            )

        got = await self.with_token(get)
        if isinstance(got, Media):
            return got
        url = got.get("video_url")
        if not isinstance(url, str) or not url:
            raise ApiError(-2, "media answer has neither bytes nor video_url", path)
        video = await self.session.download(url, {}, "video_url")
        if not isinstance(video, Media):
            raise ApiError(-2, "video_url answered JSON instead of the video", "video_url")
        return video


async def fetch_token(session: ApiSession, path: str, params: Mapping[str, str]) -> tuple[str, int]:
    """``/cgi-bin/token`` (OA) or ``/cgi-bin/gettoken`` (WeCom); refused → AuthFailed."""
    try:
        answer = await session.call("GET", path, params)
    except ApiError as exc:
        if exc.code in BUSY:
            raise NotReady(str(exc)) from None
        raise AuthFailed(str(exc)) from None  # wrong secret, appid, IP not whitelisted…
    token, expires_in = answer.get("access_token"), answer.get("expires_in")
    if not isinstance(token, str) or not token:
        raise NotReady(f"{path}: answer has no access_token")
    return token, int(expires_in) if isinstance(expires_in, int) and expires_in > 0 else 7200


async def fill_attachments(inbound: Inbound, api: TokenedApi) -> None:
    """Download every referenced media (``attachment.url`` = media id) of an
    Inbound; a failure becomes a defect, never an error (MediaFetcher)."""
    for att in inbound.attachments:
        if att.data is not None or not att.url:
            continue
        try:
            media = await api.media(att.url)
        except (ApiError, NotReady, AuthFailed) as exc:
            inbound.defects.append(f"media {att.url} not downloaded: {exc}")
            log.warning("wechat.media_failed", channel=inbound.channel, external_id=inbound.external_id, reason=str(exc))
            continue
        att.data = media.data
        att.size = len(media.data)
        att.sha256 = hashlib.sha256(media.data).hexdigest()
        att.content_type = media.content_type
        att.name = att.name or media.name
