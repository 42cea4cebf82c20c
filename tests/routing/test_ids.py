"""Ids (``routing.model.new_id``): ULIDs, Crockford base32, increasing within a millisecond."""

from __future__ import annotations

import random
from datetime import datetime, timezone

from routing import model
from routing.model import new_id, ulid_time

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid(ms: int, rnd: int) -> str:
    """The ULID of (48-bit time, 80-bit random), per the spec: 26 characters of 5 bits, most significant first."""
    n = (ms << 80) | rnd
    return "".join(CROCKFORD[(n >> (5 * i)) & 31] for i in range(25, -1, -1))


def test_ids_are_ulids_of_their_time_and_random_part_whatever_the_millisecond(monkeypatch) -> None:
    monkeypatch.setattr(model, "_ulid_last", [0, 0])  # ids never go back in time: this test's must not last
    rng = random.Random(7)
    for i in range(5000):  # new milliseconds, repeated ones (the cached time prefix), and past ones
        ms = rng.choice([rng.getrandbits(48), 1_764_000_000_000 + i // 5, 1_700_000_000_000])
        made = new_id(ms)
        used_ms, rnd = model._ulid_last
        assert made == ulid(used_ms, rnd)


def test_ids_made_in_one_millisecond_increase_and_carry_their_time(monkeypatch) -> None:
    monkeypatch.setattr(model, "_ulid_last", [0, 0])
    ms = int(datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc).timestamp() * 1000)
    ids = [new_id(ms) for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert ulid_time(ids[0]) == datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
