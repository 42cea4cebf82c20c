"""SQLite operations for the help-desk sync (gateway/desks/).

- ``desk_links``: one row per (desk, omnigate ticket) with the desk's ticket
  id — written when the desk ticket is created (or found by the lookup before
  create), read by every later event and by the way back. ``owned`` is set
  for a desk with ``ownership: desk``: assignment and SLA timing leave the
  ticket alone (:func:`desk_owned`, read by ``AssignTx.ensure`` and
  ``sla_sync``).
- ``desk_seen``: desk comment ids this side knows: ``origin = 'omnigate'``
  for comments omnigate wrote (never echoed back), ``'desk'`` for agent
  comments already sent to the customer (a repeated nudge or poll changes
  nothing).

The poll cursor of each desk is a ``state`` row (``desk:<name>:cursor``).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.store.sqlite import SQLiteStore

#: Schema migration of the help-desk sync (after the webhooks'). Applied once, in order.
MIGRATION = """
    CREATE TABLE desk_links (
        desk           TEXT NOT NULL,
        ticket_id      TEXT NOT NULL,
        desk_ticket_id TEXT NOT NULL,
        owned          INTEGER NOT NULL DEFAULT 0,
        created_at     INTEGER NOT NULL,
        PRIMARY KEY (desk, ticket_id)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX desk_links_remote ON desk_links (desk, desk_ticket_id);

    CREATE TABLE desk_seen (
        desk       TEXT NOT NULL,
        comment_id TEXT NOT NULL,
        ticket_id  TEXT NOT NULL,
        origin     TEXT NOT NULL,
        at         INTEGER NOT NULL,
        PRIMARY KEY (desk, comment_id)
    ) WITHOUT ROWID;
"""


class DeskOps:
    """Mixed into SQLiteStore: the omnigate ↔ desk ticket mapping and the comments seen."""

    async def desk_link(self: "SQLiteStore", desk: str, ticket_id: str) -> str | None:
        """The desk's ticket id for an omnigate ticket, or None."""
        def q(conn: sqlite3.Connection) -> str | None:
            r = conn.execute("SELECT desk_ticket_id FROM desk_links WHERE desk = ? AND ticket_id = ?",
                             (desk, ticket_id)).fetchone()
            return r[0] if r else None
        return await self._read(q)

    async def desk_ticket_of(self: "SQLiteStore", desk: str, desk_ticket_id: str) -> str | None:
        """The omnigate ticket linked to a desk ticket, or None."""
        def q(conn: sqlite3.Connection) -> str | None:
            r = conn.execute("SELECT ticket_id FROM desk_links WHERE desk = ? AND desk_ticket_id = ?",
                             (desk, str(desk_ticket_id))).fetchone()
            return r[0] if r else None
        return await self._read(q)

    async def desk_link_set(self: "SQLiteStore", desk: str, ticket_id: str, desk_ticket_id: str, *,
                            owned: bool = False) -> None:
        """Link the tickets; ``owned``: the desk routes it from now on (then ``ticket_sync``
        releases its agent and clears its SLA timers)."""
        now = int(self.clock().timestamp() * 1000)
        await self._write(lambda conn: conn.execute(
            "INSERT OR IGNORE INTO desk_links (desk, ticket_id, desk_ticket_id, owned, created_at) VALUES (?,?,?,?,?)",
            (desk, ticket_id, str(desk_ticket_id), int(owned), now)))

    async def desk_links(self: "SQLiteStore", desk: str) -> list[tuple[str, str]]:
        """(omnigate ticket id, desk ticket id) of every linked ticket."""
        return await self._read(lambda conn: [tuple(r) for r in conn.execute(
            "SELECT ticket_id, desk_ticket_id FROM desk_links WHERE desk = ? ORDER BY created_at", (desk,))])

    async def desk_seen(self: "SQLiteStore", desk: str, comment_ids: list[str]) -> set[str]:
        """Which of these desk comment ids are known (ours, or already relayed)."""
        if not comment_ids:
            return set()

        def q(conn: sqlite3.Connection) -> set[str]:
            marks = ",".join("?" * len(comment_ids))
            return {r[0] for r in conn.execute(
                f"SELECT comment_id FROM desk_seen WHERE desk = ? AND comment_id IN ({marks})",
                (desk, *map(str, comment_ids)))}
        return await self._read(q)

    async def desk_seen_add(self: "SQLiteStore", desk: str, comment_id: str, ticket_id: str, origin: str) -> None:
        now = int(self.clock().timestamp() * 1000)
        await self._write(lambda conn: conn.execute(
            "INSERT OR IGNORE INTO desk_seen (desk, comment_id, ticket_id, origin, at) VALUES (?,?,?,?,?)",
            (desk, str(comment_id), ticket_id, origin, now)))


def desk_owned(conn: sqlite3.Connection, ticket_id: str) -> bool:
    """Is the ticket routed by a desk (``ownership: desk``)? Then omnigate neither assigns it nor times SLAs."""
    return conn.execute("SELECT 1 FROM desk_links WHERE ticket_id = ? AND owned = 1 LIMIT 1",
                        (ticket_id,)).fetchone() is not None
