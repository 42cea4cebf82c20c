"""kill -9 of a real `omnigate serve` while it delivers webhooks loses
nothing: after the restart every acknowledged message's events reach the
receiver, each ticket's in order, and `omnigate webhooks` reads the store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections import defaultdict
from pathlib import Path

import aiohttp
import pytest

from tests.gateway.conftest import AUTH, TOKEN
from tests.gateway.test_crash import OMNIGATE, free_port, wait_ready
from tests.gateway.webhook_receiver import SECRET, Receiver

pytestmark = pytest.mark.integration


def start(data_dir: Path, port: int, url: str) -> subprocess.Popen:
    env = {**os.environ, "OMNIGATE_API_TOKEN": TOKEN, "OMNIGATE_LOG_LEVEL": "warning",
           "OMNIGATE_WEBHOOKS__ENDPOINTS__SINK__URL": url, "OMNIGATE_WEBHOOKS__ENDPOINTS__SINK__SECRET": SECRET,
           "OMNIGATE_WEBHOOKS__ENDPOINTS__SINK__ALLOW_PRIVATE": "true",
           "OMNIGATE_RULES_DIR": str(data_dir / "no-rules")}
    return subprocess.Popen([OMNIGATE, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_kill_9_during_delivery_loses_no_event(tmp_path):
    receiver = await Receiver().start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, port, receiver.url)
    acked: set[str] = set()
    try:
        await wait_ready(base, proc)
        async with aiohttp.ClientSession() as session:
            for n in range(80):
                body = {"external_id": f"x{n}", "sender": {"kind": "email", "value": f"c{n % 20}@crash.test"},
                        "text": f"message {n}"}
                async with session.post(f"{base}/channels/api/messages", json=body, headers=AUTH) as r:
                    assert r.status == 202
                    acked.add(f"x{n}")
            for _ in range(1000):
                if len(receiver.accepted) >= 10:
                    break
                await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(receiver.accepted) < 2 * len(acked)  # killed while deliveries were still going on
        proc = start(tmp_path, port, receiver.url)
        await wait_ready(base, proc)

        def got() -> set[str]:
            return {e["data"]["message"]["external_id"] for e in receiver.accepted if e["type"] == "message.created"}

        for _ in range(3000):
            if got() >= acked:
                break
            await asyncio.sleep(0.02)
        assert got() >= acked  # every acknowledged message's event arrived
        assert receiver.bad_signatures == 0
        per_ticket: dict[str, list[str]] = defaultdict(list)
        for e in receiver.accepted:
            per_ticket[e["data"]["ticket"]["id"]].append(e["type"])
        for types in per_ticket.values():
            assert types[0] == "ticket.created"  # never overtaken by the ticket's later events
            assert types.count("ticket.created") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        await receiver.stop()
    # the CLI reads the store once the daemon is gone
    out = subprocess.run([OMNIGATE, "webhooks", "--data-dir", str(tmp_path), "replay", "sink"],
                         env={**os.environ, "OMNIGATE_RULES_DIR": str(tmp_path / "no-rules")},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "requeued 0 events for sink" in out.stdout
