"""``omnigate parse``: what does this payload become? (CONTRACTS.md)

Runs a channel's pure parser on recorded payloads and prints one JSON object
per normalized Inbound per line. Exit 0 when every file normalized (defects
listed), 1 when any file had to be refused (``FILE: error: reason`` on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str], prog: str = "omnigate parse") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the channel names the parser knows")
    ap.add_argument("--context", metavar="CONTEXT.json", help="secrets, query, headers and url of the live request")
    ap.add_argument("channel", nargs="?")
    ap.add_argument("files", nargs="*")
    args = ap.parse_args(argv)

    from connectors.registry import RegistryError, parse_channels, parser_for

    if args.list:
        for name in sorted(parse_channels()):
            print(name)
        return 0
    if not args.channel or not args.files:
        ap.error("CHANNEL and at least one FILE are needed (or --list)")
    try:
        parse = parser_for(args.channel)
    except RegistryError as exc:
        print(f"omnigate parse: error: {exc}", file=sys.stderr)
        return 2
    context: dict = {}
    if args.context:
        try:
            with open(args.context, encoding="utf-8") as fh:
                context = json.load(fh)
        except (OSError, ValueError) as exc:
            print(f"{args.context}: error: cannot read context: {exc}", file=sys.stderr)
            return 2
        if not isinstance(context, dict):
            print(f"{args.context}: error: context must be a JSON object", file=sys.stderr)
            return 2
    context.setdefault("channel", args.channel)

    from connectors.base import PayloadRejected
    from routing.model import inbound_public

    import msgspec

    enc = msgspec.json.Encoder()
    out = sys.stdout.buffer
    status = 0
    for path in args.files:
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            print(f"{path}: error: {exc.strerror or exc}", file=sys.stderr)
            status = 1
            continue
        warnings: list[str] = []
        try:
            inbounds = parse(raw, dict(context, source_name=path, warn=warnings.append))
        except PayloadRejected as exc:
            print(f"{path}: error: {exc}", file=sys.stderr)
            status = 1
            continue
        for inbound in inbounds:
            out.write(enc.encode(inbound_public(inbound)))
            out.write(b"\n")
        for warning in warnings:
            print(f"{path}: warning: {warning}", file=sys.stderr)
    out.flush()
    return status
