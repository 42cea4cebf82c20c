"""A loopback stand-in for the WeChat (api.weixin.qq.com) and WeCom
(qyapi.weixin.qq.com) HTTP APIs the connectors call. Test code, not shipped.

It speaks their protocol: the same paths and query parameters, JSON answers
with ``errcode``/``errmsg``, and their real error codes — 40001 invalid
credential (OA) / invalid secret (WeCom gettoken), 40014 invalid access_token
(WeCom), 42001 access_token expired, 40007 invalid media_id, 45015 reply
window closed, 45047 customer-service limit, 95001 微信客服 limit, 41001
access_token missing. Tests steer it through its attributes (close a
customer's window, expire a token, queue 微信客服 messages) and read what it
received.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

OA, WORK = "oa", "wecom"


@dataclass
class Sent:
    path: str
    body: dict[str, Any]


@dataclass
class WeChatApiStandin:
    oa_apps: dict[str, str] = field(default_factory=dict)  # appid → app_secret
    work_apps: dict[tuple[str, str], str] = field(default_factory=dict)  # (corp_id, secret) → app label
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # media_id → (bytes, content type)
    videos: dict[str, bytes] = field(default_factory=dict)  # OA video media_id → bytes served via video_url
    closed_windows: set[str] = field(default_factory=set)  # openids whose 48-hour window is closed
    limited: set[str] = field(default_factory=set)  # openids / external_userids over the message limit
    kf_messages: list[dict[str, Any]] = field(default_factory=list)  # what sync_msg serves, in order
    sync_page_size: int = 2  # small, so tests see paging
    sent: list[Sent] = field(default_factory=list)
    sync_calls: list[dict[str, Any]] = field(default_factory=list)
    tokens_issued: int = 0
    _tokens: dict[str, tuple[str, bool]] = field(default_factory=dict)  # token → (flavor, still valid)
    _counter: itertools.count = field(default_factory=itertools.count)

    # ------------------------------------------------------------ steering

    def expire_tokens(self) -> None:
        """Every issued token is now expired (42001), as after 7200 s."""
        self._tokens = {t: (flavor, False) for t, (flavor, _) in self._tokens.items()}

    def revoke_tokens(self) -> None:
        """Every issued token is now unknown (40001 / 40014), as after another fetch elsewhere."""
        self._tokens.clear()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/cgi-bin/token", self._oa_token)
        app.router.add_get("/cgi-bin/gettoken", self._work_token)
        app.router.add_get("/cgi-bin/media/get", self._media_get)
        app.router.add_get("/video/{media_id}", self._video)
        app.router.add_post("/cgi-bin/message/custom/send", self._custom_send)
        app.router.add_post("/cgi-bin/kf/sync_msg", self._sync_msg)
        app.router.add_post("/cgi-bin/kf/send_msg", self._kf_send)
        app.router.add_post("/cgi-bin/message/send", self._work_send)
        return app

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _error(code: int, msg: str) -> web.Response:
        # WeChat answers errors with HTTP 200 and a JSON body
        return web.json_response({"errcode": code, "errmsg": msg})

    def _issue(self, flavor: str) -> web.Response:
        self.tokens_issued += 1
        token = f"{flavor}-token-{next(self._counter)}"
        self._tokens[token] = (flavor, True)
        answer: dict[str, Any] = {"access_token": token, "expires_in": 7200}
        if flavor == WORK:
            answer = {"errcode": 0, "errmsg": "ok", **answer}
        return web.json_response(answer)

    def _token_error(self, request: web.Request) -> web.Response | None:
        token = request.query.get("access_token")
        if not token:
            return self._error(41001, "access_token missing")
        known = self._tokens.get(token)
        if known is None:
            # the OA calls an unknown token 40001, WeCom 40014
            flavor = WORK if token.startswith(WORK) else OA
            return self._error(40014, "invalid access_token") if flavor == WORK else self._error(
                40001, "invalid credential, access_token is invalid or not latest"
            )
        if not known[1]:
            return self._error(42001, "access_token expired")
        return None

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise web.HTTPOk(text=json.dumps({"errcode": 47001, "errmsg": "data format error"}), content_type="application/json")
        return body

    # ------------------------------------------------------------ endpoints

    async def _oa_token(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("grant_type") != "client_credential":
            return self._error(40002, "invalid grant_type")
        if q.get("appid") not in self.oa_apps:
            return self._error(40013, "invalid appid")
        if self.oa_apps[q["appid"]] != q.get("secret"):
            return self._error(40125, "invalid appsecret")
        return self._issue(OA)

    async def _work_token(self, request: web.Request) -> web.Response:
        q = request.query
        if (q.get("corpid", ""), q.get("corpsecret", "")) not in self.work_apps:
            return self._error(40001, "invalid secret")
        return self._issue(WORK)

    async def _media_get(self, request: web.Request) -> web.Response:
        if (err := self._token_error(request)) is not None:
            return err
        media_id = request.query.get("media_id", "")
        if media_id in self.videos:  # the OA answers a video's media id with a URL
            return web.json_response({"video_url": str(request.url.with_path(f"/video/{media_id}").with_query(None))})
        if media_id not in self.media:
            return self._error(40007, "invalid media_id")
        data, ctype = self.media[media_id]
        return web.Response(
            body=data,
            content_type=ctype,
            headers={"Content-Disposition": f'attachment; filename="{media_id}.bin"'},
        )

    async def _video(self, request: web.Request) -> web.Response:
        return web.Response(body=self.videos[request.match_info["media_id"]], content_type="video/mp4")

    async def _custom_send(self, request: web.Request) -> web.Response:
        if (err := self._token_error(request)) is not None:
            return err
        body = await self._json(request)
        openid = body.get("touser")
        if openid in self.closed_windows:
            return self._error(45015, "response out of time limit or subscription is canceled")
        if openid in self.limited:
            return self._error(45047, "out of response count limit")
        self.sent.append(Sent(request.path, body))
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _sync_msg(self, request: web.Request) -> web.Response:
        if (err := self._token_error(request)) is not None:
            return err
        body = await self._json(request)
        self.sync_calls.append(body)
        cursor = body.get("cursor") or ""
        start = int(cursor.removeprefix("c")) if cursor.startswith("c") else 0
        limit = min(int(body.get("limit") or 1000), self.sync_page_size)
        mine = [m for m in self.kf_messages if not body.get("open_kfid") or m.get("open_kfid") == body["open_kfid"]]
        page = mine[start : start + limit]
        end = start + len(page)
        return web.json_response(
            {"errcode": 0, "errmsg": "ok", "next_cursor": f"c{end}", "has_more": int(end < len(mine)), "msg_list": page}
        )

    async def _kf_send(self, request: web.Request) -> web.Response:
        if (err := self._token_error(request)) is not None:
            return err
        body = await self._json(request)
        if body.get("touser") in self.limited:
            return self._error(95001, "send msg count limit")
        self.sent.append(Sent(request.path, body))
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": f"kf-sent-{len(self.sent)}"})

    async def _work_send(self, request: web.Request) -> web.Response:
        if (err := self._token_error(request)) is not None:
            return err
        body = await self._json(request)
        self.sent.append(Sent(request.path, body))
        return web.json_response({"errcode": 0, "errmsg": "ok", "invaliduser": "", "msgid": f"app-sent-{len(self.sent)}"})
