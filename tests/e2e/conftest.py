"""End-to-end fixtures: a real gateway app (real SQLite, pipeline, connectors,
outbox dispatcher) whose channel sections point ``api_base`` at the loopback
stand-ins, driven over HTTP like the platforms and an agent would."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import pytest
from aiohttp.test_utils import TestClient

from gateway import keys
from gateway.app import create_app
from gateway.config import load
from tests.gateway.conftest import AUTH, RULES, TOKEN, drain
from tests.standins.telegram_api import TelegramApiStandIn
from tests.standins.wechat_api import WeChatApiStandin

#: What a customer or an agent wrote (the rules engine adds its own entries beside them).
MESSAGE_KINDS = ("message_in", "message_out", "note")
PATIENCE_S = 30.0  # a safety net against a hung test, not a timing assertion


@dataclass
class Gateway:
    client: TestClient
    app: Any

    async def get(self, path: str) -> Any:
        resp = await self.client.get(path, headers=AUTH)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def drain(self) -> None:
        await drain(self.app)

    async def journal(self) -> list[dict]:
        return (await self.get("/api/v1/journal"))["items"]

    async def timeline(self, ticket_id: str, *kinds: str) -> list[dict]:
        """The ticket's timeline entries (of these kinds; rule and status entries aside, and
        the rules' automatic replies, which depend on the hour: ``auto_replies`` reads those)."""
        items = (await self.get(f"/api/v1/tickets/{ticket_id}/timeline"))["items"]
        return [e for e in items if e["kind"] in (kinds or MESSAGE_KINDS) and not _automatic_reply(e)]

    async def auto_replies(self, ticket_id: str) -> list[dict]:
        """What the rules engine sent on its own (e.g. the opening hours, after hours)."""
        items = (await self.get(f"/api/v1/tickets/{ticket_id}/timeline"))["items"]
        return [e for e in items if _automatic_reply(e)]

    async def only_ticket(self) -> tuple[dict, dict, dict]:
        """(journal entry, ticket, contact) of the one processed message so far."""
        (entry,) = await self.journal()
        assert entry["status"] == "processed", entry
        ticket = await self.get(f"/api/v1/tickets/{entry['ticket_id']}")
        contact = await self.get(f"/api/v1/contacts/{entry['contact_id']}")
        return entry, ticket, contact

    async def reply(self, ticket_ref: Any, text: str, **extra: Any) -> dict:
        resp = await self.client.post(f"/api/v1/tickets/{ticket_ref}/replies", json={"text": text, **extra},
                                      headers=AUTH)
        assert resp.status == 202, await resp.text()
        return await resp.json()

    async def delivery(self, ticket_id: str, entry_id: str, until: Callable[[dict], bool]) -> dict:
        """The reply entry's ``data.delivery`` once ``until`` holds for it."""

        async def current() -> dict:
            items = (await self.get(f"/api/v1/tickets/{ticket_id}/timeline"))["items"]
            (entry,) = [e for e in items if e["id"] == entry_id]
            return entry["data"]["delivery"]

        return await wait_for(current, until)


def _automatic_reply(entry: dict) -> bool:
    return entry["kind"] == "message_out" and bool(entry["data"].get("auto"))


async def wait_for(read: Callable[[], Awaitable[Any]], until: Callable[[Any], bool]) -> Any:
    """Read until the condition holds; fail (with the last value) past the deadline."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        value = await read()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met before the deadline; last value: {value!r}")
        await asyncio.sleep(0.02)


@pytest.fixture
def start_gateway(aiohttp_client, tmp_path, gateway_clock) -> Callable[..., Awaitable[Gateway]]:
    """``await start_gateway(wechat={...}, …)``: a running gateway with these channel sections,
    its clock pinned to the test's instant (business hours, an evening, a holiday:
    tests/clock.py; ``@pytest.mark.clock(...)`` picks)."""

    async def start(**sections: dict) -> Gateway:
        env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data"),
               "OMNIGATE_RULES_DIR": RULES}  # the shipped rules, wherever pytest runs from
        app = create_app(load(None, environ=env, flags=sections), clock=gateway_clock)
        client = await aiohttp_client(app)
        assert set(sections) <= set(app[keys.CONNECTORS])
        return Gateway(client, app)

    return start


async def _serve(aiohttp_server, api):
    """Run a platform stand-in on 127.0.0.1; ``api.base`` becomes its URL."""
    server = await aiohttp_server(api.app(), host="127.0.0.1")
    api.base = str(server.make_url("")).rstrip("/")
    return api


@pytest.fixture
async def wechat_api(aiohttp_server) -> WeChatApiStandin:
    """The WeChat/WeCom API stand-in."""
    return await _serve(aiohttp_server, WeChatApiStandin())


@pytest.fixture
async def telegram_api(aiohttp_server) -> TelegramApiStandIn:
    """The Bot API stand-in."""
    return await _serve(aiohttp_server, TelegramApiStandIn())
