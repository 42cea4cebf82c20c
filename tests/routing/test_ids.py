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


def test_ids_re_rendered_in_part_equal_the_spec_across_carries_and_wraps(monkeypatch) -> None:
    """``new_id`` re-renders only the last two characters while the random part's
    high 70 bits stay: every id, through carries into those bits and the 80-bit
    wrap, is still the spec's rendering of the (time, random) it recorded."""
    rng = random.Random(11)
    ms = 1_764_000_000_000
    for start in (0, 1023 - 3, 5 * 1024 - 1, (1 << 80) - 4, rng.getrandbits(80), (rng.getrandbits(70) << 10) | 1020):
        monkeypatch.setattr(model, "_ulid_last", [ms, start])
        made = []
        for _ in range(2100):  # two carries at least
            made.append(new_id(ms - rng.choice([0, 0, 5])))  # the same or a past millisecond: increments
            assert made[-1] == ulid(*model._ulid_last)
        if start < (1 << 80) - 2100:
            assert made == sorted(made) and len(set(made)) == len(made)
        ms += rng.randrange(1, 1000)
        fresh = new_id(ms)  # a new millisecond: a new random part, rendered whole
        assert fresh == ulid(*model._ulid_last) and model._ulid_last[0] == ms
