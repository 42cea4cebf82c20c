"""SQLite operations for assignment, presence, queues and SLA timers
(placeholder, being written)."""

from __future__ import annotations

#: Schema migration 3 (agents, queues, SLA timers). Applied once, in order.
MIGRATION = "SELECT 1;"


class AssignOps:
    """Mixed into SQLiteStore: agents, presence, assign_next, SLA scheduler."""
