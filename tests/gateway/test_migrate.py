"""``omnigate migrate --from sqlite:DIR --to redis://…``: a single-node
installation populated through the real pipeline moves to a real Redis, a
gateway served from Redis reads all of it and numbering continues; a second
run changes nothing; it refuses while the daemon holds the folder, and
names a table whose rows the Redis backend cannot take yet."""

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
    from gateway.commands.migrate import migrate as run

    data_dir, facts = single_node
    await run(data_dir, redis_server.url, prefix=redis_prefix, out=lambda _: None)
    once = await _dump(redis_server.url, redis_prefix)
    from gateway.store.redis_store import RedisStore

    s = RedisStore(redis_server.url, prefix=redis_prefix)
    await s.r.hdel(s.k.migrated, "finished_at")  # as if the first run had died before its end
    await s.close()
    await run(data_dir, redis_server.url, prefix=redis_prefix, out=lambda _: None)
    twice = await _dump(redis_server.url, redis_prefix)
    assert twice == once
    assert once[f"{redis_prefix}seq:ticket"] == str(max(facts["tickets"]))


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
    db.execute("INSERT INTO agents (id, name, roles, teams, skills, capacity, presence, updated_at) "
               "VALUES ('a1', 'Ann', '[]', '[]', '{}', '{}', 'online', 0)")
    db.commit()
    db.close()
    r = migrate(data_dir, redis_server.url, "--prefix", redis_prefix)
    assert r.returncode == 1 and "agents (1 rows)" in r.stderr
    assert (await _redis_counts(redis_server.url, redis_prefix))["journal"] == 0
    # left behind on purpose
    r = migrate(data_dir, redis_server.url, "--prefix", redis_prefix, "--skip", "agents")
    assert r.returncode == 0 and "skipped: agents (1 rows)" in r.stdout
    # another folder into the same prefix (named by the deployment's configuration): refused
    other = data_dir.parent / "other"
    other.mkdir()
    (other / "omnigate.db").write_bytes((data_dir / "omnigate.db").read_bytes())
    deployment = data_dir.parent / "deployment.yaml"
    deployment.write_text(f"redis_url: {redis_server.url}\nstore:\n  redis_prefix: '{redis_prefix}'\n")
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "migrate", "--from", f"sqlite:{other}", "--config",
                        str(deployment), "--skip", "agents"], capture_output=True, text=True, timeout=120)
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
