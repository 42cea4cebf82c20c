"""The social connectors' webhook intake against a real aiohttp server and
an in-memory journal: bodies read whole whatever the TCP segmentation (and
chunked encoding), size limits, what is refused before anything is stored;
and what the platforms' error answers mean for the outbox."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from connectors.base import Fatal
from connectors.graph import send_error as graph_error
from connectors.line.client import LineConnector
from connectors.line.client import send_error as line_error
from connectors.messenger.client import MessengerConnector
from connectors.whatsapp.client import WhatsAppConnector, window_refusal
from tests.connectors.memory import MemoryContext

SECRET = "app-secret"
WA = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
    "metadata": {"phone_number_id": "106540352242922"}, "contacts": [{"wa_id": "16315551234", "profile": {"name": "K"}}],
    "messages": [{"from": "16315551234", "id": "wamid.SEG", "timestamp": "1790000000", "type": "text",
                  "text": {"body": "x" * 3000}}]}}]}]}).encode()
FB = json.dumps({"object": "page", "entry": [{"id": "1065", "messaging": [
    {"sender": {"id": "62"}, "recipient": {"id": "1065"}, "timestamp": 1, "message": {"mid": "m_SEG", "text": "y" * 3000}}]}]}).encode()
LINE = json.dumps({"destination": "Ubot", "events": [
    {"type": "message", "timestamp": 1, "webhookEventId": "01SEG", "source": {"type": "user", "userId": "U1"},
     "deliveryContext": {"isRedelivery": False}, "message": {"id": "4687", "type": "text", "text": "z" * 3000}}]}).encode()


@dataclass
class Case:
    channel: str
    cls: Any
    config: dict
    path: str
    body: bytes
    header: str

    def sign(self, body: bytes, secret: str = SECRET) -> str:
        digest = hmac.new(secret.encode(), body, hashlib.sha256)
        return base64.b64encode(digest.digest()).decode() if self.channel == "line" else "sha256=" + digest.hexdigest()


CASES = [
    Case("whatsapp", WhatsAppConnector, {"app_secret": SECRET, "max_body_bytes": 4096}, "/channels/whatsapp", WA,
         "X-Hub-Signature-256"),
    Case("messenger", MessengerConnector, {"app_secret": SECRET, "max_body_bytes": 4096}, "/channels/messenger", FB,
         "X-Hub-Signature-256"),
    Case("line", LineConnector, {"max_body_bytes": 4096, "accounts": {"shop": {"channel_id": "1650", "channel_secret": SECRET}}},
         "/channels/line/shop", LINE, "X-Line-Signature"),
]


async def serve(aiohttp_server, case: Case) -> tuple[MemoryContext, Any]:
    ctx = MemoryContext(config=case.config, channel=case.channel)
    app = web.Application()
    app.add_routes(case.cls(ctx).routes())
    server = await aiohttp_server(app, host="127.0.0.1")
    return ctx, server


async def raw_post(port: int, path: str, headers: dict[str, str], pieces: list[bytes]) -> int:
    """POST over a raw socket, one TCP write per piece with a pause between."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    writer.write(head.encode())
    await writer.drain()
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.005)
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1])


def segments(body: bytes, size: int) -> list[bytes]:
    return [body[i:i + size] for i in range(0, len(body), size)]


def chunked(body: bytes, size: int) -> list[bytes]:
    return [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in segments(body, size)] + [b"0\r\n\r\n"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.channel)
async def test_body_split_across_tcp_segments_is_read_whole(aiohttp_server, case: Case) -> None:
    ctx, server = await serve(aiohttp_server, case)
    headers = {case.header: case.sign(case.body), "Content-Length": str(len(case.body))}
    assert await raw_post(server.port, case.path, headers, segments(case.body, 700)) == 200
    headers = {case.header: case.sign(case.body), "Transfer-Encoding": "chunked"}
    assert await raw_post(server.port, case.path, headers, chunked(case.body, 333)) == 200
    assert [e.raw for e in ctx.journal] == [case.body]  # the second was the same body: one entry
    assert len(ctx.calls) == 2


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.channel)
async def test_refusals_store_nothing(aiohttp_server, case: Case) -> None:
    ctx, server = await serve(aiohttp_server, case)
    client_headers = {"Content-Type": "application/json"}
    import aiohttp

    async with aiohttp.ClientSession() as http:
        url = server.make_url(case.path)
        forged = await http.post(url, data=case.body, headers={**client_headers, case.header: case.sign(case.body, "guess")})
        missing = await http.post(url, data=case.body, headers=client_headers)
        big = b"{" + b" " * 5000 + b"}"
        too_large = await http.post(url, data=big, headers={**client_headers, case.header: case.sign(big)})
        chunked_big = await http.post(url, data=_stream(big), headers={**client_headers, case.header: case.sign(big)})
        not_json = await http.post(url, data=b"[]", headers={**client_headers, case.header: case.sign(b"[]")})
    assert [r.status for r in (forged, missing, too_large, chunked_big, not_json)] == [401, 401, 413, 413, 400]
    assert {r.content_type for r in (forged, missing, too_large, chunked_big, not_json)} == {"application/problem+json"}
    # each names the part of the request at fault
    assert [(await r.json()).get("field") for r in (forged, missing, too_large, chunked_big, not_json)] == [
        case.header, case.header, "body", "body", "body"]
    assert ctx.calls == []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.channel)
async def test_a_signature_header_of_bytes_not_utf8_is_refused_not_a_500(aiohttp_server, case: Case) -> None:
    ctx, server = await serve(aiohttp_server, case)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"POST {case.path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(case.body)}\r\n"
                 f"Connection: close\r\n{case.header}: ".encode() + b"sha256=\xff\xfe\r\n\r\n" + case.body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
    assert ctx.calls == []


async def _stream(data: bytes):
    for i in range(0, len(data), 1000):
        yield data[i:i + 1000]


async def test_journal_failure_answers_503(aiohttp_server) -> None:
    ctx, server = await serve(aiohttp_server, CASES[0])
    ctx.fail_ingest = True
    import aiohttp

    async with aiohttp.ClientSession() as http:
        resp = await http.post(server.make_url("/channels/whatsapp"), data=WA,
                               headers={"X-Hub-Signature-256": CASES[0].sign(WA)})
    assert resp.status == 503


def test_config_without_app_secret_is_fatal() -> None:
    with pytest.raises(Fatal, match="app_secret is required"):
        WhatsAppConnector(MemoryContext(config={}, channel="whatsapp"))
    with pytest.raises(Fatal, match="page_id"):
        MessengerConnector(MemoryContext(config={"app_secret": "x", "pages": {"p": {"access_token": "t"}}},
                                         channel="messenger"))
    with pytest.raises(Fatal, match="unknown field `pages`"):  # Instagram accounts are not Pages
        MessengerConnector(MemoryContext(config={"app_secret": "x", "pages": {}}, channel="instagram"))


@pytest.mark.parametrize("status,error,headers,expect", [
    (400, {"code": 131047, "message": "(#131047) Re-engagement message"}, {}, ("131047", False, None)),
    (400, {"code": 130429, "message": "(#130429) Rate limit hit"}, {}, ("130429", True, 60.0)),
    (400, {"code": 613, "message": "(#613) Calls exceeded"}, {"Retry-After": "7"}, ("613", True, 7.0)),
    (400, {"code": 131026, "message": "Message undeliverable"}, {}, ("131026", False, None)),
    (401, {"code": 190, "message": "Invalid OAuth access token"}, {}, ("190", False, None)),
    (500, {"code": 2, "message": "Service temporarily unavailable"}, {}, ("2", True, None)),
    (503, None, {}, ("503", True, None)),
    (400, {"code": 10, "error_subcode": 2018278, "message": "(#10) This message is sent outside of allowed window."},
     {}, ("10/2018278", False, None)),
])
def test_graph_errors_for_the_outbox(status, error, headers, expect) -> None:
    e = graph_error(status, {"error": error} if error else None, headers, "WhatsApp")
    assert (e.code, e.retryable, e.retry_after) == expect
    if expect[0] == "131047":
        assert "24-hour" in e.reason and "template" in e.reason


def test_line_errors_for_the_outbox() -> None:
    rate = line_error(429, {"message": "The API rate limit has been exceeded. Try again later."}, {"Retry-After": "3"})
    assert (rate.retryable, rate.retry_after, rate.code) == (True, 3.0, "429")
    monthly = line_error(429, {"message": "You have reached your monthly limit."}, {})
    assert not monthly.retryable
    bad = line_error(400, {"message": "The request body has 1 error(s)",
                           "details": [{"message": "Length must be between 1 and 5000", "property": "messages[0].text"}]}, {})
    assert not bad.retryable and "messages[0].text" in bad.reason


def test_window() -> None:
    from datetime import datetime, timedelta, timezone

    now = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)
    assert window_refusal(now - timedelta(hours=23, minutes=59), now) is None
    assert "24-hour" in window_refusal(now - timedelta(hours=24), now)
    assert "has not written" in window_refusal(None, now)


def test_secrets_come_from_files(tmp_path) -> None:
    """``*_file`` keys of the YAML are read as the secrets; the values never sit in the YAML."""
    from gateway.config import load
    from connectors.whatsapp.client import load_config

    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "token").write_text("EAAG-token\n")
    yaml_file = tmp_path / "omnigate.yaml"
    yaml_file.write_text(f"""
whatsapp:
  app_secret_file: {tmp_path / 'secret'}
  numbers:
    main:
      phone_number_id: "1065"
      access_token_file: {tmp_path / 'token'}
""")
    config = load(str(yaml_file), environ={})
    wa = load_config(config.channels["whatsapp"])
    assert wa.app_secret == "s3cret" and wa.numbers["main"].access_token == "EAAG-token"
    assert "s3cret" not in yaml_file.read_text()
