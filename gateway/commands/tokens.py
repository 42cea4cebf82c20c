"""``omnigate tokens``: per-agent API tokens (create, list, revoke).

``create`` prints the token once (the store keeps only its SHA-256).

When a daemon holds the data folder (``<data_dir>/omnigate.lock``, see
gateway/datalock.py) the commands go through its API (``/api/v1/tokens``;
the address is in the lock file, the token is ``OMNIGATE_API_TOKEN``/the
configuration's), so a revocation takes effect at once. Otherwise they take
the lock for their run and work on the SQLite file itself (offline: no
daemon needed to mint the first tokens).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import timedelta


def main(argv: list[str], prog: str = "omnigate tokens") -> int:
    from gateway.commands.common import add_config_flags, load_config

    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="action", required=True)
    c = sub.add_parser("create", help="a new token for an agent (printed once)")
    add_config_flags(c)
    c.add_argument("--agent", required=True, metavar="ID", help="the agent the token acts as")
    c.add_argument("--role", required=True, choices=("agent", "lead", "admin"))
    c.add_argument("--expires", metavar="DURATION", help="e.g. 90d, 12h (default: never)")
    c.add_argument("--note", help="what the token is for")
    ls = sub.add_parser("list", help="tokens (never the tokens themselves)")
    add_config_flags(ls)
    ls.add_argument("--agent", metavar="ID")
    ls.add_argument("--all", action="store_true", help="revoked ones too")
    ls.add_argument("--json", action="store_true")
    rv = sub.add_parser("revoke", help="revoke a token by its id (or listed prefix)")
    add_config_flags(rv)
    rv.add_argument("id")
    args = ap.parse_args(argv)
    config = load_config(args, prog)
    if config is None:
        return 2
    expires_s = None
    if args.action == "create" and args.expires:
        from gateway.config import ConfigError, parse_duration

        try:
            expires_s = parse_duration(args.expires, "--expires")
        except ConfigError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 2
        if expires_s <= 0:
            print(f"{prog}: --expires must be positive", file=sys.stderr)
            return 2
    from gateway import datalock

    try:
        lock = datalock.acquire(config.data_dir)
    except datalock.Locked as exc:
        if exc.info is None or not exc.info.listen:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
        return asyncio.run(_through(exc.info.listen, config, args, prog))
    except OSError as exc:
        print(f"{prog}: {config.data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_run(config, args, prog, expires_s))
    finally:
        lock.release()


async def _through(listen: str, config, args, prog: str) -> int:
    """The same commands through the running daemon's ``/api/v1/tokens``."""
    import aiohttp
    import msgspec

    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    base = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    if not config.api_token:
        print(f"{prog}: a daemon holds {config.data_dir} (listening on {listen}); managing tokens through its API "
              "needs its token: set OMNIGATE_API_TOKEN (or OMNIGATE_API_TOKEN_FILE)", file=sys.stderr)
        return 1
    headers = {"Authorization": f"Bearer {config.api_token}", "X-Omnigate-Actor": "cli"}
    async with aiohttp.ClientSession(base, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as session:
        try:
            if args.action == "create":
                body = {"agent_id": args.agent, "role": args.role}
                if args.expires:
                    body["expires_in"] = args.expires
                if args.note:
                    body["note"] = args.note
                async with session.post("/api/v1/tokens", json=body) as r:
                    answer = await r.json(content_type=None)
                    if r.status != 201:
                        print(f"{prog}: {answer.get('detail') or answer.get('title')}", file=sys.stderr)
                        return 1
                print(answer["token"])
                print(f"id {answer['id']}, agent {answer['agent_id']}, role {answer['role']}"
                      + (f", expires {answer['expires_at']}" if answer.get("expires_at") else "")
                      + " — store it now: it is not shown again", file=sys.stderr)
            elif args.action == "list":
                params = {"include_revoked": "true" if args.all else "false"}
                if args.agent:
                    params["agent_id"] = args.agent
                async with session.get("/api/v1/tokens", params=params) as r:
                    answer = await r.json(content_type=None)
                    if r.status != 200:
                        print(f"{prog}: {answer.get('detail') or answer.get('title')}", file=sys.stderr)
                        return 1
                from gateway.store.sqlite_tokens import TokenInfo

                _print_list(msgspec.convert(answer["items"], list[TokenInfo]), args.json)
            else:
                async with session.delete(f"/api/v1/tokens/{args.id}") as r:
                    answer = await r.json(content_type=None)
                    if r.status != 200:
                        print(f"{prog}: {answer.get('detail') or answer.get('title')}", file=sys.stderr)
                        return 1
                print(f"revoked {answer['id']} ({answer['prefix']}…, agent {answer['agent_id']})")
        except aiohttp.ClientError as exc:
            print(f"{prog}: the daemon at {base} does not answer: {exc}", file=sys.stderr)
            return 1
    return 0


def _print_list(items, as_json: bool) -> None:
    import msgspec

    from routing.model import utcnow

    if as_json:
        sys.stdout.write(msgspec.json.encode(items).decode() + "\n")
        return
    now = utcnow()
    for t in items:
        state = "revoked" if t.revoked_at else "expired" if not t.active(now) else "active"
        used = t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "never"
        print(f"{t.id}  {t.prefix}…  {t.agent_id:<16} {t.role:<5}  {state:<7}  last used {used}")


async def _run(config, args, prog: str, expires_s: float | None) -> int:
    from gateway import logs
    from gateway.store.base import NotFound, StoreError
    from gateway.store.sqlite import SQLiteStore
    from routing.model import utcnow

    logs.configure("warning", config.log_format)
    if config.redis_url:  # never tokens in a local SQLite file the deployment does not read
        print(f"{prog}: error: tokens are not kept on the Redis backend yet (redis_url is set)", file=sys.stderr)
        return 2
    store = SQLiteStore.in_dir(config.data_dir, synchronous=config.store.synchronous)
    try:
        now = utcnow()
        if args.action == "create":
            if args.role != "admin" and await store.get_agent(args.agent) is None:
                print(f"{prog}: warning: no agent {args.agent!r} in the store yet (the daemon loads the directory "
                      "at start-up); the token has no teams until it exists", file=sys.stderr)
            expires = now + timedelta(seconds=expires_s) if expires_s else None
            token, info = await store.token_create(args.agent, args.role, created_by="cli", now=now,
                                                   expires_at=expires, note=args.note)
            print(token)
            print(f"id {info.id}, agent {info.agent_id}, role {info.role}"
                  + (f", expires {info.expires_at.isoformat()}" if info.expires_at else "")
                  + " — store it now: it is not shown again", file=sys.stderr)
        elif args.action == "list":
            _print_list(await store.token_list(args.agent, include_revoked=args.all), args.json)
        else:
            try:
                info = await store.token_revoke(args.id, actor="cli", now=now)
            except NotFound as exc:
                print(f"{prog}: {exc}", file=sys.stderr)
                return 1
            except StoreError as exc:
                print(f"{prog}: {exc}", file=sys.stderr)
                return 1
            print(f"revoked {info.id} ({info.prefix}…, agent {info.agent_id})")
        return 0
    finally:
        await store.close()
