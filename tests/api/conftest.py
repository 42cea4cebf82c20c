"""A running gateway with a directory of two teams, per-agent tokens of each
role, and helpers that make tickets in a team (nothing sleeps: the clocks
are injected)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gateway import keys
from gateway.app import create_app
from gateway.auth import AUTH
from tests.assignment.conftest import Clock, local
from tests.gateway.conftest import AUTH as ADMIN, drain, make_config

# Synthetic directory: billing (two agents, a lead) and support (one agent).
# Everyone offline: nothing is auto-assigned, the tests assign explicitly.
DIRECTORY = """
calendars:
  cn-office:
    hours: {weekdays: [09:00-12:00, 13:30-18:00]}
teams:
  billing: {}
  support: {}
agents:
  - {id: a-bill, name: Bill, presence: offline, teams: [billing], capacity: {email: 5}}
  - {id: a-bill2, name: Bill Two, presence: offline, teams: [billing], capacity: {email: 5}}
  - {id: l-bill, name: Lead Bill, roles: [agent, lead], presence: offline, teams: [billing], capacity: {email: 5}}
  - {id: a-sup, name: Sup, presence: offline, teams: [support], capacity: {email: 5}}
sla_policies:
  - {id: standard, calendar: cn-office, targets: {first_response: 2h, resolution: 24h}}
"""


class Mono:
    """A monotonic clock the rate-limit tests move."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Api:
    client: object
    app: object
    clock: Clock
    mono: Mono
    tokens: dict[str, str] = field(default_factory=dict)

    def h(self, who: str) -> dict:
        """Headers of ``who``: an agent id with a token, or ``admin`` (the bootstrap token)."""
        return ADMIN if who == "admin" else {"Authorization": f"Bearer {self.tokens[who]}"}

    async def token(self, agent: str, role: str) -> str:
        token, _ = await self.app[keys.STORE].token_create(agent, role, created_by="test", now=self.clock())
        self.tokens[agent] = token
        return token

    async def message(self, ext: str, sender: str, kind: str = "email", text: str = "我的发票有问题") -> dict:
        body = {"external_id": ext, "sender": {"kind": kind, "value": sender}, "text": text}
        r = await self.client.post("/channels/api/messages", json=body, headers=ADMIN)
        assert r.status == 202
        await drain(self.app)
        jid = (await r.json())["journal_id"]
        return await (await self.client.get(f"/api/v1/journal/{jid}", headers=ADMIN)).json()

    async def ticket(self, ext: str, sender: str, team: str | None, **patch) -> dict:
        j = await self.message(ext, sender)
        if team or patch:
            body = {"team": team, **patch} if team else patch
            r = await self.client.patch(f"/api/v1/tickets/{j['ticket_id']}", json=body, headers=ADMIN)
            assert r.status == 200, await r.text()
            return await r.json()
        return await (await self.client.get(f"/api/v1/tickets/{j['ticket_id']}", headers=ADMIN)).json()


def api_config(tmp_path, **flags):
    path = tmp_path / "directory.yaml"
    path.write_text(DIRECTORY, encoding="utf-8")
    return make_config(tmp_path, directory=str(path), **flags)


async def start(aiohttp_client, tmp_path, **flags) -> Api:
    clock = Clock(local(2026, 3, 2, 10, 0))
    app = create_app(api_config(tmp_path, **flags), clock=clock)
    mono = Mono()
    app[AUTH].monotonic = app[AUTH].limiter.clock = mono
    client = await aiohttp_client(app)
    api = Api(client, app, clock, mono)
    await api.token("a-bill", "agent")
    await api.token("a-bill2", "agent")
    await api.token("a-sup", "agent")
    await api.token("l-bill", "lead")
    return api


@pytest.fixture
async def api(aiohttp_client, tmp_path) -> Api:
    return await start(aiohttp_client, tmp_path)
