"""Every log line written while a request is handled names that request."""

from __future__ import annotations

import asyncio

from gateway.logs import REQUEST, add_request


async def test_request_id_and_path_are_added_only_inside_a_request():
    assert add_request(None, "info", {"event": "x"}) == {"event": "x"}

    async def handle(rid: str) -> dict:
        REQUEST.set((rid, f"/p/{rid}"))
        await asyncio.sleep(0)
        return add_request(None, "info", {"event": "y"})

    a, b = await asyncio.gather(handle("a"), handle("b"))  # tasks do not see each other's request
    assert (a["request_id"], a["path"], b["request_id"]) == ("a", "/p/a", "b")
    assert add_request(None, "info", {"event": "z", "request_id": "mine"})["request_id"] == "mine"


# ---------------------------------------------------------------- the line's format


def _old_chain_line(event: str, fields: dict, method: str = "info") -> dict:
    """The line as the chain before issue 11's third pass rendered it
    (structlog's TimeStamper, StackInfoRenderer, format_exc_info): the oracle."""
    import structlog

    from gateway.logs import _json

    event_dict = {**fields, "event": event}
    for proc in (structlog.contextvars.merge_contextvars, add_request, structlog.processors.add_log_level,
                 structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.processors.StackInfoRenderer(),
                 structlog.processors.format_exc_info):
        event_dict = proc(None, method, event_dict)
    return event_dict


def _lines_of(stream) -> list:
    import json

    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_timestamp_is_written_as_structlogs_iso_utc_stamper_writes_it(monkeypatch):
    from datetime import datetime, timezone

    from gateway import logs

    instants = [(0, 0), (951_782_400, 0), (951_782_400, 1), (1_700_000_000, 999_999), (1_764_460_799, 123_456),
                (4_102_444_800, 500_000), (1_700_000_000, 0), (1_700_000_001, 42)]
    for seconds, micros in instants:  # a second seen before, then a new one: the per-second text is reused right
        monkeypatch.setattr(logs.time, "time_ns", lambda s=seconds, u=micros: (s * 1_000_000 + u) * 1000 + 999)
        expected = datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=micros)
        got = logs.add_timestamp(None, "info", {})["timestamp"]
        assert got == expected.isoformat().replace("+00:00", "Z"), (seconds, micros)


def test_a_line_has_the_fields_and_order_of_the_previous_chain(monkeypatch):
    import io

    import structlog

    from gateway import logs

    stream = io.StringIO()
    saved = structlog.get_config()  # loggers cached before keep the lists they hold: give them back after
    logs.configure("info", "json", stream=stream)
    try:
        log = structlog.get_logger("test.logs")
        REQUEST.set(("r1", "/x"))
        structlog.contextvars.bind_contextvars(tenant="t")
        try:
            log.bind(journal_id="j1", channel="api").info("pipeline.done", status="processed", messages=1,
                                                          ticket_id="t1", contact_id=None)
            old = _old_chain_line("pipeline.done", {"journal_id": "j1", "channel": "api", "status": "processed",
                                                    "messages": 1, "ticket_id": "t1", "contact_id": None})
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("pipeline.failed", journal_id="j2")
            log.info("with.stack", stack_info=True)
            log.debug("hidden")
        finally:
            structlog.contextvars.unbind_contextvars("tenant")
            REQUEST.set(None)
    finally:
        structlog.configure(**saved)
    done, failed, stacked = _lines_of(stream)
    assert list(done) == list(old)  # the same fields in the same order
    assert {k: v for k, v in done.items() if k != "timestamp"} == {k: v for k, v in old.items() if k != "timestamp"}
    assert (done["tenant"], done["request_id"], done["level"]) == ("t", "r1", "info")
    assert failed["event"] == "pipeline.failed" and failed["level"] == "error"
    assert "ValueError: boom" in failed["exception"] and "exc_info" not in failed
    # the stack starts at the caller (this test), not inside gateway/logs.py
    assert "test_logs.py" in stacked["stack"].splitlines()[-2] and "stack_info" not in stacked


# ---------------------------------------------------------------- what a client can make the log say


async def test_a_request_aiohttp_cannot_parse_is_one_info_line_not_an_error_with_a_traceback(caplog):
    """A header line past 8190 bytes (or a bad URL, a broken chunk) was logged by
    aiohttp's server at ERROR with a traceback: a client could flood the log."""
    import logging

    from aiohttp import web
    from structlog.testing import capture_logs

    from gateway import logs

    logs.configure("info", "json")
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with capture_logs() as lines:
            for raw in (b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 9000 + b"\r\n\r\n",
                        b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(raw)
                await writer.drain()
                answer = await reader.read()
                writer.close()
                assert answer.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), answer[:100]
    finally:
        await runner.cleanup()
        import structlog

        structlog.reset_defaults()  # configure() set them for a daemon: the defaults for the tests after this one
        logging.getLogger("aiohttp.server").removeFilter(logs.MALFORMED_REQUESTS)
    assert [(e["event"], e["log_level"]) for e in lines] == [("http.malformed_request", "info")] * 2, lines
    assert "aaaa" not in repr(lines)  # not the header's bytes
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "aiohttp.server"]
    assert "Traceback" not in caplog.text
