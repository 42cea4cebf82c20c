"""The SLA sync's fast paths give exactly what its slow paths gave (SQLite store internals).

- Response tracking reads only the ticket's replies and looks the customer
  message that starts the next-response clock up in the index: it must
  answer as the full scan of the timeline did (``sla_oracle.responses_scan``)
  on random timelines with ties, delivery times with microseconds and other
  offsets, replies that do not count, and ``first_response_at`` set or not.
- A follow-up whose clock did not change reuses the ticket's last evaluation
  while ``now`` stays in its span: the state and timer rows must be those
  evaluated afresh (``sla_oracle.timing_fresh``) at every step of random
  walks of the time across due times, status changes and policy reloads.
- Through the store: a sync with the memo writes what a sync without it does.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from gateway.store import sqlite_sla
from gateway.store.base import REPLY_TOPIC, Delivery, ReplyDraft
from gateway.store.sqlite_assign import AgentCache, TicketRow, from_ms, to_json, to_ms
from routing.calendar import BusinessCalendar, CalendarConfig
from routing.model import new_id
from routing.sla import SlaClock, SlaPolicy, StatusChange
from tests.assignment.conftest import T0, make_ticket
from tests.assignment.sla_oracle import responses_scan, timing_fresh

BASE_MS = 1_772_416_800_000  # 2026-03-02 02:00 UTC
EAST8 = timezone(timedelta(hours=8))


def _exact(value: tuple[datetime | None, ...]) -> tuple[str | None, ...]:
    """Datetimes compared with their offsets (the clock's JSON keeps them)."""
    return tuple(v.isoformat() if v is not None else None for v in value)


def _random_timeline(rng: random.Random) -> tuple[list[tuple[str, int, str | None]], datetime | None]:
    """(rows (kind, at ms, data) in insertion order, the ticket's first_response_at)."""
    instants = [BASE_MS + k * 1000 + rng.choice((0, 0, 1)) for k in range(5)]
    rows: list[tuple[str, int, str | None]] = []
    for _ in range(rng.randint(0, 10)):
        kind = rng.choice(("message_in", "message_in", "message_out", "message_out", "message_out", "note", "sla"))
        at = rng.choice(instants)
        if kind != "message_out":
            rows.append((kind, at, None))
            continue
        data: dict = {}
        if rng.random() < 0.85:
            data["author"] = rng.choice(("a-li", "a-han", "", None))
        if rng.random() < 0.3:
            data["auto"] = rng.choice((True, False))
        if rng.random() < 0.3:
            data["public"] = rng.choice((True, False))
        shape = rng.random()
        if shape < 0.15:
            data["delivery"] = "sent"  # not a dict: no delivery check
        elif shape < 0.85:
            delivery: dict = {"status": rng.choice(("sent", "sent", "sent", "queued", "failed", "delivered"))}
            if rng.random() < 0.85:
                when = from_ms(rng.choice(instants) + rng.choice((0, 0, -1, 1)))
                when += timedelta(microseconds=rng.choice((0, 0, 0, 250)))
                delivery["at"] = (when.astimezone(EAST8) if rng.random() < 0.4 else when).isoformat()
            data["delivery"] = delivery
        rows.append((kind, at, None if rng.random() < 0.05 else msgspec.json.encode(data).decode()))
    first = from_ms(rng.choice(instants)) if rng.random() < 0.3 else None
    return rows, first


def _ticket(ticket_id: str, first_response_at: datetime | None) -> TicketRow:
    return TicketRow(ticket_id, "c", "open", "normal", None, {}, None, "email", from_ms(BASE_MS - 60_000),
                     first_response_at, None, None)


def _reply(at_ms: int, delivered: datetime) -> tuple[str, int, str]:
    return "message_out", at_ms, msgspec.json.encode(
        {"author": "a-li", "delivery": {"status": "sent", "at": delivered.isoformat()}}).decode()


X = from_ms(BASE_MS)
#: ties the random cases reach rarely: replies and a customer message at one instant
TIES = [
    # the last response is the last of equal times in the timeline's order: the message between is answered
    [_reply(BASE_MS, X), ("message_in", BASE_MS, None), _reply(BASE_MS, X)],
    # the first response is the first of equal times in the timeline's order (its offset is kept)
    [_reply(BASE_MS, X.astimezone(EAST8)), _reply(BASE_MS, X), ("message_in", BASE_MS + 1, None)],
    # delivered at the instant of a later customer message, entered before it: the message waits
    [_reply(BASE_MS - 5, X), ("message_in", BASE_MS, None)],
    # … entered after it: the message came first
    [("message_in", BASE_MS, None), _reply(BASE_MS + 5, X)],
]


async def test_responses_read_from_the_replies_match_the_full_scan(sqlite_store):
    rng = random.Random(11)
    cases = [(new_id(), rows, None) for rows in TIES] + [(new_id(), *_random_timeline(rng)) for _ in range(1500)]

    def check(conn) -> int:
        tx = sqlite_store._tx_type(conn, sqlite_store._directory, AgentCache(), T0)
        awaiting = 0
        for ticket_id, rows, first in cases:
            conn.executemany(
                "INSERT INTO timeline (id, contact_id, origin_contact_id, ticket_id, kind, at, data) "
                "VALUES (?, 'c', 'c', ?, ?, ?, ?)", [(new_id(), ticket_id, kind, at, data) for kind, at, data in rows])
            t = _ticket(ticket_id, first)
            got = tx._responses(t)
            assert _exact(got) == _exact(responses_scan(conn, t)), rows
            awaiting += got[1] is not None
        return awaiting

    # the cases reach the interesting branch (a customer message waiting after a response) often
    assert await sqlite_store._write(check) > 150


OFFICE = BusinessCalendar.from_config("office", CalendarConfig(hours={"weekdays": "09:00-12:00, 13:30-18:00"}))
ALWAYS = BusinessCalendar.twenty_four_seven()


def _policy(rng: random.Random) -> SlaPolicy:
    targets = {t: rng.choice((5, 30, "2h", "8h")) for t in ("first_response", "next_response", "resolution")
               if rng.random() < 0.7} or {"first_response": 15}
    return msgspec.convert({"id": rng.choice(("p1", "p2")), "targets": targets, "warn_at": rng.choice((0.5, 0.8)),
                            "pause_on_pending": rng.random() < 0.7}, SlaPolicy)


def _change(rng: random.Random, clock: SlaClock, now: datetime) -> None:
    """Change one fact of the clock (what a status change, a reply or a fired event does)."""
    what = rng.random()
    if what < 0.4:
        status = rng.choice(("open", "pending", "pending", "solved", "open"))
        at = now + timedelta(minutes=rng.choice((0, 0, -30, 45)))  # now and then a change the clock is behind
        clock.statuses.append(StatusChange(at, status))
    elif what < 0.6:
        clock.first_response_at = clock.first_response_at or now
        clock.awaiting_since = now if rng.random() < 0.6 else None
    elif what < 0.8:
        clock.awaiting_since = None if clock.awaiting_since else now
    else:
        clock.fired.append(rng.choice(("warning", "breach")) + ":" + rng.choice(("first_response", "resolution"))
                           + ":" + clock.opened_at.isoformat())


@pytest.mark.parametrize("seed", range(40))
def test_a_kept_evaluation_is_the_fresh_one(seed):
    rng = random.Random(seed)
    sqlite_sla._timings.clear()
    ticket_id = new_id()
    opened = datetime(2026, 3, 2, 1, 0, tzinfo=timezone.utc) + timedelta(minutes=rng.randrange(0, 600, 7))
    clock = SlaClock(ticket_id, "p1", opened, statuses=[StatusChange(opened, "new")])
    policy, calendar = _policy(rng), rng.choice((OFFICE, ALWAYS))
    now, kept = opened, 0
    for _ in range(150):
        step = rng.random()
        if step < 0.1:
            _change(rng, clock, now)
        elif step < 0.15:  # a directory reload: other objects, maybe the same id and targets
            policy = _policy(rng) if rng.random() < 0.5 else msgspec.structs.replace(policy)
            calendar = rng.choice((OFFICE, ALWAYS, BusinessCalendar.twenty_four_seven()))
        now += timedelta(minutes=rng.choice((1, 3, 10, 40, -5)), microseconds=rng.choice((0, 1, -1)))
        encoded = to_json(clock)
        before = sqlite_sla._timings.get(ticket_id)
        timing = sqlite_sla._timing(ticket_id, clock, encoded, now, policy, calendar)
        kept += timing is before
        assert (timing.state, timing.timers) == timing_fresh(ticket_id, clock, now, policy, calendar)
    assert kept > 20  # the memo is used, not only filled


async def test_a_sync_with_the_memo_writes_what_one_without_it_writes(sqlite_store, clock):
    store = sqlite_store
    tickets = [await make_ticket(store, priority=p, created_at=T0) for p in ("normal", "urgent", "normal")]

    def rows(conn):
        return (conn.execute("SELECT id, sla FROM tickets ORDER BY id").fetchall(),
                conn.execute("SELECT * FROM sla_timers ORDER BY ticket_id, key").fetchall(),
                conn.execute("SELECT * FROM sla_clocks ORDER BY ticket_id").fetchall())

    def customer_message(conn, ticket_id, at):
        conn.execute("INSERT INTO timeline (id, contact_id, origin_contact_id, ticket_id, kind, at) "
                     "SELECT ?, contact_id, contact_id, id, 'message_in', ? FROM tickets WHERE id = ?",
                     (new_id(), to_ms(at), ticket_id))

    rng = random.Random(5)
    for step in range(60):
        now = clock.advance(minutes=rng.choice((1, 7, 20, 45)))
        ticket_id = tickets[step % 3]
        if step % 9 == 4:
            await store.set_status(ticket_id, rng.choice(("pending", "open")), now)
        if step % 4 == 1:
            await store._write(customer_message, ticket_id, now)
        if step % 13 == 6:
            await store.reply_create(ticket_id, ReplyDraft(text="hello", author="a-li"))
            (item,) = await store.outbox_claim(REPLY_TOPIC, 10, 60)
            assert await store.outbox_settle(item, Delivery(status="sent", at=now, attempts=1))
        if step % 5 == 0:
            await store.sla_fire_due(now)
        await store.ticket_sync(tickets, now)
        with_memo = await store._read(rows)
        sqlite_sla._timings.clear()
        await store.ticket_sync(tickets, now)
        assert await store._read(rows) == with_memo
