"""The pure call-log parsers (no outside resource): every phone row of the
corpus, the labelled synthetic fixtures, `omnigate parse` as operators run it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from twilio.request_validator import RequestValidator

from connectors.base import PayloadRejected
from connectors.phone.parse import parse, template_columns
from connectors.registry import validate_all
from routing.model import Inbound
from tests.corpus import Row, params

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "phone"
OMNIGATE = str(Path(sys.executable).with_name("omnigate"))
SHANGHAI_9_15 = datetime(2026, 11, 30, 1, 15, 2, tzinfo=timezone.utc)


def fixture(name: str, **context) -> list[Inbound]:
    warnings: list[str] = []
    out = parse((FIXTURES / name).read_bytes(), {**context, "warn": warnings.append})
    for i in out:
        i.meta["_warnings"] = "|".join(warnings)
    return out


def omnigate_parse(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([OMNIGATE, "parse", *args], capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- corpus


def _source(row: Row) -> str:
    return row.format.split("-", 1)[0]


@pytest.mark.corpus
@pytest.mark.parametrize("row", params("phone"))
def test_corpus_row(row: Row | None) -> None:
    if row is None:
        from tests.corpus import require_corpus

        require_corpus()
        return
    context = {**row.context, "channel": _source(row)}
    if row.invalid:
        with pytest.raises(PayloadRejected):
            parse(row.read(), context)
        return
    calls = parse(row.read(), context)
    facts = row.facts()
    assert all(c.channel == "phone" and c.kind == "call" and c.call is not None for c in calls)
    if "cel" in row.format:
        assert len(calls) == len({c.external_id for c in calls}) == 1  # one call per linkedid
    elif "rows" in facts:
        assert len(calls) == int(facts["rows"])
    for key in ("sip_from_user", "caller_id_number", "src"):
        if key in facts:
            assert calls[0].sender.value == facts[key].strip("'")
    if "uuid" in facts:
        assert calls[0].external_id == facts["uuid"]
    for c in calls:
        assert c.call.disposition in (None, "answered", "missed", "busy", "failed", "voicemail")
        assert c.call.started_at is None or c.call.started_at.tzinfo is not None


def test_corpus_asterisk_cdr_times_are_shanghai_unless_told(tmp_path):
    from tests.corpus import require_corpus

    raw = (require_corpus() / "phone" / "asterisk-testsuite_Master2.csv").read_bytes()
    (call,) = parse(raw, {"channel": "asterisk"})
    assert call.call.started_at.isoformat() == "2010-04-02T00:26:32+08:00"
    (call,) = parse(raw, {"channel": "asterisk", "timezone": "Europe/Berlin"})
    assert call.call.started_at.isoformat() == "2010-04-02T00:26:32+02:00"
    assert call.external_id == "1270167992.0" and call.call.duration_s == 7


def test_corpus_freeswitch_json_uses_the_epochs():
    from tests.corpus import require_corpus

    (call,) = parse((require_corpus() / "phone" / "cgrates_fs_json_cdr_1.json").read_bytes(), {"channel": "freeswitch"})
    c = call.call
    assert (c.from_, c.to, c.disposition, c.duration_s) == ("1001", "1002", "answered", 71)
    assert c.started_at == datetime(2018, 1, 11, 10, 25, 44, 534355, tzinfo=timezone.utc)
    assert c.answered_at == datetime(2018, 1, 11, 10, 25, 47, 954373, tzinfo=timezone.utc)


# ---------------------------------------------------------------- synthetic fixtures


def test_asterisk_cdr_bad_row_is_reported_by_line_and_the_rest_taken():
    calls = fixture("synthetic_asterisk_cdr_bad_row.csv", channel="asterisk", internal_patterns=[r"\d{4}"])
    assert calls[0].meta["_warnings"] == "line 2: start 'yesterday' is not a time"
    assert [c.external_id for c in calls] == ["1764465302.1", "1764465600.4", "1764466200.6", "1764466800.8"]
    missed, voicemail, internal, outbound = calls
    assert missed.sender.value == "+8613812345678" and missed.sender.name == "Zhang San"  # E.164, region CN
    assert missed.call.to == "+864008001234"
    assert (missed.call.direction, missed.call.disposition, missed.call.answered_at) == ("inbound", "missed", None)
    assert missed.call.started_at == SHANGHAI_9_15
    assert voicemail.call.disposition == "voicemail"
    assert voicemail.call.recording_url == "https://pbx.example.com/rec/1764465600.4.wav"
    assert voicemail.sender.value == "anonymous" and any("not a phone number" in d for d in voicemail.defects)
    assert internal.call.direction == "internal"
    assert (outbound.call.direction, outbound.sender.value, outbound.call.disposition) == (
        "outbound", "+8613812345678", "busy")


def test_without_internal_patterns_every_call_is_inbound():
    calls = fixture("synthetic_asterisk_cdr_bad_row.csv", channel="asterisk")
    assert {c.call.direction for c in calls} == {"inbound"}


def test_freeswitch_csv_with_the_operators_template():
    context = json.loads((FIXTURES / "synthetic_freeswitch_custom_template.context.json").read_text())
    missed, answered = fixture("synthetic_freeswitch_custom_template.csv", channel="freeswitch", **context)
    assert missed.external_id == "9f1c2a9e-3c1d-4d8e-9f00-000000000001" and missed.call.disposition == "missed"
    assert (answered.call.disposition, answered.call.duration_s) == ("answered", 124)
    assert answered.call.answered_at.isoformat() == "2026-11-30T10:05:04+08:00"
    # with the module's default template the same file does not fit: every row is reported, the file refused
    with pytest.raises(PayloadRejected, match="line 1: 9 fields; the template has 15"):
        parse((FIXTURES / "synthetic_freeswitch_custom_template.csv").read_bytes(), {"channel": "freeswitch"})


def test_a_template_without_uuid_is_refused():
    with pytest.raises(PayloadRejected, match="uuid"):
        template_columns('"${caller_id_number}","${start_stamp}"')


def test_twilio_completed_callback():
    (call,) = fixture("synthetic_twilio_status_completed.form", channel="twilio")
    c = call.call
    assert call.external_id == "CA5a3e4b0f5d4b3f2f3e2c1b0a9f8e7d6c" and call.sender.value == "+8613912345678"
    assert (c.direction, c.disposition, c.duration_s) == ("inbound", "answered", 35)
    assert c.ended_at == datetime(2026, 11, 30, 2, 5, 40, tzinfo=timezone.utc)
    assert c.started_at == datetime(2026, 11, 30, 2, 5, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize("duration", ["abc", "-1", "9" * 40, "1e308", "NaN", "604801"])
def test_twilio_callback_with_a_bad_duration_is_the_call_with_a_defect_not_a_parser_crash(duration):
    """A signed callback whose CallDuration is no number, negative or past any
    call crashed the parser (RowError, OverflowError from the start time):
    the journal entry failed with a traceback at error level."""
    raw = (FIXTURES / "synthetic_twilio_status_completed.form").read_text()
    raw = raw.replace("CallDuration=35", f"CallDuration={duration}").replace("Duration=1&", "")
    (call,) = parse(raw.encode(), {"channel": "twilio"})
    assert call.kind == "call" and call.external_id == "CA5a3e4b0f5d4b3f2f3e2c1b0a9f8e7d6c"
    assert call.call.disposition == "answered" and call.call.ended_at is not None
    assert call.call.duration_s is None and call.call.started_at is None
    assert any("CallDuration" in d for d in call.defects), call.defects


def test_twilio_anonymous_ringing_callback():
    (call,) = fixture("synthetic_twilio_status_ringing_anonymous.form", channel="twilio")
    assert call.sender.value == "anonymous" and call.call.disposition is None
    assert any("withheld" in d for d in call.defects)


def test_twilio_duration_that_is_no_number_is_a_defect_not_a_crash():
    raw = (FIXTURES / "synthetic_twilio_status_completed.form").read_bytes().replace(b"CallDuration=35",
                                                                                    b"CallDuration=abc")
    (call,) = parse(raw, {"channel": "twilio"})
    assert (call.call.disposition, call.call.duration_s) == ("answered", None)
    assert "CallDuration 'abc' is not a number" in call.defects


def test_twilio_dial_action_reports_the_dialed_leg():
    # <Dial action="…">: the parent is in progress, the agent's leg was not picked up
    (call,) = fixture("synthetic_twilio_dial_action_no_answer.form", channel="twilio")
    c = call.call
    assert call.external_id == "CA7d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a" and call.sender.value == "+8613812345678"
    assert (c.direction, c.disposition, c.duration_s, c.dialed) == ("inbound", "missed", None, True)
    assert call.raw_type == "twilio.dial.no-answer" and call.meta["dial_call_sid"].startswith("CA9f8e")
    raw = (FIXTURES / "synthetic_twilio_dial_action_no_answer.form").read_bytes()
    answered = raw.replace(b"DialCallStatus=no-answer&DialBridged=false",
                           b"DialCallStatus=completed&DialBridged=true&DialCallDuration=48"
                           b"&RecordingUrl=https%3A%2F%2Fapi.twilio.com%2Frec%2FRE1")
    (call,) = parse(answered, {"channel": "twilio"})
    assert (call.call.disposition, call.call.duration_s, call.call.recording_url) == (
        "answered", 48, "https://api.twilio.com/rec/RE1")
    for status, disposition in (("busy", "busy"), ("failed", "failed"), ("canceled", "missed")):
        (call,) = parse(raw.replace(b"=no-answer", b"=" + status.encode()), {"channel": "twilio"})
        assert call.call.disposition == disposition


def test_twilio_signature_is_checked_when_the_context_has_the_token():
    raw = (FIXTURES / "synthetic_twilio_status_completed.form").read_bytes()
    from urllib.parse import parse_qsl

    url = "https://support.example.com/channels/phone/main/status"
    sig = RequestValidator("tok").compute_signature(url, dict(parse_qsl(raw.decode(), keep_blank_values=True)))
    ok = {"channel": "twilio", "auth_token": "tok", "url": url, "headers": {"X-Twilio-Signature": sig}}
    assert parse(raw, ok)[0].call.disposition == "answered"
    with pytest.raises(PayloadRejected, match="X-Twilio-Signature"):
        parse(raw, {**ok, "auth_token": "other"})
    with pytest.raises(PayloadRejected, match="X-Twilio-Signature"):
        parse(raw.replace(b"CallDuration=35", b"CallDuration=5"), ok)


@pytest.mark.parametrize("raw, source", [
    (b"\x00\x01\x02", "asterisk"), (b"{not json", "freeswitch"), (b'{"a": 1}', "freeswitch"),
    (b"From=%2B1&To=%2B2", "twilio"), (b"", "asterisk"),
])
def test_what_is_not_a_call_log_is_refused(raw, source):
    with pytest.raises(PayloadRejected):
        parse(raw, {"channel": source})


# ---------------------------------------------------------------- the CLI


def test_parse_list_names_the_call_sources_and_the_registry_is_valid():
    names = omnigate_parse("--list").stdout.split()
    assert {"asterisk", "freeswitch", "twilio"} <= set(names)
    assert validate_all(["phone"]) == []


def test_cli_prints_good_rows_warns_per_bad_row_and_exits_0():
    r = omnigate_parse("asterisk", str(FIXTURES / "synthetic_asterisk_cdr_bad_row.csv"))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 4 and {x["channel"] for x in lines} == {"phone"} and {x["kind"] for x in lines} == {"call"}
    assert lines[0]["call"]["from"] == "+8613812345678" and lines[0]["account"] == "asterisk"
    assert r.stderr.strip() == (f"{FIXTURES / 'synthetic_asterisk_cdr_bad_row.csv'}: warning: "
                                "line 2: start 'yesterday' is not a time")


def test_cli_takes_the_template_through_context(tmp_path):
    ctx = FIXTURES / "synthetic_freeswitch_custom_template.context.json"
    r = omnigate_parse("freeswitch", str(FIXTURES / "synthetic_freeswitch_custom_template.csv"), "--context", str(ctx))
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2


def test_cli_exits_1_when_no_row_parses(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('"only","three","fields"\n')
    r = omnigate_parse("asterisk", str(bad))
    assert r.returncode == 1 and f"{bad}: error: no row of this asterisk call log parses" in r.stderr


@pytest.mark.parametrize("value, region, expected", [
    ("13812345678", "CN", "+8613812345678"), ("138 1234 5678", "CN", "+8613812345678"),
    ("008613812345678", "CN", "+8613812345678"), ("+1 415 555 0100", "CN", "+14155550100"),
    ("4155550100", "US", "+14155550100"), ("1001", "CN", "1001"), ("anonymous", "CN", "anonymous"),
])
def test_numbers_are_e164_with_the_default_region(value, region, expected):
    from connectors.phone.parse import e164

    assert e164(value, region) == expected


def test_mod_json_cdr_encodings_all_read_the_same():
    """json_cdr.conf.xml: ``encode`` false | true (form field cdr=) | base64, ``encode-values`` (the default)."""
    import base64
    from urllib.parse import quote, quote_plus

    from tests.corpus import require_corpus

    raw = (require_corpus() / "phone" / "cgrates_fs_json_cdr_1.json").read_bytes()
    doc = json.loads(raw)
    encoded_values = json.dumps({**doc, "variables": {k: quote(v) if isinstance(v, str) else v
                                                      for k, v in doc["variables"].items()}}).encode()
    forms = [raw, b"cdr=" + quote_plus(raw.decode()).encode(), base64.b64encode(raw),
             b"cdr=" + quote_plus(base64.b64encode(raw).decode()).encode(), encoded_values]
    calls = [parse(body, {"channel": "freeswitch"})[0] for body in forms]
    assert {(c.external_id, c.call.from_, c.call.duration_s, c.call.disposition) for c in calls} == {
        ("3da8bf84-c133-4959-9e24-e72875cb33a1", "1001", 71, "answered")}


def test_cdr_custom_sample_layout_is_read():
    """cdr_custom.conf.sample's Master.csv mapping (clid, src, dst, dcontext, channel, dstchannel, lastapp,
    lastdata, start, answer, end, duration, billsec, disposition, amaflags, accountcode, uniqueid,
    userfield, sequence): refused before ("end '65' is not a time")."""
    (call,) = fixture("synthetic_asterisk_cdr_custom.csv")
    assert (call.external_id, call.sender.value, call.sender.name) == ("1720000000.1", "+8613800138000", "Alice")
    assert (call.call.disposition, call.call.duration_s, call.meta["layout"]) == ("answered", 65, "cdr_custom")
    assert call.meta["_warnings"] == ""


def test_cdr_table_export_under_a_header_row_is_read_by_column_name():
    """The CDR database table (cdr_adaptive_odbc/cdr_mysql's asteriskcdrdb.cdr, FreePBX's CDR report
    export): a header row, calldate for the start, no answer or end column, 26 columns — every row
    was refused ("26 fields; a cdr_csv row has 16 to 21")."""
    answered, missed = fixture("synthetic_asterisk_cdr_table_export.csv")
    assert answered.meta["_warnings"] == ""
    assert (answered.external_id, answered.sender.value, answered.sender.name) == (
        "1720000000.1", "+8613800138000", "Alice")
    assert (answered.call.disposition, answered.call.duration_s, answered.meta["layout"]) == ("answered", 65, "header")
    shanghai = timezone(timedelta(hours=8))
    assert answered.call.started_at == datetime(2024, 7, 3, 17, 46, 40, tzinfo=shanghai)
    assert answered.call.ended_at == datetime(2024, 7, 3, 17, 47, 45, tzinfo=shanghai)  # calldate + duration
    assert answered.call.answered_at == datetime(2024, 7, 3, 17, 46, 45, tzinfo=shanghai)  # end - billsec
    assert (answered.meta["did"], answered.meta["recording_file"]) == (
        "4008001234", "in-4008001234-13800138000-20240703-174640-1720000000.1.wav")
    # no clid: the caller's name from cnam
    assert (missed.sender.name, missed.call.disposition, missed.call.answered_at) == ("Bob", "missed", None)


def test_caller_names_in_gbk_are_not_latin1_mojibake():
    """cdr_csv writes a trunk's caller name bytes as given: GBK from a Chinese trunk was read as
    Latin-1 ('ÕÅÈý'); a Windows-1252 name still reads as such."""
    first, second = fixture("synthetic_asterisk_cdr_gbk_names.csv")
    assert (first.sender.name, second.sender.name) == ("张三", "王小明")
    latin = (FIXTURES / "synthetic_asterisk_cdr_gbk_names.csv").read_bytes().decode("gbk").replace(
        "张三", "Jürgen Groß").encode("cp1252", "replace")
    assert parse(latin, {"channel": "asterisk"})[0].sender.name == "Jürgen Groß"


def test_cel_without_linkedid_end_ends_at_the_first_channels_chan_end():
    """cel.conf may list its events without LINKEDID_END (docs.asterisk.org, CEL "events"): the
    CHAN_END of the channel the call started on ends it; unanswered, it was missed."""
    (call,) = fixture("synthetic_asterisk_cel_without_linkedid_end.csv")
    assert (call.external_id, call.call.disposition, call.defects) == ("1720000000.5", "missed", [])
    assert call.call.ended_at is not None and call.call.duration_s == 30


def test_mod_xml_cdr_record_is_one_call_posted_raw_or_as_a_form():
    from urllib.parse import quote_plus

    raw = (FIXTURES / "synthetic_freeswitch_xml_cdr.xml").read_bytes()
    for body, context in ((raw, {"channel": "freeswitch"}), (b"cdr=" + quote_plus(raw.decode()).encode(), {"channel": "freeswitch"}),
                          (raw, {"channel": "phone"})):  # the daemon's channel sniffs it
        (call,) = parse(body, context)
        assert (call.kind, call.raw_type, call.external_id) == ("call", "freeswitch.xml", "8c2f7a6e-3c4d-11ef-9f27-0242ac120002")
        assert (call.sender.value, call.sender.name) == ("+8613800138000", "Zhang San")  # URL-encoded value decoded
        assert (call.call.disposition, call.call.duration_s) == ("answered", 65)
        assert call.call.started_at == datetime(2024, 7, 3, 9, 46, 40, tzinfo=timezone.utc)
    with pytest.raises(PayloadRejected, match="DOCTYPE"):
        parse(b'<?xml version="1.0"?><!DOCTYPE cdr [<!ENTITY a "b">]><cdr><variables/></cdr>', {"channel": "freeswitch"})
    with pytest.raises(PayloadRejected, match="no <variables>"):
        parse(b"<cdr><channel_data/></cdr>", {"channel": "freeswitch"})


def test_mod_xml_cdr_variable_named_with_a_colon_is_read():
    # <nolocal:req_uuid> (an "export nolocal:…" variable) is no namespace prefix: the record
    # was refused as invalid XML ("unbound prefix")
    (call,) = fixture("synthetic_freeswitch_xml_cdr_nolocal_var.xml")
    assert (call.raw_type, call.external_id, call.sender.value) == (
        "freeswitch.xml", "2b7d4c1e-5f6a-4b8c-9d0e-0242ac120003", "+8613900139000")
    assert (call.call.disposition, call.call.duration_s) == ("answered", 122)
    with pytest.raises(PayloadRejected, match="invalid XML"):
        parse(b"<cdr><variables><uuid>x</variables></cdr>", {"channel": "freeswitch"})


@pytest.mark.parametrize("name, source", [
    ("synthetic_twilio_status_completed.form", "twilio"), ("synthetic_asterisk_cdr_bad_row.csv", "asterisk"),
    ("synthetic_freeswitch_custom_template.csv", "freeswitch"),
])
def test_mangled_fixtures_normalize_or_are_refused(name, source):
    import random

    from tests.connectors.test_robustness import mutate, outcome

    raw, rng = (FIXTURES / name).read_bytes(), random.Random(name)
    context = {"channel": source, "warn": lambda message: None}
    if source == "freeswitch":
        context.update(json.loads((FIXTURES / "synthetic_freeswitch_custom_template.context.json").read_text()))
    seen = {outcome(source, mutate(raw, rng), context) for _ in range(200)}
    assert seen == {"refused", "normalized"}


def test_without_a_warn_callback_skipped_rows_become_defects():
    raw = (FIXTURES / "synthetic_asterisk_cdr_bad_row.csv").read_bytes()
    calls = parse(raw, {"channel": "asterisk", "line": "not a number"})
    assert calls[0].defects[-1] == "skipped line 2: start 'yesterday' is not a time"


def test_mod_json_cdr_nested_thousands_deep_is_refused_not_a_crash():
    raw = (FIXTURES / "synthetic_freeswitch_json_cdr_minimal.json").read_bytes()
    (call,) = parse(raw, {"channel": "freeswitch"})
    assert (call.external_id, call.call.disposition, call.call.duration_s) == (
        "6a7b8c9d-0000-4000-8000-000000000002", "answered", 65)
    deep = raw.replace(b'"callflow":[', b'"callflow":[' + b"[" * 5000 + b"]" * 5000 + b",")
    with pytest.raises(PayloadRejected, match="nested too deeply"):  # was the json module's RecursionError
        parse(deep, {"channel": "freeswitch"})


def test_an_epoch_beyond_what_a_datetime_holds_is_refused_not_a_crash():
    # mod_json_cdr's *_uepoch/*_epoch variables are Unix micro/seconds; a corrupted one raised OSError.
    doc = {"variables": {"uuid": "u-1", "caller_id_number": "13800138000", "destination_number": "100",
                         "start_uepoch": "9" * 23, "hangup_cause": "NORMAL_CLEARING", "duration": "5", "billsec": "5"}}
    with pytest.raises(PayloadRejected, match="start_uepoch .* is out of range"):
        parse(json.dumps(doc).encode(), {"channel": "freeswitch"})


def test_an_epoch_in_digits_int_does_not_read_falls_back_to_the_stamp_not_a_crash():
    # "²" is a digit to str.isdigit() but not to int(): the ValueError was a 500 at POST /channels/phone/<fs>/cdr
    doc = {"variables": {"uuid": "u-2", "caller_id_number": "13800138000", "destination_number": "100",
                         "start_epoch": "\u00b2", "start_stamp": "2026-12-01 10:00:00", "end_epoch": "\u00b2",
                         "hangup_cause": "NORMAL_CLEARING", "duration": "5", "billsec": "5"}}
    (call,) = parse(json.dumps(doc).encode(), {"channel": "freeswitch", "timezone": "UTC"})
    assert call.external_id == "u-2" and call.call.started_at == datetime(2026, 12, 1, 10, tzinfo=timezone.utc)
