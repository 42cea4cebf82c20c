"""Request nonces remembered with the journal (WeChat/WeCom replay defence).

A signed callback's nonce is checked and recorded in the same transaction as
its journal append (:func:`journal_append_nonce`), so a restart forgets
nothing and every instance sharing the store shares the memory. A row lives
until the request's timestamp leaves the acceptance window (``expires``);
expired rows are purged as new ones arrive. The plain append
(``sqlite._journal_append``) stays the batched ``executemany`` hot path:
only appends that carry a nonce come here.
"""

from __future__ import annotations

import hashlib
import sqlite3

from connectors.base import IngestResult, NonceReused

MIGRATION = """
    CREATE TABLE nonces (
        scope      TEXT NOT NULL,
        value      TEXT NOT NULL,
        expires    INTEGER NOT NULL,
        digest     BLOB NOT NULL,
        journal_id TEXT NOT NULL,
        PRIMARY KEY (scope, value)
    ) WITHOUT ROWID;
    CREATE INDEX nonces_expires ON nonces (expires);
"""


def journal_append_nonce(conn: sqlite3.Connection, append: object, row: tuple, scope: str, value: str,
                         expires: int, now: int) -> IngestResult:
    """Append ``row`` to the journal (through ``append``) unless the nonce was
    seen: with the same body, answer the first entry (a redelivery); with
    another, raise :class:`NonceReused` (the savepoint undoes nothing stored)."""
    raw = row[4]
    digest = hashlib.sha256(raw).digest()
    seen = conn.execute("SELECT digest, journal_id FROM nonces WHERE scope = ? AND value = ?",
                        (scope, value)).fetchone()
    if seen is not None:
        if seen[0] == digest:
            return IngestResult(journal_id=seen[1], created=False)
        raise NonceReused(f"nonce {value!r} was already used with another body: a replayed signature")
    conn.execute("DELETE FROM nonces WHERE expires < ?", (now,))
    result = append(conn, *row)
    conn.execute("INSERT INTO nonces (scope, value, expires, digest, journal_id) VALUES (?,?,?,?,?)",
                 (scope, value, expires, digest, result.journal_id))
    return result
