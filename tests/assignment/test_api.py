"""Agents, presence, ticket status, stats, /readyz and /metrics through a real app."""

from __future__ import annotations

import pytest

from gateway import keys
from gateway.app import create_app
from gateway.assignment import ASSIGNMENT
from tests.assignment.conftest import Clock, local
from tests.gateway.conftest import AUTH, drain, make_config

# Synthetic directory: one email agent with room for one ticket, one for chats.
DIRECTORY = """
calendars:
  cn-office:
    hours: {weekdays: [09:00-12:00, 13:30-18:00]}
agents:
  - {id: a-one, name: One, presence: {presence}, capacity: {email: 1}}
  - {id: a-chat, name: Chat, presence: online, capacity: {chat: 5}}
sla_policies:
  - {id: standard, calendar: cn-office, targets: {first_response: 2h, resolution: 24h}}
"""


async def _gateway(aiohttp_client, tmp_path, presence: str = "online", now=local(2026, 3, 2, 9, 0)):
    path = tmp_path / "directory.yaml"
    path.write_text(DIRECTORY.replace("{presence}", presence), encoding="utf-8")
    clock = Clock(now)
    app = create_app(make_config(tmp_path, directory=str(path)), clock=clock)
    assert app[ASSIGNMENT].clock is clock and app[keys.WORKER].pipeline.clock is clock
    return await aiohttp_client(app), app


async def _message(client, app, ext: str, sender: str) -> dict:
    body = {"external_id": ext, "sender": {"kind": "email", "value": sender}, "text": "我的发票有问题"}
    r = await client.post("/channels/api/messages", json=body, headers=AUTH)
    assert r.status == 202
    await drain(app)
    return await (await client.get(f"/api/v1/journal/{(await r.json())['journal_id']}", headers=AUTH)).json()


async def _ticket(client, ticket_id: str) -> dict:
    return await (await client.get(f"/api/v1/tickets/{ticket_id}", headers=AUTH)).json()


async def test_new_ticket_is_assigned_and_a_follow_up_keeps_its_assignee(aiohttp_client, tmp_path):
    client, app = await _gateway(aiohttp_client, tmp_path)
    first = await _message(client, app, "m1", "wang@example.cn")
    assert (await _ticket(client, first["ticket_id"]))["assignee"] == "a-one"
    again = await _message(client, app, "m2", "wang@example.cn")
    assert again["ticket_id"] == first["ticket_id"]
    tl = await (await client.get(f"/api/v1/tickets/{first['ticket_id']}/timeline", headers=AUTH)).json()
    assignments = [e for e in tl["items"] if e["kind"] == "assignment"]
    assert len(assignments) == 1 and assignments[0]["data"]["agent"] == "a-one"
    ticket = await _ticket(client, first["ticket_id"])
    assert ticket["assignee"] == "a-one" and ticket["sla"]["policy"] == "standard"
    assert ticket["sla"]["first_response_due"] == "2026-03-02T11:00:00+08:00"  # in the calendar's zone


async def test_solving_a_ticket_assigns_the_queued_one_at_once(aiohttp_client, tmp_path):
    client, app = await _gateway(aiohttp_client, tmp_path)
    first = await _message(client, app, "m1", "a@example.cn")
    second = await _message(client, app, "m2", "b@example.cn")
    assert (await _ticket(client, second["ticket_id"])).get("assignee") is None

    r = await client.post(f"/api/v1/tickets/{first['ticket_id']}/status", json={"status": "solved"}, headers=AUTH)
    assert r.status == 200
    body = await r.json()
    assert body["status"] == "solved" and body["changed"] is True and body["solved_at"]
    assert (await _ticket(client, second["ticket_id"]))["assignee"] == "a-one"

    r = await client.post(f"/api/v1/tickets/{first['ticket_id']}/status", json={"status": "closed"}, headers=AUTH)
    assert r.status == 200
    r = await client.post(f"/api/v1/tickets/{first['ticket_id']}/status", json={"status": "open"}, headers=AUTH)
    assert r.status == 409 and r.content_type == "application/problem+json"
    problem = await r.json()
    assert problem["title"] == "Invalid status transition" and problem["status_from"] == "closed"
    r = await client.post(f"/api/v1/tickets/{first['ticket_id']}/status", json={"status": "new"}, headers=AUTH)
    assert r.status == 400 and (await r.json())["field"] == "$.status"
    r = await client.post("/api/v1/tickets/NOPE/status", json={"status": "open"}, headers=AUTH)
    assert r.status == 404


async def test_presence_online_drains_the_queue(aiohttp_client, tmp_path):
    client, app = await _gateway(aiohttp_client, tmp_path, presence="offline")
    queued = await _message(client, app, "m1", "c@example.cn")
    assert (await _ticket(client, queued["ticket_id"])).get("assignee") is None

    r = await client.put("/api/v1/agents/a-one/presence", json={"presence": "online"}, headers=AUTH)
    assert r.status == 200
    agent = await r.json()
    assert agent["presence"] == "online" and agent["load"] == {"email": 1} and agent["returned"] == []
    assert agent["tickets"] == [queued["ticket_id"]]
    assert (await _ticket(client, queued["ticket_id"]))["assignee"] == "a-one"

    agents = await (await client.get("/api/v1/agents", headers=AUTH)).json()
    assert [a["id"] for a in agents["items"]] == ["a-chat", "a-one"]
    assert (await client.get("/api/v1/agents/a-one", headers=AUTH)).status == 200
    assert (await client.get("/api/v1/agents/nobody", headers=AUTH)).status == 404
    r = await client.put("/api/v1/agents/a-one/presence", json={"presence": "busy"}, headers=AUTH)
    assert r.status == 400 and r.content_type == "application/problem+json"
    r = await client.put("/api/v1/agents/nobody/presence", json={"presence": "away"}, headers=AUTH)
    assert r.status == 404
    assert (await client.get("/api/v1/agents")).status == 401


@pytest.mark.parametrize("year", [2027])
async def test_stats_readyz_and_metrics(aiohttp_client, tmp_path, year, cn_holidays_until_2026):
    # a year the holiday data does not cover: the calendar falls back to weekly hours, and says so
    client, app = await _gateway(aiohttp_client, tmp_path, now=local(year, 1, 4, 9, 0))
    done = await _message(client, app, "m1", "d@example.cn")
    app[ASSIGNMENT].clock.advance(hours=3)
    await client.post(f"/api/v1/tickets/{done['ticket_id']}/status", json={"status": "solved"}, headers=AUTH)
    await app[ASSIGNMENT].tick()

    ready = await (await client.get("/readyz")).json()
    assert ready["detail"]["assignment"]["calendar_fallback_years"] == {"cn-office": [year]}

    stats = await (await client.get("/api/v1/stats", headers=AUTH)).json()
    assert stats["resolution"]["count"] == 1 and stats["resolution"]["avg_s"] == 3 * 3600
    assert stats["sla_breaches"] == {"standard": {"first_response": 1}}  # due at 11:00, nobody answered
    assert stats["calendar_fallback_years"] == {"cn-office": [year]}

    text = (await (await client.get("/metrics")).read()).decode()
    assert f'omnigate_calendar_fallback_year{{calendar="cn-office",year="{year}"}} 1.0' in text
    assert 'omnigate_sla_breaches_total{policy="standard",target="first_response"} 1.0' in text
    assert "omnigate_resolution_seconds_count 1.0" in text and "omnigate_first_response_seconds_count 0.0" in text


async def test_agents_through_the_api_raised_capacity_takes_the_queue(aiohttp_client, tmp_path):
    client, app = await _gateway(aiohttp_client, tmp_path)
    first = await _message(client, app, "c1", "one@example.cn")
    second = await _message(client, app, "c2", "two@example.cn")
    assert (await _ticket(client, first["ticket_id"]))["assignee"] == "a-one"
    assert (await _ticket(client, second["ticket_id"])).get("assignee") is None  # a-one is full (email 1)
    r = await client.put("/api/v1/agents/a-one", headers=AUTH,
                         json={"name": "One", "capacity": {"email": 2}, "skills": {"billing": 2}})
    body = await r.json()
    assert r.status == 200 and body["capacity"] == {"email": 2} and body["assigned"] == [second["ticket_id"]]
    assert (await _ticket(client, second["ticket_id"]))["assignee"] == "a-one"
    r = await client.put("/api/v1/agents/new-one", headers=AUTH,
                         json={"name": "New", "teams": ["nosuch"], "capacity": {"email": 1}})
    assert r.status == 400 and (await r.json())["field"] == "$.teams[0]"
    r = await client.put("/api/v1/agents/new-one", headers=AUTH, json={"name": "New", "capacity": {"fax": 1}})
    assert r.status == 400 and "capacity class" in (await r.json())["detail"]
    r = await client.put("/api/v1/agents/new-one", headers=AUTH, json={"name": "New", "skills": {"billing": 0}})
    assert r.status == 400 and (await r.json())["field"] == "$.skills"
    r = await client.put("/api/v1/agents/new-one", headers=AUTH, json={"name": "New", "capacity": {"email": -1}})
    assert r.status == 400 and (await r.json())["field"] == "$.capacity"
    r = await client.put("/api/v1/agents/new-one", headers=AUTH, json={"name": "New", "capacity": {"email": 3}})
    assert r.status == 200 and (await r.json())["presence"] == "offline"
    agents = {a["id"] for a in (await (await client.get("/api/v1/agents", headers=AUTH)).json())["items"]}
    assert agents == {"a-one", "a-chat", "new-one"}


async def test_the_directory_keeps_api_agents_across_a_restart(aiohttp_client, tmp_path):
    client, app = await _gateway(aiohttp_client, tmp_path)
    assert (await client.put("/api/v1/agents/api-made", headers=AUTH, json={"name": "API"})).status == 200
    await client.close()
    client, app = await _gateway(aiohttp_client, tmp_path)
    agents = {a["id"] for a in (await (await client.get("/api/v1/agents", headers=AUTH)).json())["items"]}
    assert agents == {"a-one", "a-chat", "api-made"}
