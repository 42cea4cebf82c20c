"""Ticket lists (filters, keyset cursors), contact search, timeline paging and bad input."""

from __future__ import annotations

import base64
import subprocess
import sys

import msgspec

from gateway import keys
from gateway.api_query import make_cursor

PROBLEM = "application/problem+json"


async def _json(r, status: int = 200):
    assert r.status == status, await r.text()
    return await r.json()


async def test_filters_sort_and_a_cursor_stable_under_inserts(api):
    c = api.client
    a = await api.ticket("m1", "a@example.cn", "billing", priority="low")
    b = await api.ticket("m2", "b@example.cn", "billing", priority="urgent", tags=["vip"])
    d = await api.ticket("m3", "d@example.cn", "support", priority="high")
    api.clock.advance(minutes=5)
    e = await api.ticket("m4", "e@example.cn", "billing", priority="urgent", assignee="a-bill")
    page = await _json(await c.get("/api/v1/tickets", headers=api.h("admin")))
    assert [t["id"] for t in page["items"]] == [b["id"], e["id"], d["id"], a["id"]]  # priority, then age
    q = "/api/v1/tickets?team=billing&limit=2"
    first = await _json(await c.get(q, headers=api.h("admin")))
    assert [t["id"] for t in first["items"]] == [b["id"], e["id"]] and first["next_cursor"]
    # a ticket inserted meanwhile takes its place by its sort key: after the cursor it is on the next page
    f = await api.ticket("m5", "f@example.cn", "billing", priority="urgent")
    second = await _json(await c.get(f"{q}&cursor={first['next_cursor']}", headers=api.h("admin")))
    assert [t["id"] for t in second["items"]] == [f["id"], a["id"]] and second["next_cursor"] is None
    # newest first: tickets changed after the first page was read do not shift or repeat the next one
    q = "/api/v1/tickets?sort=updated"
    first = await _json(await c.get(f"{q}&limit=2", headers=api.h("admin")))
    api.clock.advance(minutes=1)
    g = await api.ticket("m6", "g@example.cn", "billing")
    rest = await _json(await c.get(f"{q}&limit=10&cursor={first['next_cursor']}", headers=api.h("admin")))
    seen = [t["id"] for t in first["items"] + rest["items"]]
    assert sorted(seen) == sorted([a["id"], b["id"], d["id"], e["id"], f["id"]]) and g["id"] not in seen
    # the same cursor on another query is refused, not misread
    r = await c.get(f"/api/v1/tickets?team=support&limit=2&cursor={first['next_cursor']}", headers=api.h("admin"))
    assert r.status == 400 and r.content_type == PROBLEM and (await r.json())["field"] == "cursor"
    r = await c.get("/api/v1/tickets?cursor=" + make_cursor("0" * 16, [0, 0, "x"]), headers=api.h("admin"))
    assert r.status == 400 and (await r.json())["field"] == "cursor"
    for bad in ("!!!", base64.urlsafe_b64encode(b"[1,2]").decode(), "A" * 600):
        r = await c.get(f"/api/v1/tickets?cursor={bad}", headers=api.h("admin"))
        assert r.status == 400 and (await r.json())["field"] == "cursor", bad

    async def ids(query: str, who: str = "admin") -> set[str]:
        return {t["id"] for t in (await _json(await c.get(f"/api/v1/tickets?{query}", headers=api.h(who))))["items"]}

    assert await ids("tag=vip") == {b["id"]}
    assert await ids("priority=urgent,high&team=billing,support") >= {b["id"], e["id"], d["id"]}
    assert await ids("assignee=a-bill") == {e["id"]}
    assert await ids("assignee=me", "a-bill") == {e["id"]}
    assert e["id"] not in await ids("assignee=none")
    assert await ids("channel=api&team=support") == {d["id"]}
    assert await ids(f"contact={a['contact_id']}") == {a["id"]}
    assert await ids("created_after=2026-03-02T02:03:00Z&team=billing,support") >= {e["id"]}
    assert a["id"] not in await ids("created_after=2026-03-02T02:03:00Z")
    assert await ids("created_before=2026-03-02T02:03:00%2B00:00") == {a["id"], b["id"], d["id"]}
    by_updated = await _json(await c.get("/api/v1/tickets?sort=updated&limit=1", headers=api.h("admin")))
    nxt = await _json(await c.get(f"/api/v1/tickets?sort=updated&limit=1&cursor={by_updated['next_cursor']}",
                                  headers=api.h("admin")))
    assert by_updated["items"][0]["updated_at"] >= nxt["items"][0]["updated_at"]


async def test_sla_breaching_within_lists_tickets_by_their_breach_timer(api):
    t = await api.ticket("m1", "sla@example.cn", "billing")  # standard: first response 2h (business hours)
    assert await _ids(api, "sla_breaching_within=30") == set()
    assert await _ids(api, "sla_breaching_within=180") == {t["id"]}
    assert await _ids(api, "sla_breached=false") == {t["id"]}
    assert await _ids(api, "sla_breached=true") == set()


async def _ids(api, query):
    r = await api.client.get(f"/api/v1/tickets?{query}", headers=api.h("admin"))
    return {t["id"] for t in (await _json(r))["items"]}


async def test_bad_filters_and_bodies_name_the_parameter_or_field(api):
    c = api.client
    t = await api.ticket("m1", "x@example.cn", "billing")
    for query, field in (("status=opened", "status"), ("limit=0", "limit"), ("limit=abc", "limit"),
                         ("sort=oldest", "sort"), ("created_after=yesterday", "created_after"),
                         ("updated_before=2026-13-01", "updated_before"),
                         ("sla_breaching_within=-1", "sla_breaching_within"), ("colour=red", "colour"),
                         ("tag=a&tag=b", "tag")):
        r = await c.get(f"/api/v1/tickets?{query}", headers=api.h("admin"))
        assert r.status == 400 and r.content_type == PROBLEM, query
        assert (await r.json())["field"] == field, query
    url = f"/api/v1/tickets/{t['id']}"
    r = await c.patch(url, json={"priority": "urgent", "colour": "red"}, headers=api.h("admin"))
    assert r.status == 400 and (await r.json())["field"] == "$.colour"
    r = await c.patch(url, json={"status": "new"}, headers=api.h("admin"))
    assert r.status == 400 and (await r.json())["field"] == "$.status"
    r = await c.patch(url, json={}, headers=api.h("admin"))
    assert r.status == 400 and (await r.json())["field"] == "$"  # nothing to change: the body as a whole
    r = await c.patch(url, json={"team": "nope"}, headers=api.h("admin"))
    assert r.status == 400 and (await r.json())["field"] == "$.team"
    r = await c.patch(url, json={"assignee": "nobody"}, headers=api.h("admin"))
    assert r.status == 400 and (await r.json())["field"] == "$.assignee"
    r = await c.patch(url, json={"priority": "high"}, headers={**api.h("admin"), "If-Match": "yesterday"})
    assert r.status == 400 and (await r.json())["field"] == "If-Match"
    r = await c.get("/api/v1/tickets/99999999999999999999999", headers=api.h("admin"))
    assert r.status == 404
    r = await c.get("/api/v1/no-such-thing", headers=api.h("admin"))
    assert r.status == 404 and r.content_type == PROBLEM
    r = await c.delete(url, headers=api.h("admin"))
    assert r.status == 405 and r.content_type == PROBLEM and "PATCH" in r.headers["Allow"]
    # closing, then reopening a closed ticket: a 409 naming the transition
    assert (await c.patch(url, json={"status": "closed"}, headers=api.h("admin"))).status == 200
    r = await c.patch(url, json={"status": "open"}, headers=api.h("admin"))
    assert r.status == 409 and r.content_type == PROBLEM


async def test_contact_search_normalizes_as_ingest_does(api):
    j = await api.message("m1", "Li.Na@Example.CN")
    p = await api.message("m2", "+86 139-1234-5678", kind="phone")
    c = api.client

    async def search(q: str, who: str = "a-bill") -> list[str]:
        return [x["id"] for x in (await _json(await c.get(f"/api/v1/contacts?{q}", headers=api.h(who))))["items"]]

    assert await search("kind=email&value=li.na%40example.cn") == [j["contact_id"]]
    assert await search("kind=email&value=%3CLI.NA%40EXAMPLE.CN%3E") == [j["contact_id"]]
    assert await search("kind=phone&value=13912345678") == [p["contact_id"]]
    assert await search("kind=phone&value=008613912345678") == [p["contact_id"]]
    assert await search("kind=phone&value=13900000000") == []
    r = await c.get("/api/v1/contacts?kind=email&value=not-an-email", headers=api.h("a-bill"))
    assert r.status == 400 and (await r.json())["field"] == "value"
    r = await c.get("/api/v1/contacts?kind=fax&value=1", headers=api.h("a-bill"))
    assert r.status == 400 and (await r.json())["field"] == "kind"
    r = await c.get("/api/v1/contacts?kind=phone", headers=api.h("a-bill"))
    assert r.status == 400 and (await r.json())["field"] == "value"


async def test_contact_search_by_name_pages(api):
    store = api.app[keys.STORE]
    for i in range(3):
        await api.message(f"n{i}", f"n{i}@example.cn")
    ids = [r[0] for r in store._reader().execute("SELECT id FROM contacts ORDER BY id")]
    for i, cid in enumerate(ids):
        store._reader()  # noqa: B018 - names are set through the writer below
        await store._write(lambda conn, cid=cid, i=i: conn.execute(
            "UPDATE contacts SET name = ? WHERE id = ?", (f"王{i} 100%_x", cid)))
    first = await _json(await api.client.get("/api/v1/contacts?name=100%25_&limit=2", headers=api.h("a-bill")))
    assert len(first["items"]) == 2 and first["next_cursor"]
    rest = await _json(await api.client.get(f"/api/v1/contacts?name=100%25_&limit=2&cursor={first['next_cursor']}",
                                            headers=api.h("a-bill")))
    assert [x["id"] for x in first["items"] + rest["items"]] == ids
    none = await _json(await api.client.get("/api/v1/contacts?name=%25%25", headers=api.h("a-bill")))
    assert none["items"] == []  # % is literal, not a wildcard


async def test_timeline_pages_both_ways_and_filters_by_kind(api):
    t = await api.ticket("m1", "tl@example.cn", "billing")
    for i in range(4):
        r = await api.client.post(f"/api/v1/tickets/{t['id']}/replies", json={"text": f"note {i}", "internal": True},
                                  headers=api.h("a-bill"))
        assert r.status == 201
    url = f"/api/v1/tickets/{t['id']}/timeline"
    notes = await _json(await api.client.get(f"{url}?kind=note&limit=2", headers=api.h("a-bill")))
    assert [e["text"] for e in notes["items"]] == ["note 0", "note 1"] and notes["prev_cursor"] is None
    more = await _json(await api.client.get(f"{url}?kind=note&limit=2&cursor={notes['next_cursor']}",
                                            headers=api.h("a-bill")))
    assert [e["text"] for e in more["items"]] == ["note 2", "note 3"] and more["next_cursor"] is None
    back = await _json(await api.client.get(f"{url}?kind=note&limit=2&cursor={more['prev_cursor']}",
                                            headers=api.h("a-bill")))
    assert [e["text"] for e in back["items"]] == ["note 0", "note 1"]
    newest = await _json(await api.client.get(f"{url}?kind=note&limit=3&start=end", headers=api.h("a-bill")))
    assert [e["text"] for e in newest["items"]] == ["note 1", "note 2", "note 3"] and newest["prev_cursor"]
    everything = await _json(await api.client.get(f"{url}?limit=500", headers=api.h("a-bill")))
    assert {e["kind"] for e in everything["items"]} >= {"message_in", "note", "update"}
    r = await api.client.get(f"{url}?kind=note&cursor={notes['next_cursor']}", headers=api.h("a-bill"))
    assert r.status == 200  # page size is not part of the query
    r = await api.client.get(f"{url}?kind=message_in&cursor={notes['next_cursor']}", headers=api.h("a-bill"))
    assert r.status == 400 and (await r.json())["field"] == "cursor"
    r = await api.client.get(f"{url}?kind=nothing", headers=api.h("a-bill"))
    assert r.status == 400 and (await r.json())["field"] == "kind"


async def test_merge_needs_a_lead_and_is_in_the_audit(api):
    a = await api.message("m1", "one@example.cn")
    b = await api.message("m2", "two@example.cn")
    url = f"/api/v1/contacts/{b['contact_id']}/merge"
    r = await api.client.post(url, json={"into": a["contact_id"], "reason": "same person"}, headers=api.h("a-bill"))
    assert r.status == 403
    r = await api.client.post(url, json={"into": a["contact_id"], "reason": "same person"}, headers=api.h("l-bill"))
    assert r.status == 200
    audit = await _json(await api.client.get(f"/api/v1/contacts/{a['contact_id']}/audit", headers=api.h("l-bill")))
    [merge] = audit["items"]
    assert (merge["action"], merge["actor"], merge["data"]["reason"]) == ("contact.merge", "l-bill", "same person")
    r = await api.client.post(f"/api/v1/contacts/{b['contact_id']}/unmerge", headers=api.h("l-bill"))
    assert r.status == 200
    audit = await _json(await api.client.get(f"/api/v1/contacts/{b['contact_id']}/audit", headers=api.h("admin")))
    assert [x["action"] for x in audit["items"]] == ["contact.merge", "contact.unmerge"]


def test_tokens_cli_works_offline_on_the_data_folder(tmp_path):
    env_dir = ["--data-dir", str(tmp_path / "data")]
    cmd = [sys.executable, "-m", "gateway.cli", "tokens"]
    made = subprocess.run([*cmd, "create", *env_dir, "--agent", "ops", "--role", "admin", "--expires", "90d"],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("og_") and len(token) == 3 + 43 and "not shown again" in made.stderr
    listed = subprocess.run([*cmd, "list", *env_dir, "--json"], capture_output=True, text=True, timeout=60)
    [info] = msgspec.json.decode(listed.stdout)
    assert info["agent_id"] == "ops" and info["role"] == "admin" and token not in listed.stdout
    gone = subprocess.run([*cmd, "revoke", *env_dir, info["id"]], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 0 and "revoked" in gone.stdout
    listed = subprocess.run([*cmd, "list", *env_dir], capture_output=True, text=True, timeout=60)
    assert listed.stdout == ""
    bad = subprocess.run([*cmd, "create", *env_dir, "--agent", "x", "--role", "root"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2
