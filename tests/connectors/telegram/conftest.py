"""Fixtures of the Telegram tests: an in-memory ConnectorContext, the Bot API
stand-in on 127.0.0.1, and connectors wired to both."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import pytest

from connectors.base import IngestResult
from connectors.telegram.client import TelegramConnector
from tests.standins.telegram_api import BotState, TelegramApiStandIn

WEBHOOK_TOKEN = "1111111:webhook-bot-token"
POLLING_TOKEN = "2222222:polling-bot-token"
SECRET = "s3cret-Token_value"
PATIENCE_S = 30.0  # a safety net against a hung test, not a timing assertion


@dataclass
class MemoryContext:
    """The ConnectorContext the gateway gives, kept in memory: the journal is
    a list deduplicated by (account, key), the state a dict that survives a
    "restart" when handed to a new connector."""

    config: Mapping[str, Any]
    channel: str = "telegram"
    data_dir: str = "."
    journal: list[tuple[str, str, bytes]] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)
    fail_ingest: bool = False
    ingest_calls: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def ingest(self, account: str, key: str, raw: bytes, meta: Mapping[str, Any] | None = None) -> IngestResult:
        self.ingest_calls += 1
        if self.fail_ingest:
            raise OSError("journal disk full")
        for i, (acc, k, _) in enumerate(self.journal):
            if (acc, k) == (account, key):
                return IngestResult(journal_id=str(i), created=False)
        self.journal.append((account, key, raw))
        self._changed.set()
        return IngestResult(journal_id=str(len(self.journal) - 1), created=True)

    async def state_get(self, key: str) -> str | None:
        return self.state.get(key)

    async def state_set(self, key: str, value: str) -> None:
        self.state[key] = value

    @property
    def keys(self) -> list[str]:
        return [k for _, k, _ in self.journal]

    async def wait_for_entries(self, n: int) -> None:
        async def wait() -> None:
            while len(self.journal) < n:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), PATIENCE_S)


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
