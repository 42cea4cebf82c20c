"""``omnigate replay``: re-run journal entries through the pipeline.

Processing is idempotent: an entry that already committed its message is
confirmed and changes nothing, so replaying twice is safe. ``--failed``
takes the failed entries (after a parser fix, say), ``--since`` limits by
arrival time, ``--id`` names entries.

When a daemon holds the data folder (``<data_dir>/omnigate.lock``, see
gateway/datalock.py) the entries are replayed through its API (the address is
in the lock file, the token is ``OMNIGATE_API_TOKEN``/the configuration's):
the daemon's own worker processes them, so nothing writes behind its caches.
Otherwise this command takes the lock for its run and processes them itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def main(argv: list[str], prog: str = "omnigate replay") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    from gateway.commands.common import add_config_flags, load_config, with_data_dir

    add_config_flags(ap)
    ap.add_argument("--failed", action="store_true", help="only entries that failed")
    ap.add_argument("--since", metavar="TIME", help="only entries received since TIME (ISO 8601, or 2h, 7d)")
    ap.add_argument("--id", action="append", default=[], metavar="ID", help="this entry (repeatable)")
    ap.add_argument("--limit", type=int, default=100_000, help="at most this many entries")
    args = ap.parse_args(argv)
    config = load_config(args, prog)
    if config is None:
        return 2
    from gateway.timeparse import parse_time

    try:
        since = parse_time(args.since, config.timezone) if args.since else None
    except ValueError as exc:
        print(f"{prog}: --since: {exc}", file=sys.stderr)
        return 2
    return with_data_dir(config, prog, lambda: _replay(config, args, since),
                         lambda listen: _replay_through(listen, config, args, since, prog))


async def _replay_through(listen: str, config, args, since, prog: str, wait_s: float = 120.0) -> int:
    """Replay through the running daemon: list the entries, ask it to replay
    each (``POST /api/v1/journal/{id}/replay``), then wait until its worker
    has taken every one and report as for a local run."""
    import aiohttp

    from gateway.commands.common import daemon_base

    base = daemon_base(config, listen, prog, "replaying")
    if base is None:
        return 1
    headers = {"Authorization": f"Bearer {config.api_token}"}
    print(f"replaying through the running daemon at {base}", file=sys.stderr)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base, headers=headers, timeout=timeout) as session:

        async def get(path: str, **params: str) -> tuple[int, dict]:
            while True:
                async with session.get(path, params=params) as r:
                    if r.status == 429:  # the token's rate limit (rest.rate_limit_*): wait as told
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    return r.status, (await r.json() if r.content_type.endswith("json") else {})

        ids: list[str] = []
        missing = 0
        try:
            if args.id:
                for jid in args.id:
                    status, _ = await get(f"/api/v1/journal/{jid}")
                    if status == 404:
                        print(f"{jid}: error: no such journal entry", file=sys.stderr)
                        missing += 1
                    elif status != 200:
                        raise RuntimeError(f"GET /api/v1/journal/{jid}: HTTP {status}")
                    else:
                        ids.append(jid)
            else:
                cursor = None
                while len(ids) < args.limit:
                    params = {"limit": str(min(1000, args.limit - len(ids)))}
                    if args.failed:
                        params["status"] = "failed"
                    if since is not None:
                        params["since"] = since.isoformat()
                    if cursor:
                        params["cursor"] = cursor
                    status, page = await get("/api/v1/journal", **params)
                    if status != 200:
                        raise RuntimeError(f"GET /api/v1/journal: HTTP {status} {page.get('detail', '')}")
                    ids += [e["id"] for e in page["items"]]
                    cursor = page.get("next_cursor")
                    if not cursor:
                        break
            for jid in ids:
                while True:
                    async with session.post(f"/api/v1/journal/{jid}/replay") as r:
                        if r.status == 429:  # the token's rate limit (rest.rate_limit_*): wait as told
                            await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                            continue
                        if r.status != 202:
                            raise RuntimeError(f"POST /api/v1/journal/{jid}/replay: HTTP {r.status}")
                        break
            counts: dict[str, int] = {}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait_s
            pending = list(ids)
            while pending:
                still = []
                for jid in pending:
                    _, entry = await get(f"/api/v1/journal/{jid}")
                    if entry.get("status") == "pending" and loop.time() < deadline:
                        still.append(jid)
                        continue
                    counts[entry.get("status", "unknown")] = counts.get(entry.get("status", "unknown"), 0) + 1
                    if entry.get("status") == "failed":
                        print(f"{jid}: failed: {entry.get('error')}", file=sys.stderr)
                pending = still
                if pending:
                    await asyncio.sleep(0.2)
        except (aiohttp.ClientError, OSError, RuntimeError, asyncio.TimeoutError) as exc:
            print(f"{prog}: the daemon at {base}: {exc}", file=sys.stderr)
            return 1
    total = sum(counts.values())
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to replay"
    print(f"replayed {total} entries: {summary}")
    return 1 if missing or counts.get("failed") or counts.get("pending") else 0


async def _replay(config, args, since) -> int:
    from pathlib import Path

    from gateway import logs
    from gateway.app import context_factory, pipeline_settings
    from gateway.store.factory import has_store, open_store
    from gateway.store.redis_attachments import attachments_for
    from gateway.worker import Pipeline

    logs.configure("warning", config.log_format)
    if not has_store(config):
        print(f"omnigate replay: no store in {config.data_dir}", file=sys.stderr)
        return 1
    store = open_store(config, consumer="omnigate-replay")
    pipeline = Pipeline(store, pipeline_settings(config), attachments=attachments_for(config, store, Path(config.data_dir) / "attachments"),
                        context_for=context_factory(config))
    counts: dict[str, int] = {}
    missing = 0
    try:
        after, seen = 0, 0
        while seen < args.limit:
            batch = await store.journal_list(status="failed" if args.failed else None, since=since, after_seq=after,
                                             limit=min(500, args.limit - seen), with_raw=True, ids=args.id or None)
            if not batch:
                break
            for entry in batch:
                result = await pipeline.process(entry)
                counts[result.status] = counts.get(result.status, 0) + 1
                if result.status == "failed":
                    print(f"{entry.id}: failed: {result.error}", file=sys.stderr)
            after, seen = batch[-1].seq, seen + len(batch)
        if args.id:
            found = {e.id for e in await store.journal_list(ids=args.id, limit=len(args.id))}
            for jid in args.id:
                if jid not in found:
                    print(f"{jid}: error: no such journal entry", file=sys.stderr)
                    missing += 1
    finally:
        await store.close()
    total = sum(counts.values())
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "nothing to replay"
    print(f"replayed {total} entries: {summary}")
    return 1 if missing or counts.get("failed") else 0
