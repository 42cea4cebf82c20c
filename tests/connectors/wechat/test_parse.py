"""The Official Account parser against the corpus, synthetic fixtures, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.base import PayloadRejected
from connectors.wechat.envelope import DecryptionFailed, SignatureMismatch
from connectors.wechat.parse import parse
from connectors.wechat.safexml import UnsafeXml
from tests.connectors.wechat.support import AES_KEY, TOKEN, check_corpus_row, corpus_params, envelope, plain_query
from tests.corpus import params

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "wechat"
APPID = "wxsyntheticapp01"
TEXT = (
    "<xml><ToUserName><![CDATA[gh_synthetic01]]></ToUserName><FromUserName><![CDATA[oUser1]]></FromUserName>"
    "<CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好]]></Content>"
    "<MsgId>42</MsgId></xml>"
)


@pytest.mark.corpus
@pytest.mark.parametrize("corpus_row", corpus_params(params("wechat"), wecom=False), indirect=True)
def test_corpus_row(corpus_row):
    check_corpus_row(corpus_row, parse, "wechat", "wechat_openid")


def test_appid_scopes_the_openid_and_names_the_account():
    (inbound,) = parse(TEXT.encode(), {"appid": APPID})
    assert inbound.sender.value == f"{APPID}:oUser1"
    assert inbound.account == APPID
    assert (inbound.external_id, inbound.text) == ("42", "你好")


@pytest.mark.parametrize(
    "name, raw_type, text, attachment",
    [
        ("oa_voice_recognition_synthetic.xml", "voice", "我的订单还没发货", ("audio/amr", "voice-media-1")),
        ("oa_shortvideo_synthetic.xml", "shortvideo", "", ("video/mp4", "shortvideo-media-1")),
        ("oa_file_synthetic.xml", "file", "invoice.pdf\nMarch invoice", ("application/octet-stream", None)),
    ],
)
def test_synthetic_message_kinds(name, raw_type, text, attachment):
    (inbound,) = parse((FIXTURES / name).read_bytes(), {})
    assert (inbound.kind, inbound.raw_type, inbound.text) == ("message", raw_type, text)
    (att,) = inbound.attachments
    assert (att.content_type, att.url) == attachment


def test_miniprogram_card_is_a_customer_message():
    (inbound,) = parse((FIXTURES / "oa_miniprogrampage_synthetic.xml").read_bytes(), {})
    assert (inbound.kind, inbound.raw_type) == ("message", "miniprogrampage")
    assert inbound.text == "订单详情\npages/order/detail?id=4711"
    assert inbound.meta["AppId"] == "wxsyntheticmini01" and inbound.external_id == "7300000000000000004"


@pytest.mark.parametrize("length", ["\u00b2", "9" * 40, "-1", "abc"])
def test_a_file_length_no_size_holds_is_size_zero_not_a_crash(length):
    # "²" is a digit to str.isdigit() but not to int() (a ValueError: the parser crashed), and
    # forty nines are no size the store's 64-bit integers hold
    raw = (FIXTURES / "oa_file_synthetic.xml").read_text().replace("<FileTotalLen>48213", f"<FileTotalLen>{length}")
    (inbound,) = parse(raw.encode(), {})
    assert [(a.name, a.size) for a in inbound.attachments] == [("invoice.pdf", 0)]


def test_an_element_given_twice_reads_the_first():
    (inbound,) = parse((FIXTURES / "oa_text_duplicate_content_synthetic.xml").read_bytes(), {})
    assert (inbound.kind, inbound.text) == ("message", "我要退货")


@pytest.mark.parametrize(
    "name",
    [
        "oa_text_gbk_declared_synthetic.xml",  # encoding="GBK": expat takes no multi-byte encoding
        "oa_text_gb2312_declared_utf8_bytes_synthetic.xml",  # declared gb2312, written UTF-8
        "oa_text_gbk_undeclared_synthetic.xml",  # GB18030 bytes, no declaration
        "oa_text_control_chars_synthetic.xml",  # U+0001 and U+0008 in the CDATA
        "oa_text_msgid_spelled_msgID_synthetic.xml",  # WxJava's spelling of MsgId
    ],
)
def test_relayed_text_in_wrong_but_common_shapes_is_read(name):
    (inbound,) = parse((FIXTURES / name).read_bytes(), {"appid": APPID})
    assert (inbound.kind, inbound.text) == ("message", "请问订单什么时候发货？")
    assert inbound.sender.value == f"{APPID}:oSyntheticUser7"
    assert inbound.external_id == "24100000000000007"


def test_nested_elements_go_to_meta_and_nesting_thousands_deep_is_no_crash():
    raw = (FIXTURES / "oa_pic_sysphoto_event_synthetic.xml").read_bytes()
    (event,) = parse(raw, {})
    assert (event.kind, event.raw_type, event.meta["SendPicsInfo.Count"]) == ("event", "pic_sysphoto", "1")
    assert event.meta["SendPicsInfo.PicList.item.PicMd5Sum"] == "1b5f7c23b5bf75682a53e7b6d163e185"
    # an element nested 5,000 deep (15 KB, well inside the size limit) was a RecursionError
    deep = raw.replace(b"<Count>1</Count>", b"<Count>1</Count>" + b"<a>" * 5000 + b"v" + b"</a>" * 5000)
    (event,) = parse(deep, {})
    assert event.raw_type == "pic_sysphoto" and event.meta["SendPicsInfo.Count"] == "1"
    assert not any(k.count(".") > 9 for k in event.meta)


def test_an_event_keeps_its_documented_key_beside_a_job_msgid():
    raw = (b"<xml><ToUserName>gh_1</ToUserName><FromUserName>o1</FromUserName><CreateTime>5</CreateTime>"
           b"<MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><MsgID>200163836</MsgID></xml>")
    (inbound,) = parse(raw, {})
    assert inbound.external_id == "o1:5:TEMPLATESENDJOBFINISH"
    assert inbound.meta["MsgID"] == "200163836"


def test_an_event_keeps_its_content_as_text():
    # device_text / device_event (the hardware platform) carry their data in Content;
    # it was dropped (Content is not meta), leaving an empty event
    (inbound,) = parse((FIXTURES / "oa_device_text_synthetic.xml").read_bytes(), {"appid": APPID})
    assert (inbound.kind, inbound.raw_type) == ("event", "device_text")
    assert inbound.text == "6K6+5aSH5bey5byA5py6"
    assert inbound.external_id == "7300000000000000011"
    assert inbound.meta["DeviceID"] == "dev-synthetic-0001"


def test_unionid_goes_to_meta():
    (inbound,) = parse((FIXTURES / "oa_text_unionid_synthetic.xml").read_bytes(), {"appid": APPID})
    assert inbound.meta["unionid"] == "uSyntheticUnion0002"
    assert "UnionId" not in inbound.meta


def test_kf_session_events_map_to_ticket_status():
    close = TEXT.replace("<MsgType><![CDATA[text]]></MsgType>", "<MsgType>event</MsgType><Event>kf_close_session</Event>")
    close = close.replace("<MsgId>42</MsgId>", "")
    (inbound,) = parse(close.encode(), {})
    assert (inbound.kind, inbound.raw_type, inbound.meta["ticket_status"]) == ("event", "kf_close_session", "solved")
    assert inbound.external_id == "oUser1:1700000000:kf_close_session"


def test_malformed_create_time_is_a_defect_not_an_error():
    (inbound,) = parse(TEXT.replace("1700000000", "soon").encode(), {})
    assert inbound.sent_at is None and inbound.defects == ["CreateTime 'soon' is not a Unix time"]


# ---------------------------------------------------------------- signatures and envelopes


def test_plain_signature_is_checked_when_the_context_has_the_token():
    (inbound,) = parse(TEXT.encode(), {"token": TOKEN, "query": plain_query()})
    assert inbound.external_id == "42"
    with pytest.raises(SignatureMismatch, match="signature does not match"):
        parse(TEXT.encode(), {"token": TOKEN, "query": plain_query(token="forged")})


def test_safe_mode_envelope_is_verified_and_decrypted():
    body, msg_signature = envelope("oa", TEXT, APPID)
    context = {"token": TOKEN, "encoding_aes_key": AES_KEY, "appid": APPID, "query": plain_query(msg_signature=msg_signature)}
    (inbound,) = parse(body, context)
    assert (inbound.sender.value, inbound.text) == (f"{APPID}:oUser1", "你好")


def test_envelope_with_a_forged_msg_signature_is_refused():
    body, _ = envelope("oa", TEXT, APPID)
    context = {"token": TOKEN, "encoding_aes_key": AES_KEY, "appid": APPID, "query": plain_query(msg_signature="0" * 40)}
    with pytest.raises(SignatureMismatch, match="msg_signature does not match"):
        parse(body, context)


@pytest.mark.parametrize("forged", ["签名" * 20, "\udcff" * 40, ""])
def test_a_signature_of_any_characters_is_a_mismatch_not_a_crash(forged):
    """Signatures are compared in constant time on bytes: one that is not
    ASCII (a query's bytes may decode to anything) is a plain mismatch."""
    body, msg_signature = envelope("oa", TEXT, APPID)
    query = plain_query(msg_signature=msg_signature)
    with pytest.raises(SignatureMismatch):
        parse(TEXT.encode(), {"token": TOKEN, "query": {**query, "signature": forged or "x"}})
    context = {"token": TOKEN, "encoding_aes_key": AES_KEY, "appid": APPID,
               "query": {**query, "msg_signature": forged or "x"}}
    with pytest.raises(SignatureMismatch, match="msg_signature does not match"):
        parse(body, context)


def test_envelope_for_another_appid_is_undecryptable():
    body, msg_signature = envelope("oa", TEXT, "wxsomeoneelse")
    context = {"token": TOKEN, "encoding_aes_key": AES_KEY, "appid": APPID, "query": {"msg_signature": msg_signature, "timestamp": "1411525903", "nonce": "461056294"}}
    with pytest.raises(DecryptionFailed, match=f"not addressed to appid {APPID}"):
        parse(body, context)


def test_envelope_without_secrets_is_refused():
    body, msg_signature = envelope("oa", TEXT, APPID)
    with pytest.raises(DecryptionFailed, match="not all known"):
        parse(body, {"query": {"msg_signature": msg_signature, "timestamp": "1", "nonce": "2"}})


# ---------------------------------------------------------------- unsafe or foreign bytes


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b'<!DOCTYPE xml [<!ENTITY lol "lol">]><xml><Content>&lol;</Content></xml>', "DOCTYPE"),
        (b'<!DOCTYPE xml SYSTEM "http://127.0.0.1/evil.dtd"><xml><MsgType>text</MsgType></xml>', "DOCTYPE"),
        (b"<xml><Content>&lol;</Content></xml>", "undefined entity"),
        (b"<xml><MsgType>text</MsgType>", "not well-formed"),
        (b'{"MsgType": "text"}', "not well-formed"),
        (b"<html><body>hi</body></html>", "root element is <html>"),
        (b"<xml><A>" + b"x" * 300_000 + b"</A></xml>", "exceeds"),
    ],
)
def test_unsafe_or_foreign_xml_is_refused(raw, reason):
    with pytest.raises(UnsafeXml, match=reason):
        parse(raw, {})


def test_callback_without_msgtype_is_refused():
    with pytest.raises(PayloadRejected, match="no MsgType"):
        parse(b"<xml><FromUserName>o</FromUserName></xml>", {})
