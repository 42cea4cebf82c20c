"""The SQLite snapshot reads each identity's owner and the owner's contact
row in one statement: the same owners and contacts as reading the owners
first and then each distinct owner's row (an oracle test on stored
contacts sharing identities, one of them with its row gone)."""

from __future__ import annotations

from datetime import datetime, timezone

from gateway.store.sqlite import SQLiteStore, _dec, _snapshot
from routing.model import Inbound, Sender
from routing.pipeline import Settings, decide, lookup
from routing.state import ContactState

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc)


def _inbound(n: int, email: str, phone: str | None = None) -> Inbound:
    meta = {"phone": phone} if phone else {}
    return Inbound(channel="api", account="api", external_id=f"x{n}", kind="message",
                   sender=Sender("email", email), text=f"question {n}", meta=meta)


def _plain(conn, look) -> tuple[dict, dict]:
    """Owners, then each distinct owner's contact row: the reads as first written."""
    owners, contacts = {}, {}
    for ident in look.identities:
        r = conn.execute("SELECT contact_id FROM identities WHERE kind = ? AND value = ?",
                         (ident.kind, ident.value)).fetchone()
        if r:
            owners[ident.key()] = r[0]
    for cid in set(owners.values()):
        r = conn.execute("SELECT id, version, name, tier, tags, flags FROM contacts WHERE id = ?", (cid,)).fetchone()
        if r:
            contacts[cid] = ContactState(id=r[0], version=r[1], name=r[2], tier=r[3],
                                         tags=tuple(_dec.decode(r[4])), flags=tuple(_dec.decode(r[5])))
    return owners, contacts


async def test_owners_and_contacts_are_those_of_the_two_step_reads(tmp_path):
    store = SQLiteStore.in_dir(tmp_path)
    settings = Settings()
    try:
        stored = [_inbound(1, "a@example.cn", "+8613800138001"), _inbound(2, "b@example.cn", "+8613800138002"),
                  _inbound(3, "c@example.cn"), _inbound(4, "a@example.cn")]
        for n, inbound in enumerate(stored):
            look = lookup(inbound, settings)
            await store.commit(decide(inbound, f"j{n}", await store.snapshot(look, NOW), settings, look))
        conn = store._writer.conn
        # c's contact row gone: its identity still names it as owner
        cid = conn.execute("SELECT contact_id FROM identities WHERE value = 'c@example.cn'").fetchone()[0]
        conn.execute("DELETE FROM contacts WHERE id = ?", (cid,))
        asked = [
            _inbound(10, "a@example.cn"),  # one identity, one contact
            _inbound(11, "a@example.cn", "+8613800138001"),  # two identities of one contact
            _inbound(12, "a@example.cn", "+8613800138002"),  # identities of two contacts
            _inbound(13, "c@example.cn", "+8613800138002"),  # an owner without its row, and another contact
            _inbound(14, "new@example.cn", "+8613800138009"),  # nobody's
        ]
        for inbound in asked:
            look = lookup(inbound, settings)
            snap = _snapshot(conn, look, NOW)
            owners, contacts = _plain(conn, look)
            assert (snap.owners, snap.contacts) == (owners, contacts), inbound.external_id
        assert len(_snapshot(conn, lookup(asked[2], settings), NOW).contacts) == 2
        assert cid not in _snapshot(conn, lookup(asked[3], settings), NOW).contacts
    finally:
        await store.close()
