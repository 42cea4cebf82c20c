"""``omnigate bench --only webchat_push``: a visitor's message → durable in the
journal → pushed to a subscribed agent's socket, p99 latency with
:data:`VISITORS` concurrent visitors on one gateway process.

The gateway runs in its own process (``create_app`` with one webchat site,
the pipeline off: the figure is the live path, not routing). This process
opens one agent socket (``/api/v1/live/webchat``) and :data:`VISITORS`
visitor websockets (each says ``hello``), then every visitor sends a
message every :data:`PERIOD_S` seconds (offsets spread evenly) for
:data:`DURATION_S`; the latency of a message is from just before its send to
the agent receiving its ``message`` event (which the gateway publishes only
after the journal append returned, i.e. after the fsync).

The baseline is measured in the same run with the same client against a
bare relay in its own process: the same sockets, the same frames, each
visitor message forwarded to the agent socket at once, nothing stored. The
ratio is the gateway's p99 over the relay's.

Usage of the server half: ``python -m gateway.bench.webchat MODE PORT DATA_DIR``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

VISITORS = 1000
PERIOD_S = 4.0
DURATION_S = 8.0
TOKEN = "bench-token"
ORIGIN = "https://bench.example"


# ---------------------------------------------------------------- servers


def _relay_app() -> web.Application:
    """The floor: visitor frames relayed to the agent sockets, nothing durable."""
    agents: set[web.WebSocketResponse] = set()

    async def visitor(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            f = json.loads(msg.data)
            if f["type"] == "hello":
                await ws.send_str(json.dumps({"type": "welcome", "visitor": "v", "history": []}))
            elif f["type"] == "message":
                event = json.dumps({"type": "message", "cid": f["cid"], "text": f["text"], "from": "visitor"})
                for a in list(agents):
                    await a.send_str(event)
                await ws.send_str(json.dumps({"type": "ack", "cid": f["cid"]}))
        return ws

    async def agent(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(json.dumps({"type": "snapshot", "chats": []}))
        agents.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            agents.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/channels/webchat/ws", visitor)
    app.router.add_get("/api/v1/live/webchat", agent)
    app.router.add_get("/healthz", lambda r: web.json_response({"status": "ok"}))
    return app


def _omnigate_app(data_dir: Path) -> web.Application:
    from gateway.app import create_app
    from gateway.config import load

    cfg = load(None, environ={"OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_DATA_DIR": str(data_dir),
                              "OMNIGATE_RULES_DIR": str(data_dir / "no-rules"), "OMNIGATE_LOG_LEVEL": "warning"},
               flags={"webchat": {"sites": {"bench": {"origins": [ORIGIN]}},
                                  "connections_per_ip": VISITORS * 2, "messages_per_second": 50},
                      "pipeline": {"workers": 0}})
    return create_app(cfg)


def serve(mode: str, port: int, data_dir: str) -> None:
    from gateway import logs

    logs.configure("warning", "json")
    app = _relay_app() if mode == "relay" else _omnigate_app(Path(data_dir))
    web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=True)


# ---------------------------------------------------------------- client


async def _measure(base: str) -> dict:
    """p50/p99 (ms) of visitor send → agent event, and how many arrived."""
    sent: dict[str, float] = {}
    lat: list[float] = []
    done = asyncio.Event()
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        agent = await s.ws_connect(f"{base}/api/v1/live/webchat", headers={"Authorization": f"Bearer {TOKEN}"},
                                   max_msg_size=0)
        await agent.receive()  # the snapshot

        async def agent_reader() -> None:
            async for msg in agent:
                e = json.loads(msg.data)
                if e.get("type") == "message" and e.get("from") == "visitor":
                    t0 = sent.get(e.get("cid") or "")
                    if t0 is not None:
                        lat.append(time.perf_counter() - t0)
                        if len(lat) == expected:
                            done.set()

        visitors = []
        for n in range(VISITORS):
            ws = await s.ws_connect(f"{base}/channels/webchat/ws?site=bench", headers={"Origin": ORIGIN})
            await ws.send_str(json.dumps({"type": "hello"}))
            visitors.append(ws)
        for ws in visitors:
            while json.loads((await ws.receive()).data)["type"] != "welcome":
                pass
        rounds = int(DURATION_S / PERIOD_S)
        expected = VISITORS * rounds
        reader = asyncio.create_task(agent_reader())

        async def drain(ws) -> None:
            async for _ in ws:  # acks, chat updates
                pass

        drains = [asyncio.create_task(drain(ws)) for ws in visitors]

        async def visitor(n: int, ws) -> None:
            await asyncio.sleep(PERIOD_S * n / VISITORS)
            for r in range(rounds):
                cid = f"b{n}x{r}"
                sent[cid] = time.perf_counter()
                await ws.send_str(json.dumps({"type": "message", "cid": cid, "text": f"bench message {cid}"}))
                await asyncio.sleep(PERIOD_S)

        t0 = time.perf_counter()
        await asyncio.gather(*(visitor(n, ws) for n, ws in enumerate(visitors)))
        try:
            await asyncio.wait_for(done.wait(), 30)
        except TimeoutError:
            pass
        elapsed = time.perf_counter() - t0
        reader.cancel()
        for ws in visitors:
            await ws.close()
        for d in drains:
            d.cancel()
        await agent.close()
    lat.sort()
    if not lat:
        raise RuntimeError("no message reached the agent socket")

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2)

    return {"p50_ms": pct(0.50), "p99_ms": pct(0.99), "delivered": len(lat), "sent": expected,
            "rate_per_s": round(len(lat) / elapsed, 1)}


async def _run(mode: str) -> dict:
    """The client against one server (``mode``) in its own process
    (:class:`gateway.bench.load.Servers`); the relay and the gateway are
    measured one after the other."""
    from gateway.bench.load import Servers

    async with Servers([mode], module="gateway.bench.webchat") as servers:
        return await _measure(f"http://127.0.0.1:{servers.ports[mode]}")


async def figures() -> dict[str, dict]:
    relay = await _run("relay")
    gw = await _run("omnigate")
    return {"webchat_push": {
        "value": gw["p99_ms"], "unit": "ms p99", "baseline": relay["p99_ms"],
        "baseline_label": "bare websocket relay, nothing stored, same client",
        "ratio": round(gw["p99_ms"] / relay["p99_ms"], 3) if relay["p99_ms"] else None,
        "detail": {"visitors": VISITORS, "p50_ms": gw["p50_ms"], "delivered": gw["delivered"], "sent": gw["sent"],
                   "rate_per_s": gw["rate_per_s"], "relay_p50_ms": relay["p50_ms"]},
    }}


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])
