"""``omnigate serve``: run the gateway daemon (CONTRACTS.md).

Listens on 127.0.0.1:8686 and keeps its data in ./omnigate-data unless told
otherwise; SIGTERM and SIGINT stop it gracefully (the worker finishes what it
holds; whatever is still pending is picked up at the next start). It holds
``<data_dir>/omnigate.lock`` (gateway/datalock.py): a second daemon on the
same folder refuses to start.
"""

from __future__ import annotations

import argparse
import sys


#: How the daemon's HTTP server treats clients (tests run the app with these too).
#: A client that disconnects mid-request is not cancelled under the handler:
#: the route guard sees the reset and logs one info line. Idle keep-alive
#: connections close after 75 s; a body must arrive whole within
#: connectors.http.BODY_TIMEOUT_S (the shared body reader), else 408.
SERVER_SETTINGS = {"handler_cancellation": False, "keepalive_timeout": 75.0}


def main(argv: list[str], prog: str = "omnigate serve") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    from gateway.commands.common import add_config_flags, load_config

    add_config_flags(ap, listen=True)
    args = ap.parse_args(argv)
    config = load_config(args, prog)
    if config is None:
        return 2

    import structlog

    from gateway import datalock, logs
    from gateway.app import StartupError, create_app
    from gateway.store.base import StoreError

    logs.configure(config.log_level, config.log_format)
    log = structlog.get_logger("omnigate")
    try:  # one daemon per data folder, held until this process exits
        lock = datalock.acquire(config.data_dir, config.listen)
    except datalock.Locked as exc:
        log.error("startup.data_dir_locked", data_dir=config.data_dir,
                  holder_pid=exc.info.pid if exc.info else None, holder_listen=exc.info.listen if exc.info else None)
        print(f"{prog}: cannot start: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: cannot start: {config.data_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    try:
        return _serve(config, prog, log, create_app, StartupError, StoreError)
    finally:
        lock.release()


def _serve(config, prog, log, create_app, StartupError, StoreError) -> int:
    from aiohttp import web

    try:
        app = create_app(config, clock=_test_clock())
    except (StartupError, StoreError, OSError) as exc:
        log.error("startup.failed", error=str(exc))
        print(f"{prog}: cannot start: {exc}", file=sys.stderr)
        return 1
    if not config.api_token:
        log.warning("startup.no_api_token",
                    hint="the API channel and /api/v1 answer 401 until OMNIGATE_API_TOKEN "
                         "(or OMNIGATE_API_TOKEN_FILE) is set")
    log.info("startup.listening", listen=config.listen, data_dir=config.data_dir,
             channels=sorted(set(config.channels) | {"api"}))
    try:
        web.run_app(app, host=config.host, port=config.port, print=None, access_log=None,
                    shutdown_timeout=10, handle_signals=True, **SERVER_SETTINGS)
    except OSError as exc:
        log.error("startup.listen_failed", listen=config.listen, error=str(exc))
        return 1
    log.info("shutdown.complete")
    return 0


def _test_clock():
    """``OMNIGATE_TEST_CLOCK=<ISO 8601 instant with offset>``: the daemon's
    clock starts there and ticks on (for tests that run a real daemon; the
    default is the real time)."""
    import os
    from datetime import datetime

    text = os.environ.get("OMNIGATE_TEST_CLOCK")
    if not text:
        return None
    from gateway.clock import ticking_from

    return ticking_from(datetime.fromisoformat(text))
