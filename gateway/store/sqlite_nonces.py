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
    another, raise :class:`NonceReused` (nothing stored)."""
    (result,) = _journal_append_nonce_many(conn, [(append, row, scope, value, expires, now)])
    if isinstance(result, NonceReused):
        raise result
    return result


def _journal_append_nonce_many(conn: sqlite3.Connection, argss: list) -> list[IngestResult | NonceReused]:
    """A run of nonce-carrying appends (each ``(append, row, scope, value,
    expires, now)``) in one pass: the expired nonces purged once, each nonce
    looked up, the new rows appended with one ``executemany``
    (``append.many``) and their nonces inserted with another.

    The same outcome as :func:`journal_append_nonce` one entry after the
    other: a nonce seen before (or earlier in the run) with the same body
    answers that entry's journal id, uncreated; with another body the entry's
    answer is a :class:`NonceReused` (the writer hands it to that caller
    alone: ``_Writer`` takes an exception in a ``many`` answer as that
    write's failure) and stores nothing. Expired rows are purged *before*
    the look-ups (the earliest ``now`` of the run; before the sixth pass,
    one entry at a time, a row expired but not yet purged by a later append
    still counted as seen). Under one savepoint: a statement that fails
    undoes the run, not the group.

    Why: under a flood of WeChat callbacks every intake is a nonce-carrying
    append, and one at a time each was a savepoint, a look-up, a purge, a
    one-row ``executemany`` and an insert — ~39 µs of the loop's time per
    append against ~20 for a plain one (ARCHITECTURE.md "Sixth pass (issue
    11, overload: WeChat callbacks)")."""
    conn.execute("SAVEPOINT nonces")
    try:
        out = _look_up(conn, argss)
    except BaseException:
        conn.execute("ROLLBACK TO nonces")
        conn.execute("RELEASE nonces")
        raise
    conn.execute("RELEASE nonces")
    return out


def _look_up(conn: sqlite3.Connection, argss: list) -> list[IngestResult | NonceReused]:
    """:func:`_journal_append_nonce_many`'s statements (inside its savepoint)."""
    conn.execute("DELETE FROM nonces WHERE expires < ?", (min(args[5] for args in argss),))
    out: list[IngestResult | NonceReused | int] = []  # an int: the index of the entry whose answer it shares
    taken: dict[tuple[str, str], tuple[bytes, int]] = {}  # nonce → (digest, index in ``out``) stored by this run
    fresh: list[int] = []  # indexes in ``out`` of the entries appended
    for _append, row, scope, value, _expires, _now in argss:
        digest = hashlib.sha256(row[4]).digest()
        first = taken.get((scope, value))
        if first is None:
            seen = conn.execute("SELECT digest, journal_id FROM nonces WHERE scope = ? AND value = ?",
                                (scope, value)).fetchone()
            if seen is None:
                taken[(scope, value)] = (digest, len(out))
                fresh.append(len(out))
                out.append(-1)  # filled in below, once appended
            elif seen[0] == digest:
                out.append(IngestResult(journal_id=seen[1], created=False))
            else:
                out.append(_reused(value))
        elif first[0] == digest:
            out.append(first[1])  # a retry within the run: the earlier entry's id, uncreated
        else:
            out.append(_reused(value))
    if fresh:
        append = argss[0][0]  # the same for every entry (sqlite._journal_append)
        for i, result in zip(fresh, append.many(conn, [argss[i][1] for i in fresh])):
            out[i] = result
        rows = []
        for i in fresh:
            _, _, scope, value, expires, _ = argss[i]
            rows.append((scope, value, expires, taken[(scope, value)][0], out[i].journal_id))  # type: ignore[union-attr]
        conn.executemany("INSERT INTO nonces (scope, value, expires, digest, journal_id) VALUES (?,?,?,?,?)", rows)
    return [IngestResult(journal_id=out[r].journal_id, created=False)  # type: ignore[union-attr]
            if isinstance(r, int) else r for r in out]


def _reused(value: str) -> NonceReused:
    return NonceReused(f"nonce {value!r} was already used with another body: a replayed signature")


journal_append_nonce.many = _journal_append_nonce_many  # type: ignore[attr-defined]
