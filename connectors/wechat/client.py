"""The Official Account connector: callback routes, customer-service replies, media.

Routes (absolute): ``GET /channels/wechat/{appid}`` answers WeChat's URL
verification, ``POST /channels/wechat/{appid}`` takes callbacks for that
account. A POST is answered ``success`` only once its raw body is durable in
the journal; before that it must carry a valid ``signature`` (401), be safe
XML (400) read whole within ``max_body_bytes`` (413), in safe mode a valid
``msg_signature``, and in ``compatible``/``safe`` mode an ``<Encrypt>`` (400;
only the decrypted part is trusted). Its ``timestamp`` must be within
``replay_window_s`` of the gateway's clock (403) and its ``nonce`` new — or
come with the very body it came with before (WeChat's retry: ``success``, not
stored twice); a reused nonce with another body is 403. Refusals store
nothing and are counted by reason. An envelope that verifies but does not decrypt is still
journaled: parse fails it into the journal as ``failed`` with the reason.

Replies go through 客服消息 (``POST /cgi-bin/message/custom/send``), which
WeChat only accepts within 48 hours of the customer's last message.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Mapping

import structlog
from aiohttp import web

from connectors.base import AuthFailed, ConnectorContext, NotReady, SendError, SendResult
from connectors.wechat.api import BUSY, ApiError, ApiSession, TokenedApi, fetch_token, fill_attachments
from connectors.wechat.config import OaAccount, load_wechat
from connectors.wechat.envelope import DecryptionFailed, SignatureMismatch, check_plain, open_callback
from connectors.wechat.parse import external_id
from connectors.wechat.safexml import UnsafeXml
from connectors.wechat.tokens import PROCESS_TOKENS, TokenCache
from connectors.wechat.webhook import SUCCESS, CallbackGuard, callback_meta, fallback_key, read_body, refuse
from routing.model import Inbound, Outbound

log = structlog.get_logger(__name__)

#: 客服消息 errcodes with a meaning the help desk should see in plain words.
SEND_ERRORS = {
    45015: "the 48-hour reply window is closed: the customer has not written for 48 hours (or unfollowed)",
    45047: "customer-service message limit reached: the customer must write again first",
    40003: "the openid is not a follower of this official account",
    43004: "the customer does not follow the official account",
}


def send_error(exc: ApiError, meanings: dict[int, str]) -> SendError:
    """An API refusal as the SendError the outbox understands."""
    reason = meanings.get(exc.code, exc.message or "refused")
    return SendError(f"{reason} (errcode {exc.code})", retryable=exc.code in BUSY, code=str(exc.code))


async def deliver(api: TokenedApi, path: str, body: dict[str, Any], meanings: dict[int, str]) -> dict[str, Any]:
    """POST a message; every failure becomes a SendError (shared with WeCom)."""
    try:
        return await api.post(path, body)
    except ApiError as exc:
        raise send_error(exc, meanings) from None
    except NotReady as exc:
        raise SendError(str(exc), retryable=True) from None
    except AuthFailed as exc:
        raise SendError(f"access_token refused: {exc}") from None


#: 客服消息 are accepted within 48 hours of the customer's last message.
REPLY_WINDOW = timedelta(hours=48)


def window_closed(facts: Mapping[str, Any], window: timedelta = REPLY_WINDOW) -> bool:
    """Whether the store already knows the customer last wrote more than ``window`` ago."""
    last, now = facts.get("last_inbound_at"), facts.get("now")
    return isinstance(last, datetime) and isinstance(now, datetime) and now - last > window


class WeChatConnector:
    """Several official accounts at once, each found by its appid."""

    channel = "wechat"

    def __init__(self, ctx: ConnectorContext, *, tokens: TokenCache | None = None) -> None:
        self.ctx = ctx
        self.config = load_wechat(ctx.config)
        self._by_appid: dict[str, OaAccount] = {a.appid: a for a in self.config.accounts.values()}
        self._session = ApiSession(self.config.api_base)
        # the gateway's shared token store when instances share Redis (ctx.token_store), else this process's
        self._tokens = tokens or TokenCache(getattr(ctx, "token_store", None) or PROCESS_TOKENS)
        self._apis: dict[str, TokenedApi] = {}
        self._guard = CallbackGuard(ctx, self.channel, self.config.replay_window_s)

    # ------------------------------------------------------------ lifecycle

    def routes(self) -> list[web.AbstractRouteDef]:
        return [
            web.get("/channels/wechat/{appid}", self._verify),
            web.post("/channels/wechat/{appid}", self._callback),
        ]

    async def run(self) -> None:
        """Nothing runs in the background: WeChat pushes callbacks."""

    async def close(self) -> None:
        await self._session.close()

    # ------------------------------------------------------------ inbound

    def _account(self, request: web.Request) -> OaAccount:
        account = self._by_appid.get(request.match_info["appid"])
        if account is None:
            raise web.HTTPNotFound(text="unknown appid")
        return account

    async def _verify(self, request: web.Request) -> web.StreamResponse:
        """URL verification: echo ``echostr`` when the signature is the account's."""
        account = self._account(request)
        try:
            check_plain(account.token, request.query)
        except SignatureMismatch as exc:
            return refuse(401, str(exc), field="signature", channel=self.channel, appid=account.appid)
        return web.Response(text=request.query.get("echostr", ""))

    def _context(self, account: OaAccount, meta: dict[str, Any]) -> dict[str, Any]:
        """The parse context of a live callback (the gateway builds the same on replay)."""
        return {
            "token": account.token,
            "encoding_aes_key": account.encoding_aes_key,
            "appid": account.appid,
            "account": account.appid,
            **meta,
        }

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        account = self._account(request)
        bound = {"channel": self.channel, "appid": account.appid}
        guard = self._guard
        raw = await read_body(request, self.config.max_body_bytes)
        meta = callback_meta(request)
        if "signature" not in meta["query"]:  # WeChat signs every callback, safe mode included
            return guard.refuse(401, "signature", "signature missing from the query", **bound)
        try:
            opened = open_callback(raw, self._context(account, meta), "oa", max_bytes=self.config.max_body_bytes)
        except SignatureMismatch as exc:
            return guard.refuse(401, "signature", str(exc), **bound)
        except UnsafeXml as exc:
            return guard.refuse(400, "bad_xml", str(exc), **bound)
        except DecryptionFailed as exc:
            # signed by WeChat but unreadable: journal it, parse will fail it with this reason
            log.error("wechat.decrypt_failed", reason=str(exc), **bound)
            opened, key = None, fallback_key(raw)
        else:
            if not opened.encrypted and account.effective_mode != "plain":
                # compatible and safe mode always carry <Encrypt>: a plain body is a forgery
                text = f"plain body refused: the account is in {account.effective_mode} mode (<Encrypt> expected)"
                return guard.refuse(400, "not_encrypted", text, **bound)
            key = external_id(opened.fields)
        nonce = guard.nonce(f"wechat:{account.appid}", meta["query"], **bound)
        if isinstance(nonce, web.Response):
            return nonce
        result = await guard.ingest(account.appid, key, raw, meta, nonce, **bound)
        if isinstance(result, web.Response):
            return result
        log.info("wechat.callback", key=key, journal_id=result.journal_id, created=result.created, **bound)
        return web.Response(text=SUCCESS)

    # ------------------------------------------------------------ outbound

    def _api(self, account: OaAccount) -> TokenedApi:
        api = self._apis.get(account.appid)
        if api is None:
            params = {"grant_type": "client_credential", "appid": account.appid, "secret": account.app_secret}

            async def fetch() -> tuple[str, int]:
                return await fetch_token(self._session, "/cgi-bin/token", params)

            api = self._apis[account.appid] = TokenedApi(self._session, self._tokens, f"wechat:{account.appid}", fetch)
        return api

    def _account_for(self, appid: str) -> OaAccount:
        account = self._by_appid.get(appid)
        if account is None:
            raise SendError(f"no configured official account has appid {appid!r}")
        return account

    def can_send(self, outbound: Outbound, facts: Mapping[str, Any]) -> str | None:
        """The 48-hour window, judged on what the store knows (WeChat would answer 45015)."""
        if window_closed(facts):
            return f"{SEND_ERRORS[45015]} (errcode 45015)"
        return None

    async def send(self, outbound: Outbound) -> SendResult:
        """A text reply through 客服消息, in wechatpy's ``send_text`` shape."""
        if outbound.to.kind != "wechat_openid":
            raise SendError(f"wechat replies go to a wechat_openid, not {outbound.to.kind}")
        appid, _, openid = outbound.to.value.partition(":")
        account = self._account_for(appid)
        if outbound.attachments:
            log.warning("wechat.attachments_not_sent", count=len(outbound.attachments), outbound=outbound.id)
        body = {"touser": openid, "msgtype": "text", "text": {"content": outbound.text}}
        await deliver(self._api(account), "/cgi-bin/message/custom/send", body, SEND_ERRORS)
        log.info("wechat.sent", appid=appid, outbound=outbound.id)
        return SendResult()  # 客服消息 answers no message id

    async def fetch_media(self, inbound: Inbound) -> None:
        account = self._by_appid.get(inbound.account)
        if account is None:
            inbound.defects.append(f"media not downloaded: no configured account has appid {inbound.account}")
            return
        await fill_attachments(inbound, self._api(account))
