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
