"""Console fixtures: a gateway with the test directory (agents of two teams),
the shipped rules, per-agent tokens, and a helper to sign in over HTTP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway import keys
from gateway.app import create_app
from gateway.config import load
from tests.gateway.conftest import RULES, TOKEN

#: Synthetic directory (shape: deploy/directory.example.yaml): billing (李雷 lead, 韩梅梅) and frontline (赵强).
DIRECTORY = """
calendars:
  always: {always_open: true}
teams:
  billing: {title: Billing, calendar: always}
  frontline: {title: Front line, calendar: always}
  support: {title: Support, calendar: always}
  senior: {title: Senior, calendar: always}
  social-media: {title: Social, calendar: always}
agents:
  - {id: a-lilei, name: 李雷, roles: [agent, lead], teams: [billing], skills: {billing: 3, disputes: 1}, capacity: {chat: 5, email: 20}}
  - {id: a-hanmeimei, name: 韩梅梅, teams: [billing], skills: {billing: 2}, capacity: {chat: 5, email: 20}}
  - {id: a-zhao, name: 赵强, teams: [frontline], skills: {general: 1}, capacity: {chat: 8, email: 30}}
  - {id: a-senior, name: 周敏, teams: [senior, social-media], skills: {vip: 2, social: 2}, capacity: {chat: 5, email: 20}}
"""


def console_env(tmp_path: Path, directory: str = DIRECTORY, **extra: str) -> dict[str, str]:
    d = tmp_path / "directory.yaml"
    d.write_text(directory, encoding="utf-8")
    return {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data"), "OMNIGATE_RULES_DIR": RULES,
            "OMNIGATE_DIRECTORY": str(d), **extra}


async def agent_token(app: Any, agent_id: str, role: str = "agent") -> str:
    token, _ = await app[keys.STORE].token_create(agent_id, role, created_by="test", now=app[keys.CLOCK]())
    return token


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def sign_in(client: Any, token: str) -> str:
    """Sign in through the form; returns the session's CSRF token (from the queue page)."""
    page = await client.get("/console/login")
    pre = CSRF.search(await page.text()).group(1)
    resp = await client.post("/console/login", data={"csrf": pre, "token": token}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    queue = await client.get("/console/queue")
    assert queue.status == 200
    return CSRF.search(await queue.text()).group(1)


@pytest.fixture
async def console(aiohttp_client, tmp_path, gateway_clock):
    app = create_app(load(None, environ=console_env(tmp_path), flags={}), clock=gateway_clock)
    client = await aiohttp_client(app)
    return client
