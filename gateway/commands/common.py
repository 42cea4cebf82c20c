"""What several commands share: loading the configuration from the standard
flags, with errors printed for people rather than as tracebacks, and working
on the data folder either holding its lock or through the daemon that holds
it (``replay``, ``tokens``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Awaitable, Callable

from gateway.config import Config, ConfigError, load


def add_config_flags(ap: argparse.ArgumentParser, listen: bool = False) -> None:
    ap.add_argument("--config", metavar="FILE", help="YAML configuration (default ./omnigate.yaml if present)")
    ap.add_argument("--data-dir", metavar="DIR", help="where the store, journal and attachments live "
                    "(default ./omnigate-data)")
    if listen:
        ap.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:8686)")


def load_config(args: argparse.Namespace, prog: str) -> Config | None:
    flags = {"data_dir": getattr(args, "data_dir", None), "listen": getattr(args, "listen", None)}
    try:
        return load(args.config, flags=flags)
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return None


def with_data_dir(config: Config, prog: str, local: Callable[[], Awaitable[int]],
                  through: Callable[[str], Awaitable[int]]) -> int:
    """Run a command that writes the data folder: ``local()`` holding the
    folder's lock (gateway/datalock.py) for its run, or — when a daemon holds
    it and wrote its listen address into the lock file — ``through(listen)``,
    the same command through that daemon's API. The exit status (1 when the
    folder is held by something that cannot be reached, or cannot be opened)."""
    from gateway import datalock

    try:
        lock = datalock.acquire(config.data_dir)
    except datalock.Locked as exc:
        if exc.info is None or not exc.info.listen:
            print(f"{prog}: {exc}", file=sys.stderr)
            return 1
        return asyncio.run(through(exc.info.listen))
    except OSError as exc:
        print(f"{prog}: {config.data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(local())
    finally:
        lock.release()


def daemon_base(config: Config, listen: str, prog: str, doing: str) -> str | None:
    """The base URL of the API of the daemon listening on ``listen`` (a
    wildcard address is reached on loopback); None, after saying so, when the
    configuration has no API token to talk to it (``doing``: what needs it)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if not config.api_token:
        print(f"{prog}: a daemon holds {config.data_dir} (listening on {listen}); {doing} through its API "
              "needs its token: set OMNIGATE_API_TOKEN (or OMNIGATE_API_TOKEN_FILE)", file=sys.stderr)
        return None
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"
