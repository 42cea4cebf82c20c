"""A real SQLite store with a test directory, tickets made through the store's
own commit, and a clock the tests move (nothing sleeps)."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.store.sqlite import SQLiteStore
from tests.clock import FakeClock
from routing.directory import Directory, parse_directory
from routing.model import Identity, ReplyTarget, new_id
from routing.state import Commit, NewContact, NewTicket

SHANGHAI = ZoneInfo("Asia/Shanghai")

# Synthetic directory for these tests; the shape follows deploy/directory.example.yaml.
DIRECTORY = """
calendars:
  cn-office:
    hours: {weekdays: [09:00-12:00, 13:30-18:00]}
    holidays: CN
teams:
  billing:
    calendar: cn-office
    overflow:
      - {after: 10m, widen_to: [support]}
      - {after: 30m, lower_skills_by: 1, raise_priority: true}
  support: {}
  chat: {}
agents:
  - {id: a-li, name: Li, roles: [agent, lead], teams: [billing], skills: {billing: 3}, capacity: {email: 2, chat: 2}}
  - {id: a-han, name: Han, teams: [billing], skills: {billing: 2}, capacity: {email: 2, chat: 2}}
  - {id: a-wang, name: Wang, teams: [support], skills: {billing: 1}, capacity: {email: 3, chat: 3}}
  - {id: c-1, name: C1, teams: [chat], capacity: {email: 10}}
  - {id: c-2, name: C2, teams: [chat], capacity: {email: 10}}
  - {id: c-3, name: C3, teams: [chat], capacity: {email: 10}}
sla_policies:
  - id: urgent
    match: {priority: [urgent]}
    calendar: 24x7
    targets: {first_response: 15m, resolution: 4h}
    escalations:
      - when: breach
        targets: [first_response]
        actions: [{action: reassign_to_lead}, {action: webhook, name: sla-alerts}]
  - id: standard
    calendar: cn-office
    targets: {first_response: 2h, resolution: 24h}
    warn_at: 0.75
"""


def directory(presence: str = "online") -> Directory:
    """The test directory with every agent's initial presence set."""
    text = DIRECTORY.replace("capacity:", f"presence: {presence}, capacity:")
    return parse_directory(text, "test-directory.yaml")


Clock = FakeClock  # the tests' name for it


def local(*args: int) -> datetime:
    """A Shanghai wall-clock time."""
    return datetime(*args, tzinfo=SHANGHAI)


T0 = local(2026, 3, 2, 9, 0)  # a Monday, a workday


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.integration)]


@pytest.fixture(params=BACKENDS)
async def store(request, tmp_path, clock):
    """The store on each backend (Redis: a real redis-server, its own key prefix), the test directory loaded."""
    if request.param == "sqlite":
        s = SQLiteStore.in_dir(tmp_path, clock=clock)
    else:
        from gateway.store.redis_store import RedisStore

        s = RedisStore(request.getfixturevalue("redis_server").url, prefix=request.getfixturevalue("redis_prefix"),
                       clock=clock)
    await s.directory_load(directory(), T0)
    yield s
    await s.close()


@pytest.fixture(params=BACKENDS)
async def stores(request, tmp_path, clock):
    """A factory of stores on one backend's state (SQLite: one folder; Redis: one
    server and key prefix): each call is another process on the same data."""
    opened = []

    def make():
        if request.param == "sqlite":
            s = SQLiteStore.in_dir(tmp_path, clock=clock)
        else:
            from gateway.store.redis_store import RedisStore

            s = RedisStore(request.getfixturevalue("redis_server").url,
                           prefix=request.getfixturevalue("redis_prefix"), clock=clock)
        opened.append(s)
        return s

    yield make
    for s in opened:
        await s.close()


@pytest.fixture
async def sqlite_store(tmp_path, clock):
    """The SQLite store alone, for tests of its internals (transactions, SQL tables)."""
    s = SQLiteStore.in_dir(tmp_path, clock=clock)
    await s.directory_load(directory(), T0)
    yield s
    await s.close()


async def make_ticket(store, *, channel: str = "email", team: str | None = None, priority: str = "normal",
                      skills: dict[str, int] | None = None, created_at: datetime = T0,
                      contact_id: str | None = None, contact_version: int | None = None) -> str:
    """A new ticket (and contact, unless ``contact_id`` at ``contact_version`` is given), committed the
    way the pipeline commits one."""
    cid, tid = contact_id or new_id(), new_id()
    sender = Identity("email", f"{cid.lower()}@example.com")
    await store.commit(Commit(
        journal_id=await journal_id(store), outcome="processed", message_key=(channel, "acct", new_id()), contact_id=cid,
        new_contact=NewContact(cid, "Customer", created_at) if contact_id is None else None,
        contact_expect_version=contact_version, ticket_id=tid,
        new_ticket=NewTicket(id=tid, subject="help", channel=channel, created_at=created_at,
                             reply_to=ReplyTarget(channel, "acct", sender), priority=priority, team=team,
                             skills=skills or {}),
    ))
    return tid


async def journal_id(store) -> str:
    """A journal entry to commit against: the Redis commit settles its entry (the
    SQLite commit takes any id, and its tests count its writes)."""
    if getattr(store, "backend", None) != "redis":
        return new_id()
    return (await store.journal_append("email", "acct", new_id(), b"{}")).journal_id


async def assignee(store, ticket_id: str) -> str | None:
    ticket = await store.get_ticket(ticket_id)
    return ticket.assignee


async def entries(store, ticket_id: str, kind: str) -> list:
    page = await store.timeline(ticket_id=ticket_id, limit=500)
    return [e for e in page.items if e.kind == kind]

