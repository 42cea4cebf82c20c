"""``omnigate migrate --from sqlite:DIR --to redis://…``: a single-node
installation populated through the real pipeline moves to a real Redis, a
gateway served from Redis reads all of it and numbering continues; a second
run changes nothing; it refuses while the daemon holds the folder, and
names a table whose rows the Redis backend cannot take yet. With a directory:
agents, loads, the queue, SLA clocks/timers and stats move, and a Redis gateway
behaves as the SQLite store it came from would have (due SLA timers fire once)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import datalock, keys
from gateway.app import create_app
from gateway.config import load
from gateway.outbox import DISPATCHER
from tests.gateway.conftest import AUTH, TOKEN, business_hours

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(200))


def _config(root: Path, **env):
    return load(None, environ={"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(root / "data"),
                               "OMNIGATE_RULES_DIR": str(root / "no-rules"), **env})


def _msg(ext: str, who: str, text: str, **extra) -> dict:
    return {"external_id": ext, "sender": {"kind": "email", "value": who}, "text": text, **extra}


def migrate(data_dir: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "migrate", "--from", f"sqlite:{data_dir}",
                           "--to", url, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


async def _post(client, body: dict) -> dict:
    r = await client.post("/channels/api/messages", headers=AUTH, json=body)
    assert r.status in (200, 202), await r.text()
    return await r.json()


@pytest.fixture
async def single_node(aiohttp_client, tmp_path):
    """A SQLite installation with tickets, a merge, an attachment, a failed entry, participants."""
    root = tmp_path / "single"
    app = create_app(_config(root), clock=business_hours())
    client = await aiohttp_client(app)
    await _post(client, _msg("m1", "ann@shop.test", "my order is late",
                             attachments=[{"name": "p.png", "content_type": "image/png",
                                           "data_base64": base64.b64encode(PNG).decode()}]))
    await _post(client, _msg("m2", "bob@shop.test", "refund please"))
    await _post(client, _msg("m3", "ann@shop.test", "any news?"))
    await _post(client, _msg("m4", "ann.alt@shop.test", "it is me again, other address"))
    await app[keys.WORKER].drain()
    store = app[keys.STORE]
    # an unparseable payload: failed with its reason, raw kept
    await store.journal_append("api", "default", "bad-1", b"{not json")
    await app[keys.WORKER].drain()
    ann = (await store.journal_list(status="processed"))[0].contact_id
    alt = (await store.journal_list(status="processed"))[-1].contact_id
    await store.merge_contacts(ann, alt, "admin", "same person")
    tickets = [await store.get_ticket_by_number(n) for n in (1000, 1001, 1002)]
    await store.ticket_participant_add(tickets[0].id, __import__("routing.model", fromlist=["Identity"]).Identity(
        "email", "boss@shop.test"), "cc")
    facts = {
        "journal": {e.id: (e.status, e.raw) for e in await store.journal_list(limit=100, with_raw=True)},
        "tickets": {t.number: t for t in tickets if t is not None},
        "timeline": {cid: [e.id for e in (await store.timeline(contact_id=cid, limit=100)).items]
                     for cid in (ann, (await store.journal_list(status="processed"))[1].contact_id)},
        "counts": await store.counts(),
        "ann": ann, "alt": alt,
    }
    ref = [a.storage_ref for e in (await store.timeline(contact_id=ann, limit=100)).items for a in e.attachments][0]
    facts["attachment"] = ref
    # the REST API's own rows: a token (by its digest), a contact's attributes and audit
    facts["token"], facts["token_info"] = await store.token_create("a-li", "lead", created_by="test",
                                                                   now=business_hours()())
    await store.contact_set_attributes(ann, {"plan": "gold"}, actor="admin", now=business_hours()())
    facts["audit"] = [(a.action, a.subject) for a in await store.contact_audit(ann)]
    facts["counts"] = await store.counts()  # the attribute change's event is in the outbox
    await client.close()
    return root / "data", facts


async def test_migrate_moves_everything_and_numbering_continues(single_node, aiohttp_client, tmp_path,
                                                                redis_server, redis_prefix):
    data_dir, facts = single_node
    assert len(facts["tickets"]) >= 2 and any(s == "failed" for s, _ in facts["journal"].values())
    r = migrate(data_dir, redis_server.url, "--prefix", redis_prefix)
    assert r.returncode == 0, r.stderr
    assert "journal: 5" in r.stdout and "tickets:" in r.stdout

    root = tmp_path / "served"
    app = create_app(_config(root, OMNIGATE_REDIS_URL=redis_server.url, OMNIGATE_STORE__REDIS_PREFIX=redis_prefix),
                     clock=business_hours())
    client = await aiohttp_client(app)
    store = app[keys.STORE]
    assert store.backend == "redis"
    # the journal: every entry, its status and raw payload
    got = {e.id: (e.status, e.raw) for e in await store.journal_list(limit=100, with_raw=True)}
    assert got == facts["journal"]
    # tickets by number, contacts' timelines (the merged contact's too), counts
    for number, t in facts["tickets"].items():
        again = await store.get_ticket_by_number(number)
        assert (again.id, again.contact_id, again.status, again.subject, again.channels) == \
            (t.id, t.contact_id, t.status, t.subject, t.channels)
    for cid, ids in facts["timeline"].items():
        assert [e.id for e in (await store.timeline(contact_id=cid, limit=100)).items] == ids
    assert [e.id for e in (await store.timeline(contact_id=facts["alt"], limit=100)).items] == \
        facts["timeline"][facts["ann"]]  # a merged contact's timeline is its winner's
    assert (await store.get_contact(facts["alt"])).merged_into == facts["ann"]
    assert await store.counts() == facts["counts"]
    first = facts["tickets"][1000]
    assert [p["value"] for p in await store.ticket_participants(first.id)] == ["boss@shop.test"]
    assert await app[DISPATCHER].attachments.aget(facts["attachment"]) == PNG
    # the REST API on the migrated data: lists (indexes built), the token, the contact's audit
    from gateway.store.sqlite_tickets import TicketQuery

    listed, _ = await store.tickets_list(TicketQuery(), limit=50)
    assert sorted(t.number for t in listed) == sorted(facts["tickets"])
    assert (await store.token_lookup(facts["token"])).id == facts["token_info"].id
    assert [(a.action, a.subject) for a in await store.contact_audit(facts["ann"])] == facts["audit"]
    assert await store.r.zcard(store.k.contacts_by_id) == facts["counts"]["contacts"]  # name search walks it
    # served from Redis: a known message is recognised (idempotency keys), a follow-up threads onto
    # its ticket, a new customer gets the next number
    assert (await _post(client, _msg("m2", "bob@shop.test", "refund please")))["journal_id"] in facts["journal"]
    await _post(client, _msg("m5", "bob@shop.test", "still waiting for the refund"))
    await _post(client, _msg("m6", "cat@shop.test", "hello, new here"))
    await app[keys.WORKER].drain()
    for _ in range(200):
        if (await store.journal_counts())["pending"] == 0:
            break
        await asyncio.sleep(0.05)
    top = max(facts["tickets"])
    new = await store.get_ticket_by_number(top + 1)
    assert new is not None and (await store.get_contact(new.contact_id)).identities[0].value == "cat@shop.test"
    assert await store.get_ticket_by_number(top + 2) is None  # bob's follow-up joined his ticket
    await client.close()

    # a second run changes nothing: the work done on Redis since stays
    before = await _redis_counts(redis_server.url, redis_prefix)
    r = migrate(data_dir, redis_server.url, "--prefix", redis_prefix)
    assert r.returncode == 0 and "already migrated" in r.stdout, r.stderr
    assert await _redis_counts(redis_server.url, redis_prefix) == before


async def test_an_interrupted_migration_is_run_again_to_the_same_state(single_node, redis_server, redis_prefix):
    """Every step writes the SQLite row's state: running the steps twice (the first run
    stopped before it finished) leaves exactly what one run leaves."""
    await _twice_is_once(single_node[0], redis_server, redis_prefix)


async def test_an_interrupted_migration_with_agents_queue_and_sla_is_run_again_to_the_same_state(
        assigned_node, redis_server, redis_prefix):
    """The same with agents, loads, a queue, SLA clocks, timers and events."""
    once = await _twice_is_once(assigned_node[0], redis_server, redis_prefix)
    assert once[f"{redis_prefix}aq"] and once[f"{redis_prefix}sla:due"] and once[f"{redis_prefix}agents"]


async def _twice_is_once(data_dir: Path, redis_server, redis_prefix) -> dict:
    from gateway.commands.migrate import migrate as run

    facts_tickets = await _ticket_numbers(data_dir)
    await run(data_dir, redis_server.url, prefix=redis_prefix, out=lambda _: None)
    once = await _dump(redis_server.url, redis_prefix)
    from gateway.store.redis_store import RedisStore

    s = RedisStore(redis_server.url, prefix=redis_prefix)
    await s.r.hdel(s.k.migrated, "finished_at")  # as if the first run had died before its end
    await s.close()
    await run(data_dir, redis_server.url, prefix=redis_prefix, out=lambda _: None)
    twice = await _dump(redis_server.url, redis_prefix)
    assert twice == once
    assert once[f"{redis_prefix}seq:ticket"] == str(max(facts_tickets))
    return once


async def _ticket_numbers(data_dir: Path) -> list[int]:
    import sqlite3

    db = sqlite3.connect(data_dir / "omnigate.db")
    try:
        return [r[0] for r in db.execute("SELECT number FROM tickets")]
    finally:
        db.close()


async def _dump(url: str, prefix: str) -> dict:
    """Every key's value (streams without their ids; the marker's times dropped)."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url, decode_responses=True, encoding_errors="surrogateescape")
    out = {}
    try:
        async for key in r.scan_iter(match=f"{prefix}*"):
            kind = await r.type(key)
            if key == f"{prefix}migrated":
                continue
            if kind == "string":
                out[key] = await r.get(key)
            elif kind == "hash":
                out[key] = await r.hgetall(key)
            elif kind == "set":
                out[key] = sorted(await r.smembers(key))
            elif kind == "zset":
                out[key] = await r.zrange(key, 0, -1, withscores=True)
            elif kind == "stream":
                out[key] = [fields for _, fields in await r.xrange(key)]
        return out
    finally:
        await r.aclose()


async def _redis_counts(url: str, prefix: str) -> dict:
    from gateway.store.redis_store import RedisStore

    s = RedisStore(url, prefix=prefix)
    try:
        counts = await s.counts()
        counts["stream"] = await s.r.xlen(s.k.stream)
        return counts
    finally:
        await s.close()


async def test_migrate_refuses_a_held_folder_a_table_it_cannot_take_and_a_foreign_prefix(
        single_node, redis_server, redis_prefix):
    data_dir, _ = single_node
    lock = datalock.acquire(data_dir, listen="127.0.0.1:8686")
    try:
        r = migrate(data_dir, redis_server.url, "--prefix", redis_prefix)
    finally:
        lock.release()
    assert r.returncode == 1 and "in use by pid" in r.stderr
    # a table the Redis backend cannot take yet: refused by name, nothing written
    import sqlite3

    db = sqlite3.connect(data_dir / "omnigate.db")
    db.execute("CREATE TABLE future_feature (x)")  # a table no step takes (a newer version's, say)
    db.execute("INSERT INTO future_feature VALUES (1)")
    db.commit()
    db.close()
    r = migrate(data_dir, redis_server.url, "--prefix", redis_prefix)
    assert r.returncode == 1 and "future_feature (1 rows)" in r.stderr
    assert (await _redis_counts(redis_server.url, redis_prefix))["journal"] == 0
    # left behind on purpose
    r = migrate(data_dir, redis_server.url, "--prefix", redis_prefix, "--skip", "future_feature")
    assert r.returncode == 0 and "skipped: future_feature (1 rows)" in r.stdout
    # another folder into the same prefix (named by the deployment's configuration): refused
    other = data_dir.parent / "other"
    other.mkdir()
    (other / "omnigate.db").write_bytes((data_dir / "omnigate.db").read_bytes())
    deployment = data_dir.parent / "deployment.yaml"
    deployment.write_text(f"redis_url: {redis_server.url}\nstore:\n  redis_prefix: '{redis_prefix}'\n")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "migrate", "--from", f"sqlite:{other}", "--config",
                        str(deployment), "--skip", "future_feature"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "holds a migration of" in r.stderr and redis_prefix in r.stderr


def test_migrate_refuses_a_store_of_another_schema_version(tmp_path, redis_server, redis_prefix):
    import sqlite3

    data_dir = tmp_path / "old"
    data_dir.mkdir()
    db = sqlite3.connect(data_dir / "omnigate.db")
    db.execute("CREATE TABLE journal (seq INTEGER PRIMARY KEY)")
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    r = migrate(data_dir, redis_server.url, "--prefix", redis_prefix)
    assert r.returncode == 1 and "schema version 3" in r.stderr
    r = migrate(tmp_path / "none", redis_server.url, "--prefix", redis_prefix)
    assert r.returncode == 1 and "no SQLite store" in r.stderr and not (tmp_path / "none").exists()


# ------------------------------------------------------------- assignment and SLA

DIRECTORY = """
teams:
  support: {}
agents:
  - {id: a-1, name: A1, teams: [support], presence: online, capacity: {email: 1}}
  - {id: a-2, name: A2, teams: [support], presence: online, capacity: {email: 1}}
  - {id: a-3, name: A3, teams: [support], presence: offline, capacity: {email: 1}}
sla_policies:
  - id: fast
    calendar: 24x7
    targets: {first_response: 1h, resolution: 8h}
    warn_at: 0.5
"""


def _agents(views) -> dict:
    return {a.id: (a.presence, a.load, a.tickets, a.last_assigned_at) for a in views}


def _queue_order(db_path: Path) -> list[str]:
    import sqlite3

    db = sqlite3.connect(db_path)
    try:
        return [r[0] for r in db.execute("SELECT ticket_id FROM assign_queue ORDER BY rank, queued_at, ticket_id")]
    finally:
        db.close()


async def _sla_fired(store, ticket_ids) -> dict:
    """Ticket → the SLA events its timeline records (kind, target), in order."""
    out = {}
    for tid in ticket_ids:
        page = await store.timeline(ticket_id=tid, limit=500)
        out[tid] = [(e.data["event"], e.data["target"]) for e in page.items if e.kind == "sla" and "event" in e.data]
    return out


@pytest.fixture
async def assigned_node(aiohttp_client, tmp_path):
    """A single node with a directory: tickets assigned up to capacity, the rest queued,
    one solved (its agent took the oldest queued), SLA warnings fired, breaches due later."""
    from tests.clock import INSTANTS, FakeClock

    (tmp_path / "directory.yaml").write_text(DIRECTORY)
    clock = FakeClock(INSTANTS["business-hours"])
    root = tmp_path / "single"
    app = create_app(_config(root, OMNIGATE_DIRECTORY=str(tmp_path / "directory.yaml")), clock=clock)
    client = await aiohttp_client(app)
    store = app[keys.STORE]
    for i in range(5):
        await _post(client, _msg(f"m{i}", f"c{i}@shop.test", f"question {i}"))
        await app[keys.WORKER].drain()
        clock.advance(minutes=1)
    tickets = [(await store.get_ticket_by_number(1000 + i)).id for i in range(5)]
    assert [(await store.get_ticket(t)).assignee for t in tickets] == ["a-1", "a-2", None, None, None]
    assert _queue_order(root / "data" / "omnigate.db") == tickets[2:]
    await store.set_status(tickets[0], "solved", clock(), actor="a-1")  # a-1 takes the oldest queued
    assert (await store.get_ticket(tickets[2])).assignee == "a-1"
    clock.advance(minutes=31)
    await store.sla_fire_due(clock())  # the first-response warnings (half of 1h)
    stats = await store.assign_stats()
    assert stats["sla_warnings"] == {"fast": {"first_response": 4}} and stats["resolution"]["count"] == 1
    await client.close()
    return root / "data", tickets, clock


async def test_agents_loads_queue_and_due_sla_timers_move_and_fire_once(assigned_node, aiohttp_client, tmp_path,
                                                                       redis_server, redis_prefix):
    """After the migration a gateway served from Redis has the same agents, loads, queue
    order, SLA state and stats as the SQLite store it came from; an agent coming online
    takes the same ticket on both; the breaches due fire once, the same ones on both; a
    ticket the single node changed but had not synced yet is synced by the sweep on Redis."""
    import shutil

    from gateway.store.sqlite import SQLiteStore
    from routing.directory import parse_directory

    data_dir, tickets, clock = assigned_node
    directory = parse_directory(DIRECTORY, "directory.yaml")
    # the single node died between a commit and its assignment hook: a ticket moved to a team, not synced
    import sqlite3

    db = sqlite3.connect(data_dir / "omnigate.db")
    db.execute("UPDATE tickets SET team = 'support', version = version + 1, updated_at = ? WHERE id = ?",
               (int(clock().timestamp() * 1000), tickets[4]))
    db.commit()
    db.close()
    reference = tmp_path / "reference"  # the single node had it gone on: the expected behaviour
    shutil.copytree(data_dir, reference)
    r = migrate(data_dir, redis_server.url, "--prefix", redis_prefix)
    assert r.returncode == 0, r.stderr
    assert "agents: 3" in r.stdout and "queue: 2" in r.stdout and "sla_timers:" in r.stdout, r.stdout

    sqlite = SQLiteStore.in_dir(reference, clock=clock)
    await sqlite.directory_load(directory, clock())
    app = create_app(_config(tmp_path / "served", OMNIGATE_REDIS_URL=redis_server.url,
                             OMNIGATE_STORE__REDIS_PREFIX=redis_prefix,
                             OMNIGATE_DIRECTORY=str(tmp_path / "directory.yaml")), clock=clock)
    client = await aiohttp_client(app)
    redis = app[keys.STORE]
    try:
        assert redis.backend == "redis"
        # the sweep on Redis syncs it (as the single node's next sweep would have): queued for its team
        cursor = await sqlite.state_get("assignment.sweep_cursor")
        await sqlite.ticket_sync((await sqlite.changed_tickets(cursor))[0], clock())
        for _ in range(200):
            if (await redis.assign_stats())["queued"] == {"": 1, "support": 1}:
                break
            await asyncio.sleep(0.05)
        assert (await redis.assign_stats())["queued"] == (await sqlite.assign_stats())["queued"] == \
            {"": 1, "support": 1}
        views = _agents(await sqlite.list_agents())
        assert views["a-1"][1:3] == ({"email": 1}, [tickets[2]]) and views["a-2"][1:3] == ({"email": 1}, [tickets[1]])
        assert _agents(await redis.list_agents()) == views
        assert [_s for _s in await redis.r.zrange(redis.k.assign_queue, 0, -1)] == \
            [t.encode() for t in _queue_order(reference / "omnigate.db")] == [t.encode() for t in tickets[3:]]
        assert await redis.assign_stats() == await sqlite.assign_stats()
        for t in tickets:
            a, b = await redis.get_ticket(t), await sqlite.get_ticket(t)
            assert (a.assignee, a.status, a.sla) == (b.assignee, b.status, b.sla)

        # an agent comes online: the oldest queued ticket is hers on both
        for s in (sqlite, redis):
            await s.set_presence("a-3", "online", clock())
        assert _agents(await redis.list_agents()) == _agents(await sqlite.list_agents())
        assert (await redis.get_ticket(tickets[3])).assignee == "a-3"
        assert await redis.r.zrange(redis.k.assign_queue, 0, -1) == [tickets[4].encode()]

        # the first-response breaches fall due: they fire once (whichever of our calls or the
        # served gateway's scheduler takes them), the same ones as on SQLite
        clock.advance(hours=1)
        await sqlite.sla_fire_due(clock())
        await redis.sla_fire_due(clock())
        await redis.sla_fire_due(clock())
        expected = await _sla_fired(sqlite, tickets)
        assert sum(ev == ("breach", "first_response") for evs in expected.values() for ev in evs) == 4
        for _ in range(100):  # the scheduler of the served gateway may be firing at this very moment
            stats = await redis.assign_stats()
            if stats["sla_breaches"] == {"fast": {"first_response": 4}}:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert await _sla_fired(redis, tickets) == expected
        assert await redis.assign_stats() == await sqlite.assign_stats()
    finally:
        await sqlite.close()
        await client.close()
