"""Phone call logs end to end through a running gateway: Asterisk CDR and
CEL uploads, FreeSWITCH mod_json_cdr POSTs and mod_cdr_csv uploads, Twilio
status callbacks (signed, and forged), the call-update and anonymous-caller
rules of the pipeline, internal calls."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from gateway import keys
from tests.corpus import require_corpus
from tests.e2e.conftest import Gateway
from tests.gateway.conftest import AUTH

UPLOAD = "upload-token-1"
FS_USER, FS_PASS = "cdr", "fs-secret"
TW_TOKEN = "twilio-auth-token-0123456789abcdef"
PUBLIC = "https://support.example.com"

SECTION = {
    "accounts": {
        "pbx1": {"source": "asterisk", "upload_token": UPLOAD},
        "fs1": {"source": "freeswitch", "username": FS_USER, "password": FS_PASS, "upload_token": UPLOAD},
        "main": {"source": "twilio", "auth_token": TW_TOKEN, "public_url": PUBLIC},
    },
    "internal_patterns": [r"\d{3,4}"],
}


def cdr(src: str, dst: str, start: str, disposition: str, uniqueid: str, billsec: int = 0, clid: str = "") -> str:
    answer = start if disposition == "ANSWERED" else ""
    return (f'"","{src}","{dst}","from-trunk","{clid}","SIP/trunk-0001","SIP/1001-0002","Dial","SIP/1001",'
            f'"{start}","{answer}","{start}",{billsec + 5},{billsec},"{disposition}","DOCUMENTATION","{uniqueid}",""\n')


@pytest.fixture
async def gw(start_gateway) -> Gateway:
    return await start_gateway(phone=SECTION)


async def upload(gw: Gateway, body: bytes, account: str = "pbx1", status: int = 200) -> dict:
    resp = await gw.client.post(f"/channels/phone/{account}/upload", data=body,
                                headers={"Authorization": f"Bearer {UPLOAD}", "Content-Type": "text/csv"})
    assert resp.status == status, await resp.text()
    return await resp.json()


async def calls_of(gw: Gateway, contact_id: str) -> list[dict]:
    items = (await gw.get(f"/api/v1/contacts/{contact_id}/timeline"))["items"]
    return [e for e in items if e["kind"] == "call"]


async def test_missed_call_from_unknown_number_opens_a_ticket_and_the_next_one_threads(gw: Gateway) -> None:
    await upload(gw, cdr("13800138000", "4008001234", "2026-11-30 10:00:00", "NO ANSWER", "1700000000.1").encode())
    await gw.drain()
    entry, ticket, contact = await gw.only_ticket()
    assert {"kind": "phone", "value": "+8613800138000"} in contact["identities"]
    (call,) = await calls_of(gw, contact["id"])
    assert call["ticket_id"] == ticket["id"]
    assert call["data"]["call"]["disposition"] == "missed"
    assert call["data"]["call"]["started_at"] == "2026-11-30T10:00:00+08:00"  # naive CDR time in Asia/Shanghai
    # the same customer calls again and nobody picks up: onto the open ticket
    await upload(gw, cdr("138 0013 8000", "4008001234", "2026-11-30 10:05:00", "NO ANSWER", "1700000300.2").encode())
    await gw.drain()
    calls = await calls_of(gw, contact["id"])
    assert len(calls) == 2 and {c["ticket_id"] for c in calls} == {ticket["id"]}
    assert len((await gw.get(f"/api/v1/contacts/{contact['id']}"))["tickets"]) == 1


async def test_rows_of_one_call_make_one_call_updated_by_the_later_row(gw: Gateway) -> None:
    rows = (cdr("13900139000", "4008001234", "2026-11-30 11:00:00", "NO ANSWER", "1700001000.7")
            + cdr("13900139000", "4008001234", "2026-11-30 11:00:00", "ANSWERED", "1700001000.7", billsec=42))
    result = await upload(gw, rows.encode())
    assert (result["rows"], result["accepted"], result["errors"]) == (2, 2, [])
    await gw.drain()
    journal = await gw.journal()
    assert len(journal) == 2 and {e["status"] for e in journal} == {"processed"}
    contact_id = journal[0]["contact_id"]
    (call,) = await calls_of(gw, contact_id)
    assert call["data"]["call"]["disposition"] == "answered" and call["data"]["call"]["duration_s"] == 47
    assert call["text"] == "Inbound call from +8613900139000, answered, 47 s"
    assert [r["journal_id"] for r in call["data"]["call_reports"]] == [journal[1]["id"]]
    # the same file again changes nothing (row keys), and so does a replay of the update
    await upload(gw, rows.encode())
    await gw.drain()
    assert len(await gw.journal()) == 2
    resp = await gw.client.post(f"/api/v1/journal/{journal[1]['id']}/replay", headers=AUTH)
    assert resp.status in (200, 202), await resp.text()
    await gw.drain()
    (call,) = await calls_of(gw, contact_id)
    assert len(call["data"]["call_reports"]) == 1


async def test_bad_row_is_reported_with_its_line_and_the_rest_is_taken(gw: Gateway) -> None:
    body = (cdr("13700137000", "400", "2026-11-30 12:00:00", "ANSWERED", "1.1", billsec=10)
            + '"","13700137001","400","ctx","","SIP/x","","Dial","","not a date","","",1,1,"ANSWERED","DOC","1.2",""\n'
            + cdr("13700137002", "400", "2026-11-30 12:01:00", "BUSY", "1.3"))
    result = await upload(gw, body.encode())
    assert result["accepted"] == 2
    assert result["errors"] == [{"line": 2, "error": "start 'not a date' is not a time"}]
    await gw.drain()
    statuses = sorted((e["status"], e.get("error") or "") for e in await gw.journal())
    assert [s for s, _ in statuses] == ["failed", "processed", "processed"]
    assert "line 2: start 'not a date' is not a time" in statuses[0][1]


async def test_corpus_cdr_with_a_test_caller_is_one_anonymous_call(gw: Gateway) -> None:
    """good.csv: five rows of uniqueid 1231977075.0 from src 'test'."""
    body = (require_corpus() / "phone" / "asterisk-testsuite_good_cdrlib.csv").read_bytes()
    assert (await upload(gw, body))["accepted"] == 5
    await gw.drain()
    journal = await gw.journal()
    assert {e["contact_id"] for e in journal} and len({e["contact_id"] for e in journal}) == 1
    contact = await gw.get(f"/api/v1/contacts/{journal[0]['contact_id']}")
    (identity,) = contact["identities"]
    assert identity["kind"] == "external" and identity["value"] == "anonymous-call:asterisk:pbx1:1231977075.0"
    (call,) = await calls_of(gw, contact["id"])
    assert call["data"]["call"]["disposition"] == "answered"  # one leg answered: the call was answered
    assert call["data"]["sender"]["value"] == identity["value"]
    assert any("not a phone number" in d for d in call["data"]["defects"])


async def test_cel_upload_is_one_call_per_linkedid(gw: Gateway) -> None:
    body = (require_corpus() / "phone" / "asterisk-testsuite_CELMaster1.csv").read_bytes()
    result = await upload(gw, body)
    assert (result["rows"], result["accepted"]) == (1, 1)  # 16 event rows, one linkedid
    await gw.drain()
    (entry,) = await gw.journal()
    (call,) = await calls_of(gw, entry["contact_id"])
    assert call["external_id"] == "1335310195.0" and call["data"]["call"]["disposition"] == "answered"


async def test_freeswitch_json_cdr_with_basic_auth_in_small_segments(gw: Gateway) -> None:
    body = (require_corpus() / "phone" / "cgrates_fs_json_cdr_1.json").read_bytes()

    async def segments():
        for i in range(0, len(body), 700):
            yield body[i:i + 700]

    bad = base64.b64encode(f"{FS_USER}:wrong".encode()).decode()
    resp = await gw.client.post("/channels/phone/fs1/cdr", data=body, headers={"Authorization": f"Basic {bad}"})
    assert resp.status == 401
    assert await gw.journal() == []
    good = base64.b64encode(f"{FS_USER}:{FS_PASS}".encode()).decode()
    resp = await gw.client.post("/channels/phone/fs1/cdr", data=segments(),
                                headers={"Authorization": f"Basic {good}", "Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    await gw.drain()
    (entry,) = await gw.journal()
    assert entry["status"] == "processed"
    (call,) = await calls_of(gw, entry["contact_id"])
    # 1001 → 1002 are both extensions under internal_patterns: an internal call, on no ticket
    assert call["data"]["call"]["direction"] == "internal" and call.get("ticket_id") is None
    assert call["data"]["why_no_ticket"] == "internal call"


async def test_cdr_table_export_upload_gives_each_row_its_header(gw: Gateway) -> None:
    # FreePBX's CDR report export (header row, calldate, 26 columns): each row is its own journal
    # entry, so each carries the header; before, every row failed ("26 fields …")
    body = (Path(__file__).resolve().parents[1] / "fixtures" / "phone" / "synthetic_asterisk_cdr_table_export.csv").read_bytes()
    result = await upload(gw, body)
    assert (result["rows"], result["accepted"], result["errors"]) == (2, 2, [])
    await gw.drain()
    journal = await gw.journal()
    assert sorted(e["status"] for e in journal) == ["processed", "processed"]
    calls = [c for e in journal for c in await calls_of(gw, e["contact_id"])]
    assert sorted((c["external_id"], c["data"]["call"]["disposition"]) for c in calls) == [
        ("1720000000.1", "answered"), ("1720000931.3", "missed")]


async def test_freeswitch_csv_upload_with_the_default_template(gw: Gateway) -> None:
    body = (require_corpus() / "phone" / "freeswitch-tools_Master.csv").read_bytes()
    result = await upload(gw, body, account="fs1")
    assert (result["rows"], result["accepted"]) == (10, 10)
    await gw.drain()
    journal = await gw.journal()
    assert len(journal) == 9  # rows 8 and 9 are byte-identical: one journal entry
    calls = {}
    for contact_id in {e["contact_id"] for e in journal}:
        for c in await calls_of(gw, contact_id):
            calls[c["external_id"]] = c
    assert len(calls) == 8  # ten rows, eight uuids
    assert len(calls["7adced1a-4c7c-11ea-b08c-2bfc2a06d67d"]["data"]["call_reports"]) == 1


def twilio_post(gw: Gateway, params: dict, signature: str | None = None):
    path = "/channels/phone/main/status"
    sig = signature or RequestValidator(TW_TOKEN).compute_signature(PUBLIC + path, params)
    return gw.client.post(path, data=urlencode(params),
                          headers={"X-Twilio-Signature": sig, "Content-Type": "application/x-www-form-urlencoded"})


TWILIO = {"AccountSid": "AC0123", "CallSid": "CA42", "From": "+8613600136000", "To": "+8610010001000",
          "Direction": "inbound", "ApiVersion": "2010-04-01"}


async def test_twilio_callbacks_of_one_call_update_it_and_a_forged_one_is_refused(gw: Gateway) -> None:
    forged = await twilio_post(gw, {**TWILIO, "CallStatus": "no-answer"}, signature="bm90IGEgc2lnbmF0dXJl")
    assert forged.status == 401 and (await forged.json())["field"] == "X-Twilio-Signature"
    tampered_sig = RequestValidator(TW_TOKEN).compute_signature(PUBLIC + "/channels/phone/main/status",
                                                               {**TWILIO, "CallStatus": "ringing"})
    tampered = await twilio_post(gw, {**TWILIO, "CallStatus": "completed"}, signature=tampered_sig)
    assert tampered.status == 401
    assert await gw.journal() == []  # nothing stored
    metrics = await (await gw.client.get("/metrics")).text()
    assert 'omnigate_rejected_total{channel="phone",reason="bad_signature"} 2.0' in metrics
    assert (await twilio_post(gw, {**TWILIO, "CallStatus": "ringing"})).status == 204
    await gw.drain()
    resp = await twilio_post(gw, {**TWILIO, "CallStatus": "no-answer", "CallDuration": "0"})
    assert resp.status == 204
    await gw.drain()
    journal = await gw.journal()
    assert len(journal) == 2 and {e["status"] for e in journal} == {"processed"}
    contact = await gw.get(f"/api/v1/contacts/{journal[0]['contact_id']}")
    assert {"kind": "phone", "value": "+8613600136000"} in contact["identities"]
    (call,) = await calls_of(gw, contact["id"])
    assert call["external_id"] == "CA42" and call["data"]["call"]["disposition"] == "missed"
    assert call["ticket_id"] is not None


async def test_twilio_dial_action_on_the_status_route_makes_the_call_missed(gw: Gateway) -> None:
    dial = {**TWILIO, "CallSid": "CA43", "CallStatus": "in-progress", "DialCallSid": "CA44",
            "DialCallStatus": "no-answer", "DialBridged": "false"}
    forged = await twilio_post(gw, dial, signature="bm90IGEgc2lnbmF0dXJl")
    assert forged.status == 401 and await gw.journal() == []
    resp = await twilio_post(gw, dial)
    assert resp.status == 200 and resp.content_type == "text/xml"
    assert (await resp.text()).endswith("<Response/>")  # TwiML: nothing more, the call ends
    await gw.drain()
    # the parent's status callback afterwards: Twilio had answered it to run the TwiML
    assert (await twilio_post(gw, {**TWILIO, "CallSid": "CA43", "CallStatus": "completed",
                                   "CallDuration": "31"})).status == 204
    await gw.drain()
    journal = await gw.journal()
    assert len(journal) == 2 and {e["status"] for e in journal} == {"processed"}
    (call,) = await calls_of(gw, journal[0]["contact_id"])
    c = call["data"]["call"]
    assert (c["disposition"], c["duration_s"]) == ("missed", 31) and len(call["data"]["call_reports"]) == 1


async def test_upload_needs_its_token(gw: Gateway) -> None:
    resp = await gw.client.post("/channels/phone/pbx1/upload", data=b"x", headers={"Authorization": "Bearer no"})
    assert resp.status == 401 and resp.content_type == "application/problem+json"
    resp = await gw.client.post("/channels/phone/nobody/upload", data=b"x")
    assert resp.status == 404
    assert await gw.journal() == []


async def test_an_upload_token_of_bytes_not_utf8_is_refused_not_a_500(gw: Gateway) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    writer.write(b"POST /channels/phone/pbx1/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                 b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\nab")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert await gw.journal() == []


async def test_twilio_stale_timestamp_and_foreign_account_are_refused(start_gateway) -> None:
    section = {"accounts": {"main": {**SECTION["accounts"]["main"], "account_sid": "AC0123"}}}
    gw = await start_gateway(phone=section)
    from datetime import datetime, timezone

    gw.app[keys.CONNECTORS]["phone"].clock = lambda: datetime(2026, 11, 29, 23, 33, 20, tzinfo=timezone.utc)
    fresh = {**TWILIO, "CallStatus": "completed", "CallDuration": "12", "Timestamp": "Sun, 29 Nov 2026 23:30:00 +0000"}
    stale = {**fresh, "Timestamp": "Fri, 27 Nov 2026 23:30:00 +0000"}
    resp = await twilio_post(gw, stale)
    assert resp.status == 403 and (await resp.json())["field"] == "Timestamp"
    resp = await twilio_post(gw, {**fresh, "AccountSid": "AC9999"})
    assert resp.status == 403 and (await resp.json())["field"] == "AccountSid"
    assert await gw.journal() == []
    assert (await twilio_post(gw, fresh)).status == 204
    assert (await twilio_post(gw, fresh)).status == 204  # Twilio retrying: the same journal entry
    await gw.drain()
    (entry,) = await gw.journal()
    (call,) = await calls_of(gw, entry["contact_id"])
    assert call["data"]["call"]["started_at"] == "2026-11-29T23:29:48Z"


async def test_bodies_over_the_limit_are_refused(start_gateway) -> None:
    gw = await start_gateway(phone={**SECTION, "max_body_bytes": 1000})
    body = cdr("13800138000", "400", "2026-11-30 10:00:00", "ANSWERED", "9.9", billsec=3) * 20

    async def chunks():
        for i in range(0, len(body), 100):
            yield body[i:i + 100].encode()

    resp = await gw.client.post("/channels/phone/pbx1/upload", data=chunks(),
                                headers={"Authorization": f"Bearer {UPLOAD}"})
    assert resp.status == 413
    assert await gw.journal() == []


@pytest.mark.parametrize("section, problem", [
    ({"accounts": {"t": {"source": "twilio", "public_url": PUBLIC}}}, "needs auth_token"),
    ({"accounts": {"t": {"source": "twilio", "auth_token": "x"}}}, "needs public_url"),
    ({"accounts": {"f": {"source": "freeswitch"}}}, "needs username and password"),
    ({"accounts": {"t": {"source": "twilio", "auth_token": "x", "public_url": PUBLIC, "cdr_path": "/x"}}}, "cdr_path"),
    ({"accounts": {"f": {"source": "skype"}}}, "phone.accounts"),
    ({"accounts": {"f": {"source": "freeswitch", "upload_token": "x", "csv_template": '"${a}"'}}}, "uuid"),
    ({"internal_patterns": ["("]}, "internal_patterns"),
])
def test_config_errors_name_the_key(section, problem) -> None:
    from connectors.base import Fatal
    from connectors.phone.client import load_config

    with pytest.raises(Fatal, match=problem):
        load_config(section)


async def test_multipart_upload_like_curl_form(gw: Gateway) -> None:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("file", cdr("sip:+8613500135000@trunk.example", "4008001234", "2026-11-30 13:00:00", "NO ANSWER",
                               "1700009000.1").encode(), filename="Master.csv", content_type="text/csv")
    resp = await gw.client.post("/channels/phone/pbx1/upload", data=form, headers={"Authorization": f"Bearer {UPLOAD}"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["accepted"] == 1
    await gw.drain()
    entry, ticket, contact = await gw.only_ticket()
    assert {"kind": "phone", "value": "+8613500135000"} in contact["identities"]  # the number of the SIP URI


@pytest.mark.parametrize("content_type, body", [
    ("multipart/form-data; boundary=x", b"--x\r\nnot a header line\r\n\r\ndata\r\n--x--\r\n"),
    ("multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=file\r\n\r\ndata\r\n--x--\r\n"),
])
async def test_malformed_multipart_upload_is_400_and_stores_nothing(gw: Gateway, content_type, body) -> None:
    resp = await gw.client.post("/channels/phone/pbx1/upload", data=body,
                                headers={"Authorization": f"Bearer {UPLOAD}", "Content-Type": content_type})
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/problem+json"
    assert "multipart" in (await resp.json())["detail"] and (await resp.json())["field"] == "body"
    assert await gw.journal() == []


async def test_multipart_upload_that_stalls_mid_body_is_408(gw: Gateway, monkeypatch) -> None:
    import asyncio

    import connectors.phone.client as phone_client

    monkeypatch.setattr(phone_client, "BODY_TIMEOUT_S", 0.3)
    stalled = asyncio.Event()

    async def body():
        yield b"--x\r\nContent-Disposition: form-data; name=file; filename=a.csv\r\n\r\n"
        yield cdr("13800138000", "400", "2026-11-30 10:00:00", "ANSWERED", "9.8", billsec=3).encode()
        await stalled.wait()  # never sends the rest (slowloris)

    resp = await gw.client.post("/channels/phone/pbx1/upload", data=body(),
                                headers={"Authorization": f"Bearer {UPLOAD}",
                                         "Content-Type": "multipart/form-data; boundary=x"})
    assert resp.status == 408, await resp.text()
    assert resp.content_type == "application/problem+json"
    stalled.set()
    assert await gw.journal() == []


async def test_twilio_signs_over_the_gateways_public_url_when_the_section_sets_none(
        aiohttp_client, tmp_path, gateway_clock) -> None:
    """CONTRACTS.md: ``public_url`` (``OMNIGATE_PUBLIC_URL``) is the address signature checks use."""
    from gateway.app import create_app
    from gateway.config import load
    from tests.gateway.conftest import TOKEN

    section = {"accounts": {"main": {"source": "twilio", "auth_token": TW_TOKEN}}}
    env = {"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(tmp_path / "data"),
           "OMNIGATE_RULES_DIR": str(tmp_path / "none"), "OMNIGATE_PUBLIC_URL": PUBLIC}
    app = create_app(load(None, environ=env, flags={"phone": section}), clock=gateway_clock)
    gw = Gateway(await aiohttp_client(app), app)
    assert (await twilio_post(gw, {**TWILIO, "CallStatus": "no-answer"})).status == 204  # signed over PUBLIC + path
    other = RequestValidator(TW_TOKEN).compute_signature("https://elsewhere.example.com/channels/phone/main/status",
                                                         {**TWILIO, "CallStatus": "busy"})
    assert (await twilio_post(gw, {**TWILIO, "CallStatus": "busy"}, signature=other)).status == 401
    await gw.drain()
    assert len(await gw.journal()) == 1
