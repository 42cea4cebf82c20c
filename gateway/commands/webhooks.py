"""``omnigate webhooks``: list endpoints, show dead letters, replay them.

``omnigate webhooks list``, ``omnigate webhooks dead NAME`` and
``omnigate webhooks replay NAME [--since TIME] [--id EVENT_ID]``. With
``redis_url`` it works on Redis directly (every instance shares it; the
store's operations are safe beside running daemons). Otherwise, when a
daemon holds the data folder the command goes through its API
(``/api/v1/webhooks``, the token from ``OMNIGATE_API_TOKEN``); else it
takes the data-folder lock and works on the store (the daemon delivers what
was requeued when it next runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys


def main(argv: list[str], prog: str = "omnigate webhooks") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    from gateway.commands.common import add_config_flags, load_config

    add_config_flags(ap)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="endpoints with their queue, dead letters and state")
    dead = sub.add_parser("dead", help="an endpoint's dead letters")
    dead.add_argument("name")
    rp = sub.add_parser("replay", help="put an endpoint's dead letters back into its queue")
    rp.add_argument("name")
    rp.add_argument("--since", metavar="TIME", help="dead letters of events queued since TIME (ISO 8601, 2h, 7d)")
    rp.add_argument("--id", metavar="EVENT_ID", help="this event (also one delivered before: sent again)")
    args = ap.parse_args(argv)
    config = load_config(args, prog)
    if config is None:
        return 2
    since = None
    if getattr(args, "since", None):
        from gateway.timeparse import parse_time

        try:
            since = parse_time(args.since, config.timezone)
        except ValueError as exc:
            print(f"{prog}: --since: {exc}", file=sys.stderr)
            return 2
    if config.redis_url:
        return asyncio.run(_local(config, args, since, prog))
    from gateway.commands.common import with_data_dir

    return with_data_dir(config, prog, lambda: _local(config, args, since, prog),
                         lambda listen: _through(listen, config, args, since, prog))


def _print(result: object) -> None:
    print(json.dumps(result, ensure_ascii=False, indent=2))


async def _local(config, args, since, prog: str) -> int:
    from gateway.clock import system_clock
    from gateway.store.base import NotFound
    from gateway.store.factory import open_store

    store = open_store(config, consumer="omnigate-webhooks")
    try:
        if args.cmd == "list":
            stats = await store.webhook_queue_stats()
            _print([{**{k: v for k, v in e.items() if k not in ("secret", "cursor")}, **stats.get(e["name"], {})}
                    for e in await store.webhook_endpoints()])
        elif args.cmd == "dead":
            _print(await store.webhook_dead(args.name, 1000))
        else:
            try:
                n = await store.webhook_replay(args.name, since=since, event_id=args.id, now=system_clock())
            except NotFound as exc:
                print(f"{prog}: {exc}", file=sys.stderr)
                return 1
            print(f"requeued {n} events for {args.name}")
        return 0
    finally:
        await store.close()


async def _through(listen: str, config, args, since, prog: str) -> int:
    import aiohttp

    from gateway.commands.common import daemon_base

    base = daemon_base(config, listen, prog, "a webhooks command")
    if base is None:
        return 1
    headers = {"Authorization": f"Bearer {config.api_token}"}
    try:
        async with aiohttp.ClientSession(base, headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as s:
            if args.cmd == "list":
                method, path, body = "GET", "/api/v1/webhooks", None
            elif args.cmd == "dead":
                method, path, body = "GET", f"/api/v1/webhooks/{args.name}/dead", None
            else:
                body = {k: v for k, v in (("since", since.isoformat() if since else None), ("id", args.id)) if v}
                method, path = "POST", f"/api/v1/webhooks/{args.name}/replay"
            async with s.request(method, path, json=body) as r:
                data = await r.json()
                if r.status >= 400:
                    print(f"{prog}: {data.get('detail') or data.get('title')}", file=sys.stderr)
                    return 1
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        print(f"{prog}: the daemon at {base}: {exc}", file=sys.stderr)
        return 1
    if args.cmd == "replay":
        print(f"requeued {data['requeued']} events for {args.name}")
    else:
        _print(data.get("items", data))
    return 0
