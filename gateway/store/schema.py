"""SQLite schema, versioned: ``PRAGMA user_version`` is the number of
migrations applied; each migration is applied once, in order, in one
transaction. Never edit a released migration: add the next one.

Times are integer milliseconds since the epoch (UTC); JSON columns hold
msgspec-encoded JSON. ``seq`` columns are plain rowids (no AUTOINCREMENT:
rows are never deleted, so rowids only grow, and AUTOINCREMENT would cost an
extra b-tree write per insert on the ingest path).
"""

from gateway.store import (
    sqlite_assign,
    sqlite_console,
    sqlite_delivery,
    sqlite_desks,
    sqlite_nonces,
    sqlite_replies,
    sqlite_sla,
    sqlite_tickets,
    sqlite_tokens,
    sqlite_webhooks,
)

MIGRATIONS: list[str] = [
    # 1: the core slice
    """
    CREATE TABLE journal (
        seq          INTEGER PRIMARY KEY,
        id           TEXT NOT NULL UNIQUE,
        channel      TEXT NOT NULL,
        account      TEXT NOT NULL,
        key          TEXT NOT NULL,
        received_at  INTEGER NOT NULL,
        status       TEXT NOT NULL DEFAULT 'pending',
        attempts     INTEGER NOT NULL DEFAULT 0,
        error        TEXT,
        meta         TEXT,
        raw          BLOB NOT NULL,
        ticket_id    TEXT,
        contact_id   TEXT,
        processed_at INTEGER,
        UNIQUE (channel, account, key)
    );
    CREATE INDEX journal_status ON journal (status, seq);
    CREATE INDEX journal_received ON journal (received_at);

    CREATE TABLE contacts (
        id          TEXT PRIMARY KEY,
        name        TEXT,
        tier        TEXT,
        tags        TEXT NOT NULL DEFAULT '[]',
        attributes  TEXT NOT NULL DEFAULT '{}',
        flags       TEXT NOT NULL DEFAULT '[]',
        merged_into TEXT,
        version     INTEGER NOT NULL DEFAULT 1,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE INDEX contacts_merged ON contacts (merged_into) WHERE merged_into IS NOT NULL;

    CREATE TABLE identities (
        kind              TEXT NOT NULL,
        value             TEXT NOT NULL,
        contact_id        TEXT NOT NULL,
        origin_contact_id TEXT NOT NULL,
        reason            TEXT,
        created_at        INTEGER NOT NULL,
        PRIMARY KEY (kind, value)
    ) WITHOUT ROWID;
    CREATE INDEX identities_contact ON identities (contact_id);

    CREATE TABLE tickets (
        id                TEXT PRIMARY KEY,
        number            INTEGER NOT NULL UNIQUE,
        contact_id        TEXT NOT NULL,
        origin_contact_id TEXT NOT NULL,
        subject           TEXT,
        status            TEXT NOT NULL,
        priority          TEXT NOT NULL,
        team              TEXT,
        skills            TEXT NOT NULL DEFAULT '{}',
        assignee          TEXT,
        tags              TEXT NOT NULL DEFAULT '[]',
        channels          TEXT NOT NULL DEFAULT '[]',
        reply_to          TEXT,
        follow_up_of      TEXT,
        sla               TEXT,
        version           INTEGER NOT NULL DEFAULT 1,
        created_at        INTEGER NOT NULL,
        updated_at        INTEGER NOT NULL,
        last_message_at   INTEGER NOT NULL,
        first_response_at INTEGER,
        solved_at         INTEGER,
        closed_at         INTEGER
    );
    CREATE INDEX tickets_contact ON tickets (contact_id, last_message_at);

    CREATE TABLE timeline (
        seq               INTEGER PRIMARY KEY,
        id                TEXT NOT NULL UNIQUE,
        contact_id        TEXT NOT NULL,
        origin_contact_id TEXT NOT NULL,
        ticket_id         TEXT,
        kind              TEXT NOT NULL,
        at                INTEGER NOT NULL,
        channel           TEXT,
        journal_id        TEXT,
        external_id       TEXT,
        subject           TEXT,
        text              TEXT,
        attachments       TEXT,
        data              TEXT,
        linked_to         TEXT,
        edited_at         INTEGER,
        text_hash         TEXT
    );
    CREATE INDEX timeline_contact ON timeline (contact_id, at, seq);
    CREATE INDEX timeline_ticket ON timeline (ticket_id, at, seq);
    CREATE INDEX timeline_hash ON timeline (contact_id, text_hash, at) WHERE text_hash IS NOT NULL;

    CREATE TABLE message_keys (
        channel     TEXT NOT NULL,
        account     TEXT NOT NULL,
        external_id TEXT NOT NULL,
        journal_id  TEXT NOT NULL,
        timeline_id TEXT,
        ticket_id   TEXT,
        contact_id  TEXT,
        PRIMARY KEY (channel, account, external_id)
    ) WITHOUT ROWID;

    CREATE TABLE thread_refs (
        ref       TEXT PRIMARY KEY,
        ticket_id TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY,
        id         TEXT NOT NULL UNIQUE,
        topic      TEXT NOT NULL,
        ticket_id  TEXT,
        payload    TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        status     TEXT NOT NULL DEFAULT 'pending',
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_at    INTEGER NOT NULL,
        error      TEXT
    );
    CREATE INDEX outbox_due ON outbox (status, next_at);

    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE state (
        key        TEXT PRIMARY KEY,
        value      TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE audit (
        seq     INTEGER PRIMARY KEY,
        at      INTEGER NOT NULL,
        actor   TEXT NOT NULL,
        action  TEXT NOT NULL,
        subject TEXT NOT NULL,
        data    TEXT
    );
    """,
    # 2: replies and outbox delivery
    sqlite_replies.MIGRATION,
    # 3: agents, presence, queues, SLA timers
    sqlite_assign.MIGRATION,
    # 4: request nonces remembered with the journal (WeChat/WeCom replay defence)
    sqlite_nonces.MIGRATION,
    # 5: delivery reports find their reply; when a contact last wrote on a channel
    sqlite_delivery.MIGRATION,
    # 6: the REST API: ticket list indexes, mentions, per-agent API tokens
    sqlite_tickets.MIGRATION + sqlite_tokens.MIGRATION,
    # 7: ticket participants (who may thread onto a ticket by mail headers
    # besides its contact) and the auto-reply ledger (RFC 3834 rate limits)
    """
    CREATE TABLE ticket_participants (
        ticket_id TEXT NOT NULL,
        kind      TEXT NOT NULL,
        value     TEXT NOT NULL,
        source    TEXT NOT NULL,
        added_at  INTEGER NOT NULL,
        PRIMARY KEY (ticket_id, kind, value)
    ) WITHOUT ROWID;

    CREATE TABLE auto_reply_log (
        seq     INTEGER PRIMARY KEY,
        address TEXT NOT NULL,
        at      INTEGER NOT NULL
    );
    CREATE INDEX auto_reply_log_address ON auto_reply_log (address, at);
    CREATE INDEX auto_reply_log_at ON auto_reply_log (at);
    """,
    # 8: webhook endpoints, delivery queue, dead letters, delivery log; journal raw pruning
    sqlite_webhooks.MIGRATION,
    # 9: help-desk sync: omnigate ↔ desk ticket links, desk comments seen
    sqlite_desks.MIGRATION,
    # 10: the agent console: sign-in sessions, canned replies
    sqlite_console.MIGRATION,
    # 11: each ticket's replies indexed apart (the SLA sync's response tracking)
    sqlite_sla.MIGRATION,
]
