"""``omnigate openapi``: print the OpenAPI 3.1 document of ``/api/v1`` (offline)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str], prog: str = "omnigate openapi") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    args = ap.parse_args(argv)
    import msgspec

    from gateway.openapi import document

    text = msgspec.json.format(msgspec.json.encode(document()), indent=2).decode() + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0
