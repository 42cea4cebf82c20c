"""``omnigate replay``: re-run journal entries through the pipeline.

Processing is idempotent: an entry that already committed its message is
confirmed and changes nothing, so replaying twice is safe. ``--failed``
takes the failed entries (after a parser fix, say), ``--since`` limits by
arrival time, ``--id`` names entries. It runs in this process against the
same data directory; a running daemon may stay up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def main(argv: list[str], prog: str = "omnigate replay") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    from gateway.commands.common import add_config_flags, load_config

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
    return asyncio.run(_replay(config, args, since))


async def _replay(config, args, since) -> int:
    from pathlib import Path

    from gateway import logs
    from gateway.app import context_factory, pipeline_settings
    from gateway.attachments import AttachmentStore
    from gateway.store.sqlite import SQLiteStore
    from gateway.worker import Pipeline

    logs.configure("warning", config.log_format)
    if not (Path(config.data_dir) / "omnigate.db").exists():
        print(f"omnigate replay: no store in {config.data_dir}", file=sys.stderr)
        return 1
    store = SQLiteStore.in_dir(config.data_dir, synchronous=config.store.synchronous)
    pipeline = Pipeline(store, pipeline_settings(config), attachments=AttachmentStore(Path(config.data_dir) / "attachments"),
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
