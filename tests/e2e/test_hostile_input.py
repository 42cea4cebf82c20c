"""Hostile input against a running gateway: every request below answers a 4xx
problem+json naming what is wrong — never a 500 — and logs no error and no
traceback (an unauthenticated client must not be able to flood the log)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from structlog.testing import capture_logs

from aiohttp import web

from gateway import keys
from gateway.app import create_app
from gateway.commands.serve import SERVER_SETTINGS
from gateway.config import load
from tests.e2e.conftest import Gateway
from tests.gateway.conftest import AUTH
from tests.standins.telegram_api import TelegramApiStandIn

BOT_TOKEN, SECRET = "123456:hostile-token", "hostile-secret"
MESSAGE = {"external_id": "h-1", "sender": {"kind": "email", "value": "a@example.com"}, "text": "hello"}


@pytest.fixture
async def gw(start_gateway, telegram_api: TelegramApiStandIn) -> Gateway:
    telegram_api.bot = telegram_api.add_bot(BOT_TOKEN, "hostile_bot")
    section = {"api_base": telegram_api.base,
               "bots": {"support": {"token": BOT_TOKEN, "secret_token": SECRET, "mode": "webhook"}}}
    return await start_gateway(telegram=section)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# (method, path, headers, body) sent through the aiohttp client
CLIENT_CASES = {
    "api body not UTF-8": ("POST", "/channels/api/messages", AUTH,
                           b'{"external_id": "x\xff\xfe", "sender": {"kind": "email", "value": "a@b.c"}, "text": "t"}'),
    "api attachment not base64": ("POST", "/channels/api/messages", AUTH, json.dumps(
        {**MESSAGE, "attachments": [{"name": "a.txt", "content_type": "text/plain", "data_base64": "%%%"}]}).encode()),
    "since overflows": ("GET", "/api/v1/journal?since=99999999999999999999d", AUTH, None),
    "since far future": ("GET", "/api/v1/journal?since=9999999999999999d", AUTH, None),
    "journal cursor beyond 64 bits": ("GET", "/api/v1/journal?cursor=" + "1" + "0" * 23, AUTH, None),
    "timeline cursor beyond 64 bits": ("GET", "/api/v1/tickets/{ticket}/timeline?cursor=1" + "0" * 23 + ".1"
                                       + "0" * 23, AUTH, None),
    "ticket number beyond 64 bits": ("GET", "/api/v1/tickets/" + "9" * 30, AUTH, None),
    "ticket number beyond 64 bits, timeline": ("GET", "/api/v1/tickets/%23" + "9" * 30 + "/timeline", AUTH, None),
    "ticket number in superscript digits": ("GET", "/api/v1/tickets/%C2%B2", AUTH, None),
    "If-Match in superscript digits": ("PATCH", "/api/v1/tickets/{ticket}", {**AUTH, "If-Match": '"\u00b2"'},
                                       json.dumps({"priority": "high"}).encode()),
    "rules test nested 10000 deep": ("POST", "/api/v1/rules/test", AUTH, nested(10_000)),
    "rules test not UTF-8": ("POST", "/api/v1/rules/test", AUTH, b'{"text": "\xff"}'),
    "telegram nested 10000 deep": ("POST", "/channels/telegram/support",
                                   {"X-Telegram-Bot-Api-Secret-Token": SECRET}, nested(10_000)),
    "telegram object nested 10000 deep": ("POST", "/channels/telegram/support",
                                          {"X-Telegram-Bot-Api-Secret-Token": SECRET},
                                          b'{"update_id": 1, "message": ' + b'{"a":' * 10_000 + b"1" + b"}" * 10_001),
    "reply subject with CR/LF": ("POST", "/api/v1/tickets/{ticket}/replies", AUTH,
                                 json.dumps({"text": "hi", "subject": "Re: x\r\nBcc: victim@example.com"}).encode()),
    "reply author with LF": ("POST", "/api/v1/tickets/{ticket}/replies", AUTH,
                             json.dumps({"text": "hi", "author": "agent\nX-Evil: 1"}).encode()),
    "reply attachment not base64": ("POST", "/api/v1/tickets/{ticket}/replies", AUTH, json.dumps(
        {"text": "hi", "attachments": [{"name": "a", "content_type": "text/plain", "data_base64": "!!"}]}).encode()),
    "reply through a channel that cannot send": ("POST", "/api/v1/tickets/{ticket}/replies", AUTH,
                                                 json.dumps({"text": "hi"}).encode()),
    "unknown route": ("GET", "/no/such/route", {}, None),
    "unknown API route": ("POST", "/api/v1/nothing-here", AUTH, b"{}"),
}

# raw header blocks: bytes aiohttp's client would refuse to send
RAW_CASES = {
    "authorization not UTF-8": b"GET /api/v1/journal HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\x80\r\n"
                               b"Connection: close\r\n\r\n",
    "telegram secret not UTF-8": b"POST /channels/telegram/support HTTP/1.1\r\nHost: x\r\n"
                                 b"X-Telegram-Bot-Api-Secret-Token: \xff\xfe\x80\r\nContent-Length: 2\r\n"
                                 b"Connection: close\r\n\r\n{}",
}


async def api_ticket(gw: Gateway) -> str:
    resp = await gw.client.post("/channels/api/messages", json=MESSAGE, headers=AUTH)
    assert resp.status == 202, await resp.text()
    await gw.drain()
    _, ticket, _ = await gw.only_ticket()
    return ticket["id"]


def assert_quiet(logs: list[dict], caplog) -> None:
    loud = [e for e in logs if e.get("log_level") in ("error", "critical", "exception") or e.get("exc_info")]
    assert loud == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize("case", list(CLIENT_CASES))
async def test_hostile_requests_answer_4xx_problem_json(gw: Gateway, case: str, caplog) -> None:
    method, path, headers, body = CLIENT_CASES[case]
    if "{ticket}" in path:
        path = path.format(ticket=await api_ticket(gw))
    with capture_logs() as logs:
        resp = await gw.client.request(method, path, headers=headers, data=body)
        text = await resp.text()
    assert 400 <= resp.status < 500, (resp.status, text)
    assert resp.content_type == "application/problem+json", text
    assert json.loads(text)["status"] == resp.status
    assert_quiet(logs, caplog)


@pytest.mark.parametrize("case", list(RAW_CASES))
async def test_raw_header_bytes_answer_4xx(gw: Gateway, case: str, caplog) -> None:
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(gw.client.server.host, gw.client.server.port)
        writer.write(RAW_CASES[case])
        await writer.drain()
        answer = await reader.read()
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    assert 400 <= status < 500, answer
    assert b"problem+json" in answer.partition(b"\r\n\r\n")[0].lower() or status == 401, answer
    assert_quiet(logs, caplog)


async def test_a_client_that_disconnects_mid_body_logs_one_info_line(tmp_path, caplog) -> None:
    # served as `omnigate serve` serves it (aiohttp's test server cancels handlers instead)
    env = {"OMNIGATE_API_TOKEN": "t", "OMNIGATE_DATA_DIR": str(tmp_path / "data"),
           "OMNIGATE_RULES_DIR": str(tmp_path / "none")}
    app = create_app(load(None, environ=env, flags={}))
    runner = web.AppRunner(app, **SERVER_SETTINGS)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with capture_logs() as logs:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /channels/api/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                         b"Authorization: Bearer t\r\n\r\n{\"external_id\": ")
            await writer.drain()
            await asyncio.sleep(0.2)  # the handler is reading the body
            writer.close()
            for _ in range(250):  # until the server noticed
                if any(e.get("event") == "http.client_disconnected" for e in logs):
                    break
                await asyncio.sleep(0.02)
        assert [e["log_level"] for e in logs if e.get("event") == "http.client_disconnected"] == ["info"], logs
        assert_quiet(logs, caplog)
        assert await app[keys.STORE].journal_list() == []
    finally:
        await runner.cleanup()
