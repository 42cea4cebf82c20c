"""The bench's load tools: a minimal HTTP/1.1 keep-alive client on asyncio
streams (lighter than a client library, so the server, not the client, is
measured), bench servers each in their own process (:mod:`gateway.bench.server`),
and the raw write floor (group-committed, fsync'd SQLite inserts)."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

CONCURRENCY = 64
ROUNDS = 2
DURATION_S = 2.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


async def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bench server exited (its stderr.log says why); args {proc.args}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise TimeoutError("bench server did not start")


RequestFn = Callable[[int], bytes]


def api_request(n: int) -> bytes:
    """The n-th distinct API-channel message, as raw HTTP/1.1."""
    body = json.dumps({"external_id": f"b{n}", "sender": {"kind": "email", "value": f"bench{n % 997}@example.cn"},
                       "text": "我的订单还没有到，请帮忙查一下 order 12345"}).encode()
    return http_post("/channels/api/messages", body)


def http_post(path: str, body: bytes, token: str = "bench-token", headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length) if length else b""
    return head, body


async def load(port: int, make: RequestFn, duration: float, concurrency: int, start: int = 0) -> dict:
    """Send distinct requests (``make(n)``) over keep-alive connections for
    ``duration`` seconds; 2xx answers count."""
    latencies: list[float] = []
    counter = [start]
    errors = [0]
    stop_at = time.monotonic() + duration

    async def conn() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < stop_at:
                counter[0] += 1
                req = make(counter[0])
                t0 = time.perf_counter()
                writer.write(req)
                head, _ = await read_response(reader)
                if head[9:10] == b"2":
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors[0] += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return {"rate": len(latencies) / elapsed, "p50_ms": percentile(latencies, 50) * 1000,
            "p99_ms": percentile(latencies, 99) * 1000, "requests": len(latencies), "errors": errors[0],
            "next": counter[0]}


class Servers:
    """Bench servers, each in its own process, started together and
    measured in alternating rounds so that a burst of noise on the machine
    hits every one of them, not just the one running at that moment.
    ``module`` is run as ``python -m MODULE MODE PORT DATA_DIR`` for each mode
    (:mod:`gateway.bench.server` unless a figure has servers of its own)."""

    def __init__(self, modes: list[str], module: str = "gateway.bench.server"):
        self.modes = modes
        self.module = module
        self.ports: dict[str, int] = {}
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[tempfile.TemporaryDirectory] = []

    async def __aenter__(self) -> "Servers":
        for mode in self.modes:
            d = tempfile.TemporaryDirectory(prefix=f"omnigate-bench-{mode}-")
            self.dirs.append(d)
            port = self.ports[mode] = free_port()
            # stderr to a file: an unread pipe fills up and stalls the server
            err = open(Path(d.name) / "stderr.log", "wb")
            self.procs.append(subprocess.Popen([sys.executable, "-m", self.module, mode, str(port), d.name],
                                               stdout=subprocess.DEVNULL, stderr=err))
            err.close()
        for mode, proc in zip(self.modes, self.procs):
            await wait_port(self.ports[mode], proc)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for d in self.dirs:
            d.cleanup()

    def data_dir(self, mode: str) -> Path:
        return Path(self.dirs[self.modes.index(mode)].name)

    def pid(self, mode: str) -> int:
        return self.procs[self.modes.index(mode)].pid

    def cpu_seconds(self, mode: str) -> float:
        """CPU time (user + system) the server process has used so far."""
        proc = self.procs[self.modes.index(mode)]
        with open(f"/proc/{proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def best_of(self, plan: dict[str, tuple[str, RequestFn]], rounds: int, seconds: float) -> dict[str, dict]:
        """Each figure's best round (the least disturbed by the rest of the
        machine); ``plan`` is figure → (server mode, request maker)."""
        best: dict[str, dict] = {}
        numbers = {name: 0 for name in plan}
        for name, (mode, make) in plan.items():  # warm up
            numbers[name] = (await load(self.ports[mode], make, 0.3, 8, numbers[name]))["next"]
        for _ in range(rounds):
            for name, (mode, make) in plan.items():
                cpu0 = self.cpu_seconds(mode)
                r = await load(self.ports[mode], make, seconds, CONCURRENCY, numbers[name])
                r["cpu_us"] = (self.cpu_seconds(mode) - cpu0) / max(1, r["requests"]) * 1e6
                numbers[name] = r["next"]
                if name not in best or r["rate"] > best[name]["rate"]:
                    best[name] = r
        return best



def pregenerated(make: RequestFn, count: int = 25_000) -> RequestFn:
    """Requests made before the clock starts, so the client's own crypto is
    not measured; past ``count`` they are made on the fly."""
    ready = [make(n) for n in range(count)]
    return lambda n: ready[n] if n < count else make(n)



async def raw_insert_rate(n: int, bodies: list[bytes], concurrency: int) -> float:
    """The write floor of the pipeline: ``concurrency`` tasks, each awaiting
    one group-committed, fsync'd insert per message (a minimal writer thread,
    not omnigate's store)."""
    with tempfile.TemporaryDirectory() as d:
        conn = sqlite3.connect(Path(d) / "raw.db", isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        q: queue.SimpleQueue = queue.SimpleQueue()
        loop = asyncio.get_running_loop()

        def writer() -> None:
            while True:
                item = q.get()
                if item is None:
                    return
                batch = [item]
                while len(batch) < 512:
                    try:
                        nxt = q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        q.put(None)
                        break
                    batch.append(nxt)
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany("INSERT INTO t (body) VALUES (?)", [(b,) for b, _ in batch])
                conn.execute("COMMIT")
                loop.call_soon_threadsafe(lambda fs=[f for _, f in batch]: [f.set_result(None) for f in fs])

        th = threading.Thread(target=writer, daemon=True)
        th.start()
        it = iter(bodies[:n])

        async def task() -> None:
            for body in it:
                fut = loop.create_future()
                q.put((body, fut))
                await fut

        t0 = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(concurrency)))
        rate = n / (time.perf_counter() - t0)
        q.put(None)
        th.join()
        conn.close()
        return rate

