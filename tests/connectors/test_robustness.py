"""Mangled payloads never crash a parser: every corpus file, truncated,
with bytes flipped, cut or inserted (a fixed seed, so a failure replays),
either normalizes into well-formed Inbounds or is refused with
PayloadRejected — as ``omnigate parse`` promises for payloads we have never
seen. "Well-formed" is checked, not assumed: the channel is the parser's, the
sender has a kind and a non-empty value, and the Inbound encodes as the
pipeline stores it."""

from __future__ import annotations

import random

import msgspec
import pytest

from connectors.base import PayloadRejected
from routing.model import Inbound
from routing.pipeline import Settings, lookup
from connectors.registry import parser_for
from tests.corpus import params

MUTATIONS = 25
#: ``omnigate parse`` names whose Inbounds carry another channel: every call source is ``phone``.
CHANNEL_OF = {"asterisk": "phone", "freeswitch": "phone", "twilio": "phone"}


def outcome(channel: str, raw: bytes, context: dict) -> str:
    """``"refused"`` or ``"normalized"``; anything else (a crash, a malformed
    Inbound) fails the test."""
    try:
        inbounds = parser_for(channel)(raw, context)
    except PayloadRejected as exc:
        assert str(exc), "a refusal names its reason"
        return "refused"
    assert isinstance(inbounds, list)
    for i in inbounds:
        assert isinstance(i, Inbound) and i.channel == CHANNEL_OF.get(channel, channel), i
        if i.kind == "call":  # the caller as the source gave it (maybe withheld, with a defect);
            # what must never be empty is the identity the pipeline records the call on
            assert i.sender.kind and lookup(i, Settings()).sender.value.strip(), f"a call on no one: {i.sender!r}"
        else:
            assert i.sender.kind and i.sender.value.strip(), f"an Inbound without a sender: {i.sender!r}"
        msgspec.json.encode(i)
    return "normalized"


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
    if row.channel == "phone":  # the parse name is the source: asterisk-cdr-csv → asterisk
        return row.format.split("-", 1)[0]
    if row.channel == "social":  # the file name says the platform (corpus_check.py does the same)
        return next(p for p in ("whatsapp", "messenger", "instagram", "line") if p in row.path.rsplit("/", 1)[-1])
    return "wecom" if "_work_" in row.path else row.channel


@pytest.mark.parametrize("corpus_row", params("email") + params("wechat") + params("telegram") + params("social")
                         + params("phone"),
                         indirect=True)
def test_mangled_payloads_normalize_or_are_refused(corpus_row):
    channel = _parser_name(corpus_row)
    raw = corpus_row.read()
    rng = random.Random(corpus_row.path)
    seen = {outcome(channel, mutate(raw, rng), {"channel": channel, "warn": lambda message: None})
            for _ in range(MUTATIONS)}
    assert seen <= {"refused", "normalized"}


FOREIGN = [b"", b"\x00" * 10, b"{}", b"[]", b"null", b"\xff\xfe\xfd",
           b'{"update_id": 1, "message": {"chat": {}}}', b"<xml><MsgType>text</MsgType></xml>",
           b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><xml>&a;</xml>"]
@pytest.mark.parametrize("channel", ["api", "email", "wechat", "wecom", "telegram", "whatsapp", "messenger", "line", "asterisk",
                                     "freeswitch", "twilio"])
@pytest.mark.parametrize("blob", FOREIGN)
def test_foreign_bytes_are_refused_or_normalized(channel, blob):
    result = outcome(channel, blob, {"channel": channel})
    if blob in (b"", b"\x00" * 10, b"\xff\xfe\xfd", b"null", b"[]") or b"<!DOCTYPE" in blob:
        assert result == "refused"  # nothing in these is a message, on any channel


#: JSON nested thousands deep: msgspec's depth guard raises RecursionError,
#: which used to escape the WhatsApp, Messenger, LINE, webchat and WeCom kf
#: parsers as a crash (a 500 on the live webhook).
DEEP = [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 40_000 + b"1" + b"}" * 40_000]


@pytest.mark.parametrize("channel", ["api", "telegram", "whatsapp", "messenger", "instagram", "line", "webchat", "wecom"])
@pytest.mark.parametrize("blob", DEEP, ids=["array", "object"])
def test_json_nested_too_deeply_is_refused_not_a_crash(channel, blob):
    assert outcome(channel, blob, {"channel": channel}) == "refused"


def _lone_surrogate_payloads() -> dict[str, bytes]:
    """Each platform's documented text message, its text cut in the middle of
    an emoji's UTF-16 pair the way JavaScript's JSON.stringify writes it."""
    cut = "Order 4711 \\ud83d"
    return {
        "telegram": ('{"update_id": 1, "message": {"message_id": 5, "date": 1700000000, '
                     '"chat": {"id": 42, "type": "private"}, "from": {"id": 42, "is_bot": false, "first_name": "Ann"}, '
                     f'"text": "{cut}"}}}}').encode(),
        "whatsapp": ('{"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", '
                     '"value": {"metadata": {"phone_number_id": "106540352242922"}, "messages": [{"from": "16315551234", '
                     f'"id": "wamid.X", "timestamp": "1700000000", "type": "text", "text": {{"body": "{cut}"}}}}]}}}}]}}]}}').encode(),
        "line": ('{"destination": "U1", "events": [{"type": "message", "timestamp": 1700000000000, "mode": "active", '
                 '"webhookEventId": "01H", "source": {"type": "user", "userId": "U2"}, "replyToken": "r", '
                 f'"message": {{"type": "text", "id": "m1", "text": "{cut}"}}}}]}}').encode(),
        "messenger": ('{"object": "page", "entry": [{"id": "P1", "time": 1700000000000, "messaging": [{"sender": {"id": "S1"}, '
                      f'"recipient": {{"id": "P1"}}, "timestamp": 1700000000000, "message": {{"mid": "m.1", "text": "{cut}"}}}}]}}]}}').encode(),
    }


@pytest.mark.parametrize("channel", ["telegram", "whatsapp", "line", "messenger"])
def test_half_an_emoji_escaped_alone_is_read_as_a_replacement_character(channel):
    (inbound,) = parser_for(channel)(_lone_surrogate_payloads()[channel], {"channel": channel})
    assert inbound.text == "Order 4711 \ufffd"
    msgspec.json.encode(inbound)
