"""``ownership: desk`` (issue 14): once a ticket is linked to a desk that owns
routing, omnigate releases its agent, clears its SLA timers and assigns it
no more; a ticket linked to an ``ownership: omnigate`` desk keeps both."""

from __future__ import annotations

from tests.assignment.conftest import T0, assignee, make_ticket


async def timers(store, ticket_id: str) -> int:
    if store.backend == "redis":
        return await store.r.hlen(store.k.sla_timers(ticket_id))
    return await store._read(lambda conn: conn.execute(
        "SELECT count(*) FROM sla_timers WHERE ticket_id = ?", (ticket_id,)).fetchone()[0])


async def test_a_desk_owned_ticket_is_neither_assigned_nor_timed(store, clock) -> None:
    owned, kept = await make_ticket(store, team="billing"), await make_ticket(store, team="billing")
    await store.ticket_sync([owned, kept], T0)
    assert await assignee(store, owned) and await assignee(store, kept)
    assert await timers(store, owned) and await timers(store, kept)

    await store.desk_link_set("zd", owned, "501", owned=True)
    await store.desk_link_set("zm", kept, "77", owned=False)
    await store.ticket_sync([owned, kept], T0)
    assert await assignee(store, owned) is None and await timers(store, owned) == 0
    assert (await store.get_ticket(owned)).sla is None
    assert await assignee(store, kept) and await timers(store, kept)
    # a later change (a customer message, a status) does not bring omnigate's routing back
    await store.set_status(owned, "pending", T0, actor="api")
    await store.set_status(owned, "open", T0, actor="api")
    await store.ticket_sync([owned], T0)
    assert await assignee(store, owned) is None and await timers(store, owned) == 0
    assert await store.desk_ticket_of("zd", "501") == owned and await store.desk_link("zd", owned) == "501"
