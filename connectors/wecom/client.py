"""The WeCom connector: app callbacks, the 微信客服 pull, replies, media.

Routes (absolute): ``GET /channels/wecom/{corp_id}/{account}`` answers the
URL verification (decrypted ``echostr``), ``POST`` takes callbacks. The
``account`` is the name of an entry of ``accounts`` in the config, because
one corp has several callback configurations (each app, and 微信客服, has
its own Token and EncodingAESKey); that name is the Inbound's ``account``.

WeCom signs only encrypted bodies, so a POST must be an envelope with a valid
``msg_signature``, its ``timestamp`` within ``replay_window_s`` of the
gateway's clock and its ``nonce`` not reused with another body (the same
defences as WeChat's, connectors/wechat/webhook.py). An app message is journaled as it came. The 微信客服
notification ``kf_msg_or_event`` is not: it triggers a ``kf/sync_msg`` pull
whose messages are journaled one by one (key = msgid); the cursor is saved
through ``ctx.state_set`` only after a page is durable, so a restart pulls
nothing twice and loses nothing. The callback waits for its pull up to
``kf_pull_wait_s`` (WeCom gives up after 5 s): a pull that failed by then is
answered 503, so WeCom calls again; one still running finishes on its own.
"""

from __future__ import annotations

import asyncio
from typing import Any, Mapping

import msgspec
import structlog
from aiohttp import web

from connectors.base import ConnectorContext, SendError, SendResult
from connectors.http import problem
from connectors.wechat.api import ApiSession, TokenedApi, fetch_token, fill_attachments
from connectors.wechat.client import deliver, window_closed
from connectors.wechat.envelope import DecryptionFailed, Secrets, SignatureMismatch, open_callback, verify_echo
from connectors.wechat.parse import external_id
from connectors.wechat.safexml import UnsafeXml, text_field
from connectors.wechat.tokens import PROCESS_TOKENS, TokenCache
from connectors.wechat.webhook import SUCCESS, CallbackGuard, callback_meta, fallback_key, read_body, refuse
from connectors.wecom.config import WeComAccount, load_wecom
from connectors.wecom.parse import KF_NOTIFY_EVENT, open_kfid_of
from routing.model import Inbound, Outbound

log = structlog.get_logger(__name__)

#: sync_msg's page size: its maximum.
SYNC_LIMIT = 1000

#: kf/send_msg errcodes worth plain words (微信客服 文档 94677 发送消息).
KF_SEND_ERRORS = {
    95001: "the customer must write again before more messages can be sent",
}


#: 微信客服: messages an agent may send per customer message (within its 48 hours).
KF_MAX_REPLIES = 5


def _cursor_key(account: str, open_kfid: str) -> str:
    return f"kf_cursor:{account}:{open_kfid}"


class WeComConnector:
    """Every configured WeCom callback (apps and 微信客服) of any corp."""

    channel = "wecom"

    def __init__(self, ctx: ConnectorContext, *, tokens: TokenCache | None = None) -> None:
        self.ctx = ctx
        self.config = load_wecom(ctx.config)
        self._session = ApiSession(self.config.api_base)
        # the gateway's shared token store when instances share Redis (ctx.token_store), else this process's
        self._tokens = tokens or TokenCache(getattr(ctx, "token_store", None) or PROCESS_TOKENS)
        self._apis: dict[str, TokenedApi] = {}
        self._pull_locks: dict[str, asyncio.Lock] = {}
        self._pulls: set[asyncio.Task[int]] = set()
        self._guard = CallbackGuard(ctx, self.channel, self.config.replay_window_s)

    # ------------------------------------------------------------ lifecycle

    def routes(self) -> list[web.AbstractRouteDef]:
        path = "/channels/wecom/{corp_id}/{account}"
        return [web.get(path, self._verify), web.post(path, self._callback)]

    async def run(self) -> None:
        """Nothing runs in the background: pulls happen on the callback."""

    async def close(self) -> None:
        for task in list(self._pulls):
            task.cancel()
        await asyncio.gather(*self._pulls, return_exceptions=True)
        await self._session.close()

    # ------------------------------------------------------------ inbound

    def _account(self, request: web.Request) -> tuple[str, WeComAccount]:
        name = request.match_info["account"]
        account = self.config.accounts.get(name)
        if account is None or account.corp_id != request.match_info["corp_id"]:
            raise web.HTTPNotFound(text="unknown corp_id/account")
        return name, account

    @staticmethod
    def _context(name: str, account: WeComAccount, meta: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "token": account.token,
            "encoding_aes_key": account.encoding_aes_key,
            "corp_id": account.corp_id,
            "account": name,
            **meta,
        }

    async def _verify(self, request: web.Request) -> web.StreamResponse:
        name, account = self._account(request)
        secrets = Secrets(account.token, account.encoding_aes_key, account.corp_id)
        try:
            echo = verify_echo("wecom", secrets, request.query)
        except SignatureMismatch as exc:
            return refuse(401, str(exc), field="msg_signature", channel=self.channel, account=name)
        except DecryptionFailed as exc:
            return refuse(400, str(exc), field="echostr", channel=self.channel, account=name)
        return web.Response(text=echo)

    async def _callback(self, request: web.Request) -> web.StreamResponse:
        name, account = self._account(request)
        bound = {"channel": self.channel, "account": name}
        guard = self._guard
        raw = await read_body(request, self.config.max_body_bytes)
        meta = callback_meta(request)
        if "msg_signature" not in meta["query"]:
            return guard.refuse(401, "signature", "msg_signature missing from the query", **bound)
        try:
            opened = open_callback(raw, self._context(name, account, meta), "wecom", max_bytes=self.config.max_body_bytes)
        except SignatureMismatch as exc:
            return guard.refuse(401, "signature", str(exc), **bound)
        except UnsafeXml as exc:
            return guard.refuse(400, "bad_xml", str(exc), **bound)
        except DecryptionFailed as exc:
            log.error("wecom.decrypt_failed", reason=str(exc), **bound)
            opened, key = None, fallback_key(raw)
        else:
            if not opened.encrypted:
                return guard.refuse(400, "not_encrypted", "plain callback refused: WeCom signs only encrypted bodies",
                                    **bound)
            key = external_id(opened.fields)
        nonce = guard.nonce(f"wecom:{name}", meta["query"], **bound)
        if isinstance(nonce, web.Response):
            return nonce
        if opened is not None and text_field(opened.fields, "Event") == KF_NOTIFY_EVENT:
            # nothing is journaled for the notification itself (its messages are pulled); a
            # replayed one within the window only triggers a pull, which journals nothing twice
            return await self._kf_notified(name, account, opened.fields, bound)
        return await self._journal(name, key, raw, meta, bound, nonce)

    async def _journal(
        self, name: str, key: str, raw: bytes, meta: Mapping[str, Any], bound: dict[str, Any], nonce: Any = None
    ) -> web.StreamResponse:
        result = await self._guard.ingest(name, key, raw, meta, nonce, **bound)
        if isinstance(result, web.Response):
            return result
        log.info("wecom.callback", key=key, journal_id=result.journal_id, created=result.created, **bound)
        return web.Response(text=SUCCESS)

    # ------------------------------------------------------------ 微信客服 pull

    async def _kf_notified(
        self, name: str, account: WeComAccount, fields: Mapping[str, Any], bound: dict[str, Any]
    ) -> web.StreamResponse:
        open_kfid = text_field(fields, "OpenKfId") or account.open_kfid or ""
        task = asyncio.create_task(self.pull(name, open_kfid, text_field(fields, "Token")))
        self._pulls.add(task)
        task.add_done_callback(lambda t: self._pull_done(t, open_kfid, bound))
        done, _ = await asyncio.wait({task}, timeout=self.config.kf_pull_wait_s)
        if done and not task.cancelled() and task.exception() is not None:
            return problem(503, "pull failed")  # WeCom will call again
        return web.Response(text=SUCCESS)

    def _pull_done(self, task: asyncio.Task[int], open_kfid: str, bound: dict[str, Any]) -> None:
        """Forget a finished pull and log its failure (also when nobody waits for it)."""
        self._pulls.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("wecom.kf_pull_failed", open_kfid=open_kfid, error=f"{type(exc).__name__}: {exc}", **bound)

    async def pull(self, name: str, open_kfid: str, callback_token: str | None = None) -> int:
        """Pull every new 微信客服 message of an account; returns how many were journaled.

        One pull at a time per (account, open_kfid): two would read the same
        cursor and journal the same page twice.
        """
        lock = self._pull_locks.setdefault(_cursor_key(name, open_kfid), asyncio.Lock())
        async with lock:
            return await self._pull_pages(name, open_kfid, callback_token)

    async def _pull_pages(self, name: str, open_kfid: str, callback_token: str | None) -> int:
        api = self._api(name)
        state_key = _cursor_key(name, open_kfid)
        cursor = await self.ctx.state_get(state_key) or ""
        count = 0
        while True:
            body: dict[str, Any] = {"cursor": cursor, "limit": SYNC_LIMIT, "open_kfid": open_kfid}
            if callback_token:  # the callback's token lifts sync_msg's strict rate limit
                body["token"] = callback_token
            page = await api.post("/cgi-bin/kf/sync_msg", body)
            for msg in page.get("msg_list") or []:
                raw = msgspec.json.encode(msg)
                msgid = msg.get("msgid") if isinstance(msg, dict) else None
                key = msgid if isinstance(msgid, str) and msgid else fallback_key(raw)
                await self.ctx.ingest(name, key, raw, {"source": "kf/sync_msg", "open_kfid": open_kfid})
                count += 1
            next_cursor = page.get("next_cursor")
            if isinstance(next_cursor, str) and next_cursor and next_cursor != cursor:
                cursor = next_cursor
                await self.ctx.state_set(state_key, cursor)  # only once the page is durable
            if not page.get("has_more"):
                break
        log.info("wecom.kf_pulled", account=name, open_kfid=open_kfid, messages=count)
        return count

    # ------------------------------------------------------------ outbound

    def _api(self, name: str) -> TokenedApi:
        api = self._apis.get(name)
        if api is None:
            account = self.config.accounts[name]
            params = {"corpid": account.corp_id, "corpsecret": account.secret}

            async def fetch() -> tuple[str, int]:
                return await fetch_token(self._session, "/cgi-bin/gettoken", params)

            # one token per (corp, callback configuration): each has its own secret
            key = f"wecom:{account.corp_id}:{name}"
            api = self._apis[name] = TokenedApi(self._session, self._tokens, key, fetch)
        return api

    def _account_for(self, name: str) -> WeComAccount:
        account = self.config.accounts.get(name)
        if account is None:
            raise SendError(f"no configured wecom account is named {name!r}")
        return account

    def can_send(self, outbound: Outbound, facts: Mapping[str, Any]) -> str | None:
        """微信客服: at most 5 messages within 48 hours of the customer's last
        message (WeCom answers 95001 past either); employees have no such limit."""
        if outbound.to.kind != "wecom_external":
            return None
        if window_closed(facts):
            return "微信客服 can only answer within 48 hours of the customer's last message (errcode 95001)"
        if int(facts.get("sent_since_inbound") or 0) >= KF_MAX_REPLIES:
            return (f"微信客服 allows {KF_MAX_REPLIES} messages per customer message: "
                    f"{KF_SEND_ERRORS[95001]} (errcode 95001)")
        return None

    async def send(self, outbound: Outbound) -> SendResult:
        """To a customer through kf/send_msg; to an employee through message/send."""
        account = self._account_for(outbound.account)
        if outbound.attachments:
            log.warning("wecom.attachments_not_sent", count=len(outbound.attachments), outbound=outbound.id)
        text = {"content": outbound.text}
        if outbound.to.kind == "wecom_external":
            open_kfid = open_kfid_of(outbound.thread.session_id) or account.open_kfid
            if not open_kfid:
                raise SendError("no open_kfid: neither the conversation nor the account names one")
            body = {"touser": outbound.to.value, "open_kfid": open_kfid, "msgtype": "text", "text": text}
            path = "/cgi-bin/kf/send_msg"
        elif outbound.to.kind == "wecom_userid":
            if account.agent_id is None:
                raise SendError(f"account {outbound.account} has no agent_id to message employees with")
            userid = outbound.to.value.partition(":")[2]
            body = {"touser": userid, "msgtype": "text", "agentid": account.agent_id, "text": text}
            path = "/cgi-bin/message/send"
        else:
            raise SendError(f"wecom replies go to wecom_external or wecom_userid, not {outbound.to.kind}")
        answer = await deliver(self._api(outbound.account), path, body, KF_SEND_ERRORS)
        msgid = answer.get("msgid")
        log.info("wecom.sent", account=outbound.account, path=path, outbound=outbound.id)
        return SendResult(external_id=msgid if isinstance(msgid, str) else None)

    async def fetch_media(self, inbound: Inbound) -> None:
        if inbound.account not in self.config.accounts:
            inbound.defects.append(f"media not downloaded: no configured wecom account {inbound.account}")
            return
        await fill_attachments(inbound, self._api(inbound.account))
