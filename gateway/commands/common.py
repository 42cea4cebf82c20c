"""What several commands share: loading the configuration from the standard
flags, with errors printed for people rather than as tracebacks."""

from __future__ import annotations

import argparse
import sys

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
