"""The SLA sync's slow paths, kept verbatim as oracles for its fast ones
(``gateway/store/sqlite_sla.py``; compared in ``test_sla_sync_fast.py``).

- :func:`responses_scan`: ``Tx._responses`` as it was before it read only the
  outgoing messages: every customer message and reply of the ticket, sorted.
- :func:`timing_fresh`: the state and timer rows a sync writes, evaluated
  afresh (what ``sqlite_sla._timing`` returns without its memo).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

import msgspec

from gateway.store.sqlite_assign import TicketRow, from_ms, to_json, to_ms
from routing.calendar import BusinessCalendar
from routing.sla import SlaClock, SlaPolicy, due_events, evaluate, reply_counts_at, responses_in, sla_state

_dec = msgspec.json.Decoder()


def responses_scan(conn: sqlite3.Connection, t: TicketRow) -> tuple[datetime | None, datetime | None]:
    events = []
    for kind, at_ms, data in conn.execute(
        "SELECT kind, at, data FROM timeline WHERE ticket_id = ? AND kind IN ('message_in', 'message_out') "
        "ORDER BY at, seq", (t.id,)):
        at = from_ms(at_ms)
        if kind == "message_in":
            events.append((at, False))
            continue
        if (counts_at := reply_counts_at(at, _dec.decode(data) if data else {})) is not None:
            events.append((counts_at, True))
    return responses_in(t.first_response_at, events)


def timing_fresh(ticket_id: str, clock: SlaClock, now: datetime, policy: SlaPolicy,
                 calendar: BusinessCalendar) -> tuple[str, list[tuple]]:
    """(``tickets.sla``, the sorted ``sla_timers`` rows) as a sync computed them before the memo."""
    statuses = evaluate(clock, now, policy, calendar)
    state = to_json(sla_state(clock, now, policy, calendar, statuses))
    timers = [(ticket_id, ev.key, ev.kind, ev.target, policy.id, to_ms(ev.since), to_ms(ev.at))
              for ev in due_events(clock, now, policy, calendar, statuses)]
    return state, sorted(timers)
