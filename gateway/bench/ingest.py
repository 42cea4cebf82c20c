"""Ingest figures: ``ingest_http`` (API POST → durable journal → 202, the
figure every ``ratio_to_ingest`` is taken to), ``wechat_callback_aes`` and
``telegram_webhook``, through the real gateway with the pipeline off,
against a bare aiohttp handler and the durable-ack ceiling (the same handler
doing one group-committed, fsync'd SQLite insert), in alternating rounds."""

from __future__ import annotations

import json

from gateway.bench.load import CONCURRENCY, DURATION_S, ROUNDS, RequestFn, Servers, api_request, pregenerated


def _wechat_requests() -> RequestFn:
    import time

    return pregenerated(wechat_requests(int(time.time())))


def wechat_requests(timestamp: int) -> RequestFn:
    """Signed, AES-encrypted Official Account text messages, each with its own
    MsgId and nonce, stamped ``timestamp`` (the gateway refuses replays and
    timestamps outside its window around its own clock)."""
    import hashlib

    from wechatpy.crypto import WeChatCrypto

    from gateway.bench.server import BENCH_CHANNELS

    acct = BENCH_CHANNELS["wechat"]["accounts"]["bench"]
    crypto = WeChatCrypto(acct["token"], acct["encoding_aes_key"], acct["appid"])
    ts = str(timestamp)

    def make(n: int) -> bytes:
        nonce = str(100_000_000 + n)
        signature = hashlib.sha1("".join(sorted([acct["token"], ts, nonce])).encode()).hexdigest()
        xml = (f"<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[o{n % 997:06d}]]>"
               f"</FromUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
               f"<Content><![CDATA[订单 {n} 还没有到]]></Content><MsgId>{10**15 + n}</MsgId></xml>")
        body = crypto.encrypt_message(xml, nonce, ts).encode()
        msg_signature = body.split(b"<MsgSignature><![CDATA[", 1)[1].split(b"]]>", 1)[0].decode()
        path = (f"/channels/wechat/{acct['appid']}?signature={signature}&timestamp={ts}&nonce={nonce}"
                f"&encrypt_type=aes&msg_signature={msg_signature}&openid=o{n % 997:06d}")
        return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    return make


def _telegram_requests() -> RequestFn:
    from gateway.bench.server import BENCH_CHANNELS

    secret = BENCH_CHANNELS["telegram"]["bots"]["bench"]["secret_token"]

    def make(n: int) -> bytes:
        chat = 100000 + n % 997
        body = json.dumps({"update_id": n, "message": {
            "message_id": n, "date": 1700000000, "text": f"hello, order {n} is late",
            "chat": {"id": chat, "type": "private", "first_name": "Bench"},
            "from": {"id": chat, "is_bot": False, "first_name": "Bench"}}}).encode()
        return (f"POST /channels/telegram/bench HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"X-Telegram-Bot-Api-Secret-Token: {secret}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body

    return make


def pregenerated(make: RequestFn, count: int = 25_000) -> RequestFn:
    """Requests made before the clock starts, so the client's own crypto is
    not measured; past ``count`` they are made on the fly."""
    ready = [make(n) for n in range(count)]
    return lambda n: ready[n] if n < count else make(n)


async def figures() -> dict:
    """The durable-ack path of the API channel, WeChat (AES) and Telegram,
    against the bare and the durable baselines, in alternating rounds."""
    plan = {"bare": ("bare", api_request), "durable": ("sqlite", api_request), "api": ("omnigate", api_request),
            "wechat": ("omnigate", _wechat_requests()), "telegram": ("omnigate", _telegram_requests())}
    async with Servers(["bare", "sqlite", "omnigate"]) as servers:
        r = await servers.best_of(plan, ROUNDS, DURATION_S)
    bare, durable = r["bare"], r["durable"]

    def figure(name: str, label: str) -> dict:
        x = r[name]
        return {
            "value": round(x["rate"], 1), "unit": "msg/s",
            "baseline": round(durable["rate"], 1) if name == "api" else round(bare["rate"], 1),
            "baseline_label": ("bare aiohttp handler + one group-committed fsync'd SQLite insert" if name == "api"
                               else "bare aiohttp handler answering at once"),
            "ratio": round(x["rate"] / (durable if name == "api" else bare)["rate"], 3),
            "detail": {"what": label, "p50_ms": round(x["p50_ms"], 2), "p99_ms": round(x["p99_ms"], 2),
                       "server_cpu_us_per_msg": round(x["cpu_us"], 1),
                       "baseline_cpu_us_per_msg": round((durable if name == "api" else bare)["cpu_us"], 1),
                       "errors": x["errors"], "concurrency": CONCURRENCY, "rounds": ROUNDS,
                       "bare_aiohttp_msg_s": round(bare["rate"], 1), "durable_baseline_msg_s": round(durable["rate"], 1),
                       "ratio_to_bare": round(x["rate"] / bare["rate"], 3),
                       "ratio_to_durable": round(x["rate"] / durable["rate"], 3)},
        }

    return {
        "ingest_http": figure("api", "POST /channels/api/messages → durable journal → 202"),
        "wechat_callback_aes": figure("wechat", "signed AES callback → verified, durable → success"),
        "telegram_webhook": figure("telegram", "webhook with secret token → durable → 200"),
    }

