"""The shared body reader: whole bodies whatever the segmentation, the
channel's limit, and a deadline for slow clients."""

from __future__ import annotations

import asyncio

from aiohttp import web

from connectors.http import read_body


async def _serve(aiohttp_server, **kw):
    async def handler(request: web.Request) -> web.Response:
        body = await read_body(request, 64, **kw)
        return web.Response(text=str(len(body)))

    app = web.Application()
    app.router.add_post("/", handler)
    return await aiohttp_server(app)


async def _raw(server, head: bytes, parts: list[bytes], pause: float = 0.05) -> bytes:
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(head)
    for part in parts:
        await asyncio.sleep(pause)
        writer.write(part)
        await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_a_body_in_segments_is_read_whole(aiohttp_server) -> None:
    server = await _serve(aiohttp_server)
    answer = await _raw(server, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nConnection: close\r\n\r\n",
                        [b"a" * 10] * 4)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n40")


async def test_past_the_limit_is_413_even_without_content_length(aiohttp_server) -> None:
    server = await _serve(aiohttp_server)
    chunks = [b"20\r\n" + b"a" * 32 + b"\r\n"] * 3 + [b"0\r\n\r\n"]
    answer = await _raw(server, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                        chunks)
    assert answer.startswith(b"HTTP/1.1 413")


async def test_a_client_too_slow_to_send_its_body_gets_408(aiohttp_server) -> None:
    server = await _serve(aiohttp_server, timeout=0.2)
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nConnection: close\r\n\r\nabc")
    await writer.drain()  # and then nothing: a slowloris
    answer = await asyncio.wait_for(reader.readline(), 10)  # the status line (the server lingers for the rest)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
