"""``omnigate bench`` figure ``social_webhook``: signed social webhooks,
verify → durable journal → acknowledgement, in messages per second.

Distinct, correctly signed webhook bodies — a WhatsApp Cloud API text, a
Messenger message and a LINE text event in turn, each with its own message
id — are POSTed over keep-alive connections to

- the real gateway (``create_app``) with the three channels configured and
  the pipeline off, so the figure is the intake alone: body read, HMAC
  check, decode, idempotency key, group-committed fsync'd journal append,
  200;
- the baseline: a bare aiohttp handler on the same paths that reads the
  body and answers 200 at once (the framework's ceiling on this machine).

Both servers run in their own processes (:class:`gateway.bench.load.Servers`),
measured in alternating rounds (best round each), so a burst of noise on
the machine hits both. Usage of
the server side: ``python -m gateway.bench.social MODE PORT DATA_DIR``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from pathlib import Path

from aiohttp import web

from gateway.bench.load import CONCURRENCY, DURATION_S, ROUNDS

APP_SECRET = "bench-app-secret"
LINE_SECRET = "bench-line-secret"
PHONE_ID = "106540352242922"
PAGE_ID = "1065403522"
CHANNELS = {
    "whatsapp": {"app_secret": APP_SECRET, "graph_base": "http://127.0.0.1:9",
                 "numbers": {"bench": {"phone_number_id": PHONE_ID}}},
    "messenger": {"app_secret": APP_SECRET, "graph_base": "http://127.0.0.1:9",
                  "pages": {"bench": {"page_id": PAGE_ID}}},
    "line": {"api_base": "http://127.0.0.1:9", "data_base": "http://127.0.0.1:9",
             "accounts": {"bench": {"channel_id": "1650000001", "channel_secret": LINE_SECRET}}},
}
PATHS = ("/channels/whatsapp", "/channels/messenger", "/channels/line/bench")


# ---------------------------------------------------------------- requests


def _http(path: str, body: bytes, header: str, signature: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{header}: {signature}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _hub(body: bytes) -> str:
    return "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()


def request(n: int) -> bytes:
    """The n-th distinct signed webhook (WhatsApp, Messenger, LINE in turn)."""
    user = 10_000_000 + n % 997
    text = f"Hello, my order {n} has not arrived yet. Could you check where it is?"
    if n % 3 == 0:
        body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
            "field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550001111", "phone_number_id": PHONE_ID},
                "contacts": [{"profile": {"name": "Bench"}, "wa_id": f"1631{user}"}],
                "messages": [{"from": f"1631{user}", "id": f"wamid.bench{n}", "timestamp": "1790000000",
                              "type": "text", "text": {"body": text}}]}}]}]}).encode()
        return _http(PATHS[0], body, "X-Hub-Signature-256", _hub(body))
    if n % 3 == 1:
        body = json.dumps({"object": "page", "entry": [{"id": PAGE_ID, "time": 1790000000000, "messaging": [{
            "sender": {"id": str(user)}, "recipient": {"id": PAGE_ID}, "timestamp": 1790000000000,
            "message": {"mid": f"m_bench{n}", "text": text}}]}]}).encode()
        return _http(PATHS[1], body, "X-Hub-Signature-256", _hub(body))
    body = json.dumps({"destination": "Ubench", "events": [{
        "type": "message", "mode": "active", "timestamp": 1790000000000, "webhookEventId": f"01BENCH{n:020d}",
        "deliveryContext": {"isRedelivery": False}, "replyToken": "x", "source": {"type": "user", "userId": f"U{user}"},
        "message": {"id": str(10**15 + n), "type": "text", "text": text}}]}).encode()
    signature = base64.b64encode(hmac.new(LINE_SECRET.encode(), body, hashlib.sha256).digest()).decode()
    return _http(PATHS[2], body, "X-Line-Signature", signature)


# ---------------------------------------------------------------- servers


def _bare_app() -> web.Application:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200, text="ok")

    app = web.Application()
    for path in PATHS:
        app.router.add_post(path, handler)
    return app


async def _measure() -> dict:
    from gateway.bench.load import Servers, pregenerated

    # the requests are made before the clock starts: the client's HMACs are not measured
    make = pregenerated(request, 60_000)
    async with Servers(["bare", "omnigate"], module="gateway.bench.social") as servers:
        return await servers.best_of({mode: (mode, make) for mode in servers.modes}, ROUNDS, DURATION_S)


async def figures() -> dict[str, dict]:
    """The figure (the bench awaits a coroutine it is given)."""
    return _figure(await _measure())


def _figure(best: dict[str, dict]) -> dict[str, dict]:
    og, bare = best["omnigate"], best["bare"]
    return {"social_webhook": {
        "value": round(og["rate"], 1), "unit": "msg/s", "baseline": round(bare["rate"], 1),
        "baseline_label": "bare aiohttp handler answering at once on the same paths",
        "ratio": round(og["rate"] / bare["rate"], 3) if bare["rate"] else None,
        "detail": {"p99_ms": round(og["p99_ms"], 2), "errors": og["errors"], "requests": og["requests"],
                   "mix": "WhatsApp, Messenger, LINE in turn", "concurrency": CONCURRENCY,
                   "note": "signature check → decode → idempotency key → fsync'd journal → 200; pipeline off"},
    }}


def main() -> None:
    mode, port, data_dir = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    data_dir.mkdir(parents=True, exist_ok=True)
    if mode == "bare":
        app = _bare_app()
    else:
        from gateway.bench.server import omnigate_app

        app = omnigate_app(data_dir, CHANNELS)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
