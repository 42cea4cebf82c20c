"""A real webhook receiver on loopback for the webhook tests: verifies the
Standard Webhooks signature with the ``standardwebhooks`` package, accepts
each ``webhook-id`` once and records the order events were accepted in."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Callable

from aiohttp import web
from standardwebhooks.webhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


class Receiver:
    """``decide(request_number, event)`` → (status, accept_first, headers): the
    answer, and whether the receiver processes the event before answering."""

    def __init__(self, secret: str = SECRET,
                 decide: Callable[[int, dict], tuple[int, bool, dict]] | None = None) -> None:
        self.webhook = Webhook(secret)
        self.decide = decide or (lambda n, ev: (200, True, {}))
        self.requests = 0
        self.bad_signatures = 0
        self.accepted: list[dict] = []  # events, first acceptance of each webhook-id, in order
        self.seen: set[str] = set()
        self.duplicates = 0
        self.duplicate_ids: list[str] = []
        self.headers: list[dict] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.requests += 1
        self.headers.append(dict(request.headers))
        msg_id = request.headers["webhook-id"]
        at = datetime.fromtimestamp(int(request.headers["webhook-timestamp"]), tz=timezone.utc)
        expected = self.webhook.sign(msg_id, at, body)  # the library's signature over id.timestamp.body
        if expected not in request.headers["webhook-signature"].split(" "):
            self.bad_signatures += 1
            return web.Response(status=401)
        event = json.loads(body)
        event["_id"] = msg_id
        status, accept, headers = self.decide(self.requests, event)
        if accept and 200 <= status < 300 or accept and status >= 500:
            if msg_id in self.seen:
                self.duplicates += 1
                self.duplicate_ids.append(msg_id)
            else:
                self.seen.add(msg_id)
                self.accepted.append(event)
        return web.Response(status=status, headers=headers)

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        app.router.add_post("/elsewhere", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now
