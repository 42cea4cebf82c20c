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
from connectors.registry import parser_for
from tests.corpus import params

MUTATIONS = 25


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
        assert isinstance(i, Inbound) and i.channel == channel, i
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


#: Mail whose mangled copies normalize today into an Inbound with an empty sender
#: or with undecoded 8-bit header bytes (lone surrogates, which cannot be stored):
#: the email work of issue 10 (item 4: no empty identity; 8-bit headers decoded
#: by plausibility) fixes them — then these names go (an XPASS says which).
KNOWN_EMAIL_DEFECTS = {
    "kopano_gb2312_18030.eml",
    "mailparser_mail_malformed_2.eml",
    "mailparser_mail_outlook_1.eml",
    "mailparser_mail_test_12.eml",
    "rubymail_bad_encoded_subject.eml",
    "rubymail_cant_parse_from.eml",
    "rubymail_content_transfer_encoding_empty.eml",
    "rubymail_japanese_shift_jis.eml",
    "rubymail_raw_email_reply.eml",
    "talon_android.eml",
    "talon_apple_mail.eml",
    "talon_gmail.eml",
    "talon_reply-quotations-share-block.eml",
    "talon_yahoo.eml",
    "zammad_mail004.eml",
    "zammad_mail005.eml",
    "zammad_mail006.eml",
    "zammad_mail018.eml",
    "zammad_mail033-undelivered-mail-returned-to-sender.eml",
    "zammad_mail052.eml",
    "zammad_mail054.eml",
    "zammad_mail060.eml",
    "zammad_mail081.eml",
    "zammad_mail085.eml",
    "zammad_mail091.eml",
}


@pytest.mark.parametrize("corpus_row", params("email") + params("wechat") + params("telegram"), indirect=True)
def test_mangled_payloads_normalize_or_are_refused(corpus_row, request):
    if corpus_row.path.rsplit("/", 1)[-1] in KNOWN_EMAIL_DEFECTS:
        request.applymarker(pytest.mark.xfail(reason="issue 10 item 4: empty sender / undecoded 8-bit headers"))
    channel = "wecom" if "_work_" in corpus_row.path else corpus_row.channel
    raw = corpus_row.read()
    rng = random.Random(corpus_row.path)
    seen = {outcome(channel, mutate(raw, rng), {"channel": channel, "warn": lambda message: None})
            for _ in range(MUTATIONS)}
    assert seen <= {"refused", "normalized"}


FOREIGN = [b"", b"\x00" * 10, b"{}", b"[]", b"null", b"\xff\xfe\xfd",
           b'{"update_id": 1, "message": {"chat": {}}}', b"<xml><MsgType>text</MsgType></xml>",
           b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><xml>&a;</xml>"]
#: (channel, blob) cases known to normalize today with an empty sender: issue 10 item 4
#: (mail without a usable From) belongs to the email work; strict, so the fix removes it
KNOWN_EMPTY_SENDER = {("email", b'{"update_id": 1, "message": {"chat": {}}}')}


@pytest.mark.parametrize("channel", ["api", "email", "wechat", "wecom", "telegram"])
@pytest.mark.parametrize("blob", FOREIGN)
def test_foreign_bytes_are_refused_or_normalized(channel, blob, request):
    if (channel, blob) in KNOWN_EMPTY_SENDER:
        request.applymarker(pytest.mark.xfail(strict=True, reason="issue 10 item 4: no identity from a missing From"))
    result = outcome(channel, blob, {"channel": channel})
    if blob in (b"", b"\x00" * 10, b"\xff\xfe\xfd", b"null", b"[]") or b"<!DOCTYPE" in blob:
        assert result == "refused"  # nothing in these is a message, on any channel
