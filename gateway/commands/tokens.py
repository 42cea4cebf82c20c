"""``omnigate tokens``: per-agent API tokens (create, list, revoke).

``create`` prints the token once (the store keeps only its SHA-256).
These commands work offline, straight on the SQLite file of the data folder;
a running daemon sees a new token at once and a revocation within
``rest.token_cache_s`` seconds (``DELETE /api/v1/tokens/{id}`` on the daemon
revokes at once).
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
    return asyncio.run(_run(config, args, prog, expires_s))


async def _run(config, args, prog: str, expires_s: float | None) -> int:
    import msgspec

    from gateway import logs
    from gateway.store.base import NotFound, StoreError
    from gateway.store.sqlite import SQLiteStore
    from routing.model import utcnow

    logs.configure("warning", config.log_format)
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
            items = await store.token_list(args.agent, include_revoked=args.all)
            if args.json:
                sys.stdout.write(msgspec.json.encode(items).decode() + "\n")
            else:
                for t in items:
                    state = "revoked" if t.revoked_at else "expired" if not t.active(now) else "active"
                    used = t.last_used_at.isoformat(timespec="seconds") if t.last_used_at else "never"
                    print(f"{t.id}  {t.prefix}…  {t.agent_id:<16} {t.role:<5}  {state:<7}  last used {used}")
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
