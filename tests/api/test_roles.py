"""Roles and tokens through a running app: every boundary the issue names."""

from __future__ import annotations

import asyncio

from gateway import keys
from gateway.auth import AUTH
from tests.api.conftest import start

PROBLEM = "application/problem+json"


async def _get(api, path: str, who: str):
    return await api.client.get(path, headers=api.h(who))


async def test_no_token_and_a_bad_token_are_401_problems(api):
    for headers in ({}, {"Authorization": "Bearer og_nope"}, {"Authorization": "Basic abc"},
                    {"Authorization": "Bearer " + "x" * 50}):
        r = await api.client.get("/api/v1/tickets", headers=headers)
        assert r.status == 401 and r.content_type == PROBLEM
        assert (await r.json())["status"] == 401


async def test_an_agent_reads_tickets_of_their_team_and_their_own_only(api):
    billing = await api.ticket("m1", "zhao@example.cn", "billing")
    support = await api.ticket("m2", "qian@example.cn", "support")
    mine = await api.ticket("m3", "sun@example.cn", "billing", assignee="a-sup")
    assert (await _get(api, f"/api/v1/tickets/{billing['id']}", "a-bill")).status == 200
    r = await _get(api, f"/api/v1/tickets/{billing['id']}", "a-sup")
    assert r.status == 403 and r.content_type == PROBLEM
    assert (await _get(api, f"/api/v1/tickets/{billing['number']}/timeline", "a-sup")).status == 403
    assert (await _get(api, f"/api/v1/tickets/{mine['id']}", "a-sup")).status == 200  # assigned to them
    listed = {t["id"] for t in (await (await _get(api, "/api/v1/tickets", "a-sup")).json())["items"]}
    assert listed == {support["id"], mine["id"]}
    listed = {t["id"] for t in (await (await _get(api, "/api/v1/tickets", "a-bill")).json())["items"]}
    assert listed == {billing["id"], mine["id"]}
    # replies and notes only on tickets they can open
    r = await api.client.post(f"/api/v1/tickets/{billing['id']}/replies", json={"text": "hi", "internal": True},
                              headers=api.h("a-sup"))
    assert r.status == 403


async def test_contact_timeline_shows_other_teams_tickets_as_summary_lines(api):
    billing = await api.ticket("m1", "li@example.cn", "billing")
    j = await api.message("m2", "li@example.cn", text="another question")  # same ticket (follow-up)
    assert j["ticket_id"] == billing["id"]
    r = await api.client.post(f"/api/v1/tickets/{billing['id']}/replies",
                              json={"text": "secret billing note", "internal": True}, headers=api.h("a-bill"))
    assert r.status == 201
    contact = billing["contact_id"]
    full = await (await _get(api, f"/api/v1/contacts/{contact}/timeline", "a-bill")).json()
    assert any(e.get("text") == "secret billing note" for e in full["items"])
    seen = await (await _get(api, f"/api/v1/contacts/{contact}/timeline", "a-sup")).json()
    assert len(seen["items"]) == len(full["items"])  # the history stays whole
    for item in seen["items"]:
        if item.get("ticket_id") == billing["id"]:
            assert item["restricted"] is True and item["kind"] == "restricted"
            assert item["ticket_number"] == billing["number"] and item["team"] == "billing"
            assert item["ticket_status"] and "text" not in item and "data" not in item and "subject" not in item
    view = await (await _get(api, f"/api/v1/contacts/{contact}", "a-sup")).json()
    [t] = view["tickets"]
    assert t["restricted"] is True and "subject" not in t


async def test_agents_do_not_see_sensitive_attributes(api):
    j = await api.message("m1", "+86 138 0013 8000", kind="phone")
    contact = j["contact_id"]
    r = await api.client.patch(f"/api/v1/contacts/{contact}", json={"attributes": {
        "id_number": "110101199003071234", "address": "北京市", "language": "zh"}}, headers=api.h("admin"))
    assert r.status == 200
    assert (await r.json())["attributes"]["id_number"] == "110101199003071234"
    as_agent = await (await _get(api, f"/api/v1/contacts/{contact}", "a-bill")).json()
    assert as_agent["attributes"] == {"language": "zh"}  # omitted, not blanked
    found = await (await _get(api, "/api/v1/contacts?kind=phone&value=138%200013%208000", "a-bill")).json()
    [c] = found["items"]
    assert c["id"] == contact and c["attributes"] == {"language": "zh"}
    as_lead = await (await _get(api, f"/api/v1/contacts/{contact}", "l-bill")).json()
    assert as_lead["attributes"]["address"] == "北京市"
    r = await api.client.patch(f"/api/v1/contacts/{contact}", json={"attributes": {"address": "x"}},
                               headers=api.h("a-bill"))
    assert r.status == 403
    r = await api.client.patch(f"/api/v1/contacts/{contact}", json={"attributes": {"language": None}},
                               headers=api.h("a-bill"))
    assert r.status == 200 and "language" not in (await r.json()).get("attributes", {})
    audit = await (await _get(api, f"/api/v1/contacts/{contact}/audit", "l-bill")).json()
    assert [a["action"] for a in audit["items"]] == ["contact.attributes", "contact.attributes"]
    assert audit["items"][1]["actor"] == "a-bill" and "110101" not in str(audit)
    assert (await _get(api, f"/api/v1/contacts/{contact}/audit", "a-bill")).status == 403


async def test_journal_replay_is_for_admins_only(api):
    j = await api.message("m1", "zhou@example.cn")
    for who in ("a-bill", "l-bill"):
        r = await api.client.post(f"/api/v1/journal/{j['id']}/replay", headers=api.h(who))
        assert r.status == 403 and r.content_type == PROBLEM
    assert (await _get(api, f"/api/v1/journal/{j['id']}", "a-bill")).status == 403
    assert (await _get(api, "/api/v1/journal?status=failed", "l-bill")).status == 200
    assert (await api.client.post(f"/api/v1/journal/{j['id']}/replay", headers=api.h("admin"))).status == 202


async def test_a_lead_reassigns_within_their_team_only(api):
    billing = await api.ticket("m1", "wu@example.cn", "billing")
    support = await api.ticket("m2", "zheng@example.cn", "support")
    url = f"/api/v1/tickets/{billing['id']}"
    r = await api.client.patch(url, json={"assignee": "a-bill2", "reason": "Bill is out"}, headers=api.h("l-bill"))
    assert r.status == 200 and (await r.json())["assignee"] == "a-bill2"
    r = await api.client.patch(url, json={"assignee": "a-sup"}, headers=api.h("l-bill"))
    assert r.status == 403
    r = await api.client.patch(url, json={"team": "support"}, headers=api.h("l-bill"))
    assert r.status == 403
    r = await api.client.patch(f"/api/v1/tickets/{support['id']}", json={"assignee": "a-bill"},
                               headers=api.h("l-bill"))
    assert r.status == 403
    # an agent changes the status of a ticket they can open, nothing else
    r = await api.client.patch(url, json={"priority": "urgent"}, headers=api.h("a-bill"))
    assert r.status == 403
    r = await api.client.patch(url, json={"status": "pending"}, headers=api.h("a-bill"))
    assert r.status == 200 and (await r.json())["status"] == "pending"
    # every change is on the timeline with who and why
    tl = await (await _get(api, f"{url}/timeline?kind=update", "l-bill")).json()
    [team_set, reassigned, pending] = tl["items"]
    assert team_set["data"]["actor"] == "api"  # the bootstrap token acts as X-Omnigate-Actor, default "api"
    assert reassigned["data"]["actor"] == "l-bill" and reassigned["data"]["reason"] == "Bill is out"
    assert reassigned["data"]["changes"] == {"assignee": {"from": None, "to": "a-bill2"}}
    assert pending["data"]["actor"] == "a-bill"
    rows = api.app[keys.STORE]._reader().execute(
        "SELECT topic, payload FROM outbox WHERE ticket_id = ? ORDER BY seq", (billing["id"],)).fetchall()
    topics = [t for t, _ in rows]
    assert {"ticket.updated", "ticket.assigned", "ticket.status_changed"} <= set(topics)
    assert any('"actor":"l-bill"' in p for t, p in rows if t == "ticket.assigned")


async def test_if_match_refuses_a_stale_version_even_under_concurrency(api):
    t = await api.ticket("m1", "feng@example.cn", "billing")
    r = await _get(api, f"/api/v1/tickets/{t['id']}", "l-bill")
    tag = r.headers["ETag"]
    assert tag == f'"{(await r.json())["version"]}"'

    async def patch(body):
        return await api.client.patch(f"/api/v1/tickets/{t['id']}", json=body,
                                      headers={**api.h("l-bill"), "If-Match": tag})

    first, second = await asyncio.gather(patch({"priority": "high"}), patch({"priority": "low"}))
    assert sorted([first.status, second.status]) == [200, 412]
    winner, loser = (first, second) if first.status == 200 else (second, first)
    assert loser.content_type == PROBLEM and loser.headers["ETag"] == winner.headers["ETag"]
    now = await (await _get(api, f"/api/v1/tickets/{t['id']}", "l-bill")).json()
    assert now["priority"] == (await winner.json())["priority"]
    # with the fresh ETag the second edit goes through
    r = await api.client.patch(f"/api/v1/tickets/{t['id']}", json={"priority": "low"},
                               headers={**api.h("l-bill"), "If-Match": winner.headers["ETag"]})
    assert r.status == 200


async def test_revoking_a_token_takes_effect_at_once(api):
    token = await api.token("ops", "admin")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await api.client.get("/api/v1/tickets", headers=headers)).status == 200  # now cached
    listed = await (await api.client.get("/api/v1/tokens?agent_id=ops", headers=api.h("admin"))).json()
    [info] = listed["items"]
    assert token not in str(listed) and info["last_used_at"]
    r = await api.client.delete(f"/api/v1/tokens/{info['id']}", headers=api.h("admin"))
    assert r.status == 200 and (await r.json())["revoked_at"]
    r = await api.client.get("/api/v1/tickets", headers=headers)
    assert r.status == 401 and "revoked" in (await r.json())["detail"]


async def test_tokens_through_the_api_and_their_expiry(api):
    assert (await _get(api, "/api/v1/tokens", "l-bill")).status == 403
    r = await api.client.post("/api/v1/tokens", json={"agent_id": "a-bill", "role": "agent", "expires_in": "1h"},
                              headers=api.h("admin"))
    assert r.status == 201
    created = await r.json()
    assert created["token"].startswith("og_") and len(created["token"]) >= 43 + 3
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert (await api.client.get("/api/v1/tickets", headers=headers)).status == 200
    api.clock.advance(hours=2)
    r = await api.client.get("/api/v1/tickets", headers=headers)
    assert r.status == 401 and "expired" in (await r.json())["detail"]
    r = await api.client.post("/api/v1/tokens", json={"agent_id": "nobody", "role": "agent"}, headers=api.h("admin"))
    assert r.status == 400 and (await r.json())["field"] == "$.agent_id"
    r = await api.client.post("/api/v1/tokens", json={"agent_id": "a-bill", "role": "root"}, headers=api.h("admin"))
    assert r.status == 400 and (await r.json())["field"] == "$.role"


async def test_the_rate_limit_answers_429_with_retry_after_per_token(aiohttp_client, tmp_path):
    api = await start(aiohttp_client, tmp_path, rest={"rate_limit_per_minute": 60, "rate_limit_burst": 2})
    for _ in range(2):
        assert (await _get(api, "/api/v1/agents", "a-bill")).status == 200
    r = await _get(api, "/api/v1/agents", "a-bill")
    assert r.status == 429 and r.content_type == PROBLEM and r.headers["Retry-After"] == "1"
    assert (await _get(api, "/api/v1/agents", "a-sup")).status == 200  # another token has its own bucket
    api.mono.t += 1.0  # one token a second comes back
    assert (await _get(api, "/api/v1/agents", "a-bill")).status == 200
    assert (await _get(api, "/api/v1/agents", "a-bill")).status == 429


async def test_note_mentions_are_recorded_and_emitted(api):
    t = await api.ticket("m1", "chen@example.cn", "billing")
    text = "@a-bill2 can you check? cc @l-bill. Not @nobody, not mail@a-sup.example"
    r = await api.client.post(f"/api/v1/tickets/{t['id']}/replies", json={"text": text, "internal": True},
                              headers=api.h("a-bill"))
    assert r.status == 201
    note = await r.json()
    assert note["data"]["mentions"] == ["a-bill2", "l-bill"] and note["data"]["author"] == "a-bill"
    rows = api.app[keys.STORE]._reader().execute(
        "SELECT payload FROM outbox WHERE topic = 'note.mentioned' ORDER BY seq").fetchall()
    assert [r[0].count('"agent_id":"a-bill2"') + r[0].count('"agent_id":"l-bill"') for r in rows] == [1, 1]
    mentions = await (await _get(api, "/api/v1/agents/a-bill2/mentions", "a-bill2")).json()
    [m] = mentions["items"]
    assert (m["timeline_id"], m["by"], m["ticket_id"]) == (note["id"], "a-bill", t["id"])
    assert (await _get(api, "/api/v1/agents/a-bill2/mentions", "a-sup")).status == 403
    # a per-agent token cannot write as someone else
    r = await api.client.post(f"/api/v1/tickets/{t['id']}/replies",
                              json={"text": "x", "internal": True, "author": "a-bill2"}, headers=api.h("a-bill"))
    assert r.status == 403


async def test_presence_is_an_agents_own(api):
    r = await api.client.put("/api/v1/agents/a-bill/presence", json={"presence": "away"}, headers=api.h("a-bill"))
    assert r.status == 200 and (await r.json())["returned"] == []
    r = await api.client.put("/api/v1/agents/a-sup/presence", json={"presence": "away"}, headers=api.h("a-bill"))
    assert r.status == 403
    r = await api.client.put("/api/v1/agents/a-bill/presence", json={"presence": "online"}, headers=api.h("l-bill"))
    assert r.status == 200
    r = await api.client.put("/api/v1/agents/a-sup/presence", json={"presence": "online"}, headers=api.h("l-bill"))
    assert r.status == 403


async def test_a_revoked_token_through_the_store_is_refused_once_the_cache_is_cleared(api):
    """``omnigate tokens revoke`` writes the store; the daemon's cache forgets within token_cache_s."""
    token = await api.token("cli-made", "admin")
    headers = {"Authorization": f"Bearer {token}"}
    assert (await api.client.get("/api/v1/agents", headers=headers)).status == 200
    [info] = await api.app[keys.STORE].token_list("cli-made")
    await api.app[keys.STORE].token_revoke(info.id, actor="cli", now=api.clock())
    api.mono.t += api.app[AUTH].config.token_cache_s + 0.1
    assert (await api.client.get("/api/v1/agents", headers=headers)).status == 401


async def test_moving_a_ticket_to_another_team_leaves_its_assignee_if_not_a_member(api):
    t = await api.ticket("m1", "move@example.cn", "billing", assignee="a-bill")
    r = await api.client.patch(f"/api/v1/tickets/{t['id']}", json={"team": "support", "reason": "wrong queue"},
                               headers=api.h("admin"))
    assert r.status == 200
    moved = await r.json()
    assert moved["team"] == "support" and moved.get("assignee") != "a-bill"
    bill = await (await api.client.get("/api/v1/agents/a-bill", headers=api.h("admin"))).json()
    assert t["id"] not in bill.get("tickets", [])
    tl = await (await api.client.get(f"/api/v1/tickets/{t['id']}/timeline?kind=update&start=end&limit=1",
                                     headers=api.h("admin"))).json()
    assert tl["items"][0]["data"]["changes"]["assignee"] == {"from": "a-bill", "to": None}


async def test_assigning_a_solved_ticket_names_the_agent_but_holds_no_capacity(api):
    t = await api.ticket("m1", "done@example.cn", "billing", status="solved")
    r = await api.client.patch(f"/api/v1/tickets/{t['id']}", json={"assignee": "a-bill"}, headers=api.h("admin"))
    assert r.status == 200 and (await r.json())["assignee"] == "a-bill"
    bill = await (await api.client.get("/api/v1/agents/a-bill", headers=api.h("admin"))).json()
    assert t["id"] not in bill.get("tickets", []) and not bill.get("load")
