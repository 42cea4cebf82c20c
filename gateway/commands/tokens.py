"""``omnigate tokens``: per-agent API tokens (create, list, revoke).

``create`` prints the token once (the store keeps only its SHA-256).

When a daemon holds the data folder (``<data_dir>/omnigate.lock``, see
gateway/datalock.py) the commands go through its API (``/api/v1/tokens``;
the address is in the lock file, the token is ``OMNIGATE_API_TOKEN``/the
configuration's), so a revocation takes effect at once. Otherwise they take
the lock for their run and work on the SQLite file itself (offline: no
daemon needed to mint the first tokens).

With ``redis_url`` they work on the deployment's Redis directly (no local
folder is involved): a revocation reaches every instance at once, since each
one drops its token cache when the store's revocation epoch moves.
"""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta


def main(argv: list[str], prog: str = "omnigate tokens") -> int:
    from gateway.commands.common import add_config_flags, load_config, with_data_dir

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
    if config.redis_url:  # the shared state: no data folder, no daemon in between
        import asyncio

        return asyncio.run(_run(config, args, prog, expires_s))
    return with_data_dir(config, prog, lambda: _run(config, args, prog, expires_s),
                         lambda listen: _through(listen, config, args, prog))


async def _through(listen: str, config, args, prog: str) -> int:
    """The same commands through the running daemon's ``/api/v1/tokens``."""
    import aiohttp
    import msgspec

    from gateway.commands.common import daemon_base

    base = daemon_base(config, listen, prog, "managing tokens")
    if base is None:
        return 1
    headers = {"Authorization": f"Bearer {config.api_token}", "X-Omnigate-Actor": "cli"}
    async with aiohttp.ClientSession(base, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def call(method: str, path: str, expect: int, **kw) -> dict | None:
            """The daemon's answer, or None after printing its problem detail."""
            async with session.request(method, path, **kw) as r:
                answer = await r.json(content_type=None)
                if r.status != expect:
                    print(f"{prog}: {answer.get('detail') or answer.get('title')}", file=sys.stderr)
                    return None
                return answer

        try:
            if args.action == "create":
                body = {"agent_id": args.agent, "role": args.role}
                if args.expires:
                    body["expires_in"] = args.expires
                if args.note:
                    body["note"] = args.note
                if (answer := await call("POST", "/api/v1/tokens", 201, json=body)) is None:
                    return 1
                print(answer["token"])
                print(f"id {answer['id']}, agent {answer['agent_id']}, role {answer['role']}"
                      + (f", expires {answer['expires_at']}" if answer.get("expires_at") else "")
                      + " — store it now: it is not shown again", file=sys.stderr)
            elif args.action == "list":
                params = {"include_revoked": "true" if args.all else "false"}
                if args.agent:
                    params["agent_id"] = args.agent
                if (answer := await call("GET", "/api/v1/tokens", 200, params=params)) is None:
                    return 1
                from gateway.store.sqlite_tokens import TokenInfo

                _print_list(msgspec.convert(answer["items"], list[TokenInfo]), args.json)
            else:
                if (answer := await call("DELETE", f"/api/v1/tokens/{args.id}", 200)) is None:
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
    from gateway.store.factory import open_store
    from routing.model import utcnow

    logs.configure("warning", config.log_format)
    store = open_store(config)  # Redis with redis_url (never a local file the deployment does not read)
    try:
        now = utcnow()
        if args.action == "create":
            try:
                missing = args.role != "admin" and await store.get_agent(args.agent) is None
            except NotImplementedError:  # agents not on this backend yet: nothing to check against
                missing = False
            if missing:
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
    except StoreError as exc:  # e.g. Redis does not answer
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
