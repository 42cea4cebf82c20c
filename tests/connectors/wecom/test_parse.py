"""The WeCom parser: corpus app callbacks (plain and encrypted), 微信客服
sync_msg messages (synthetic, from WeCom's documentation), and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from connectors.base import PayloadRejected
from connectors.wechat.envelope import DecryptionFailed, SignatureMismatch
from connectors.wecom.parse import parse
from tests.connectors.wechat.support import check_corpus_row, corpus_params
from tests.corpus import params, row_named

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "wecom"
SYNC = json.loads((FIXTURES / "kf_sync_msg_synthetic.json").read_text(encoding="utf-8"))
CONTEXT = {"corp_id": SYNC["corp_id"], "account": "kf"}


@pytest.mark.corpus
@pytest.mark.parametrize("corpus_row", corpus_params(params("wechat"), wecom=True), indirect=True)
def test_corpus_row(corpus_row):
    check_corpus_row(corpus_row, parse, "wecom", "wecom_userid")


def _encrypted_row(name: str):
    return row_named("wechat", name)  # fails under CI without the corpus, and whenever the file is gone


def test_forged_msg_signature_is_refused():
    row = _encrypted_row("wechatpy_work_encrypted_text")
    context = row.context
    context["query"] = dict(context["query"], msg_signature="f" * 40)
    with pytest.raises(SignatureMismatch):
        parse(row.read(), context)


def test_wrong_aes_key_is_undecryptable():
    row = _encrypted_row("wechatpy_work_encrypted_text")
    context = dict(row.context, encoding_aes_key="A" * 43)
    with pytest.raises(DecryptionFailed):
        parse(row.read(), context)


def test_inline_envelope_signature_is_verified():
    row = _encrypted_row("wechatpy_work_encrypted_reply")
    raw = row.read().replace(b"407518b7649e86ef23978113f92d27afa9296533", b"0" * 40)
    with pytest.raises(SignatureMismatch):
        parse(raw, row.context)


def test_kf_notification_normalizes_to_nothing():
    assert parse((FIXTURES / "kf_msg_or_event_synthetic.xml").read_bytes(), {}) == []


@pytest.mark.parametrize("msg", SYNC["msg_list"], ids=lambda m: m["msgid"])
def test_sync_msg_message(msg):
    want = SYNC["expected"][msg["msgid"]]
    (inbound,) = parse(msgspec.json.encode(msg), CONTEXT)
    assert (inbound.channel, inbound.account, inbound.external_id) == ("wecom", "kf", msg["msgid"])
    assert (inbound.kind, inbound.raw_type) == (want["kind"], want["raw_type"])
    assert f"{inbound.sender.kind}:{inbound.sender.value}" == want["sender"]
    assert inbound.text == want.get("text", "")
    assert len(inbound.attachments) == want.get("attachments", 0)
    assert inbound.meta.get("ticket_status") == want.get("ticket_status")
    assert (inbound.meta.get("direction"), inbound.meta.get("agent")) == (want.get("direction"), want.get("agent"))
    assert inbound.meta["open_kfid"] == "wkSyntheticKf01"
    assert int(inbound.sent_at.timestamp()) == msg["send_time"]
    assert inbound.defects == []


NEWER = json.loads((FIXTURES / "kf_sync_msg_newer_kinds_synthetic.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("msg", NEWER["msg_list"], ids=lambda m: m["msgtype"])
def test_channels_shares_and_chat_records_are_customer_messages(msg):
    (inbound,) = parse(msgspec.json.encode(msg), CONTEXT)
    assert (inbound.kind, inbound.raw_type) == ("message", msg["msgtype"])
    assert inbound.text == NEWER["expected"][msg["msgid"]]
    assert inbound.sender.value == "wmSyntheticCustomer01" and inbound.defects == []


def test_customer_messages_carry_the_kf_session():
    (inbound,) = parse(msgspec.json.encode(SYNC["msg_list"][1]), CONTEXT)
    assert inbound.thread.session_id == "wkSyntheticKf01:wmSyntheticCustomer01"
    assert inbound.meta["origin"] == "customer"


def test_servicer_presence_is_recorded():
    (inbound,) = parse(msgspec.json.encode(SYNC["msg_list"][7]), CONTEXT)
    assert inbound.meta["servicer_presence"] == "away"


@pytest.mark.parametrize(
    "raw, reason",
    [(b'{"msgtype": "text"}', "no msgid"), (b"[1, 2]", "not well-formed XML"), (b'{"msgid": ', "malformed JSON")],
)
def test_bad_sync_msg_json_is_refused(raw, reason):
    with pytest.raises(PayloadRejected, match=reason):
        parse(raw, CONTEXT)


def test_send_time_out_of_range_is_a_defect_not_a_crash():
    # kf/sync_msg (developer.work.weixin.qq.com/document/path/94670) gives send_time in Unix seconds;
    # one beyond what a datetime holds raised OverflowError.
    msg = {**SYNC["msg_list"][0], "send_time": 10**20}
    (inbound,) = parse(msgspec.json.encode(msg), CONTEXT)
    assert inbound.sent_at is None and any("out of range" in d for d in inbound.defects)
