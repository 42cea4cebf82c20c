"""Mangled payloads never crash a parser: every corpus file, truncated,
with bytes flipped, cut or inserted (a fixed seed, so a failure replays),
either normalizes or is refused with PayloadRejected — as ``omnigate parse``
promises for payloads we have never seen."""

from __future__ import annotations

import random

import pytest

from connectors.base import PayloadRejected
from connectors.registry import parser_for
from tests.corpus import params

MUTATIONS = 25


def mutate(raw: bytes, rng: random.Random) -> bytes:
    b = bytearray(raw)
    op = rng.randrange(4)
    if op == 0 and len(b) > 2:
        return bytes(b[: rng.randrange(len(b))])
    if op == 1:
        for _ in range(rng.randrange(1, 8)):
            if b:
                b[rng.randrange(len(b))] = rng.randrange(256)
    elif op == 2 and len(b) > 10:
        start = rng.randrange(len(b))
        del b[start : start + rng.randrange(1, 200)]
    else:
        at = rng.randrange(len(b) + 1)
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 50)))
    return bytes(b)


def _parser_name(row) -> str:
    if row.channel == "social":  # the file name says the platform (corpus_check.py does the same)
        return next(p for p in ("whatsapp", "messenger", "instagram", "line") if p in row.path.rsplit("/", 1)[-1])
    return "wecom" if "_work_" in row.path else row.channel


@pytest.mark.parametrize("corpus_row", params("email") + params("wechat") + params("telegram") + params("social"),
                         indirect=True)
def test_mangled_payloads_normalize_or_are_refused(corpus_row):
    channel = _parser_name(corpus_row)
    parse = parser_for(channel)
    raw = corpus_row.read()
    rng = random.Random(corpus_row.path)
    for _ in range(MUTATIONS):
        try:
            parse(mutate(raw, rng), {"channel": channel, "warn": lambda message: None})
        except PayloadRejected:
            pass


@pytest.mark.parametrize("channel", ["api", "email", "wechat", "wecom", "telegram", "whatsapp", "messenger", "line"])
@pytest.mark.parametrize("blob", [b"", b"\x00" * 10, b"{}", b"[]", b"null", b"\xff\xfe\xfd",
                                  b'{"update_id": 1, "message": {"chat": {}}}', b"<xml><MsgType>text</MsgType></xml>",
                                  b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><xml>&a;</xml>"])
def test_foreign_bytes_are_refused_or_normalized(channel, blob):
    try:
        parser_for(channel)(blob, {"channel": channel})
    except PayloadRejected:
        pass
