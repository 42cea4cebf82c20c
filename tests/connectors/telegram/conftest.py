"""Fixtures of the Telegram tests: an in-memory ConnectorContext, the Bot API
stand-in on 127.0.0.1, and connectors wired to both."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from connectors.telegram.client import TelegramConnector
from tests.connectors.memory import MemoryContext as BaseMemoryContext
from tests.standins.telegram_api import BotState, TelegramApiStandIn

WEBHOOK_TOKEN = "1111111:webhook-bot-token"
POLLING_TOKEN = "2222222:polling-bot-token"
SECRET = "s3cret-Token_value"
PATIENCE_S = 30.0  # a safety net against a hung test, not a timing assertion


@dataclass
class MemoryContext(BaseMemoryContext):
    channel: str = "telegram"


@dataclass
class Api:
    """The running stand-in: its base URL and the two bots it knows."""

    base: str
    standin: TelegramApiStandIn
    webhook_bot: BotState
    polling_bot: BotState


@pytest.fixture
async def api(aiohttp_server) -> Api:
    standin = TelegramApiStandIn()
    webhook_bot = standin.add_bot(WEBHOOK_TOKEN, "support_bot")
    polling_bot = standin.add_bot(POLLING_TOKEN, "sales_bot")
    server = await aiohttp_server(standin.app(), host="127.0.0.1")
    return Api(str(server.make_url("")).rstrip("/"), standin, webhook_bot, polling_bot)


def config_for(api: Api, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "api_base": api.base,
        "bots": {
            "support": {"token": WEBHOOK_TOKEN, "secret_token": SECRET, "mode": "webhook"},
            "sales": {"token": POLLING_TOKEN, "mode": "polling", "poll_timeout": 1},
        },
    }
    config.update(overrides)
    return config


@pytest.fixture
async def make_connector() -> AsyncIterator[Callable[[MemoryContext], TelegramConnector]]:
    """Builds connectors and closes them (their HTTP clients) after the test."""
    made: list[TelegramConnector] = []

    def make(ctx: MemoryContext) -> TelegramConnector:
        made.append(TelegramConnector(ctx))
        return made[-1]

    yield make
    for connector in made:
        await connector.close()


async def run_until(connector: TelegramConnector, done: Callable[[], Awaitable[None]]) -> None:
    """Run the polling loop until ``done`` returns, then stop it as the gateway
    does (cancel). A loop that fails first fails the test with its error."""
    runner = asyncio.create_task(connector.run())
    waiter = asyncio.create_task(done())
    try:
        finished, _ = await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if runner in finished:
            runner.result()
            raise AssertionError("run() returned before the test's condition was met")
        waiter.result()
    finally:
        for task in (runner, waiter):
            task.cancel()
        await asyncio.gather(runner, waiter, return_exceptions=True)
