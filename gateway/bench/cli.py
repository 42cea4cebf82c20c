"""``omnigate bench [--json] [--only NAME]``: the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys


def main(argv: list[str], prog: str = "omnigate bench") -> int:
    from gateway import bench

    ap = argparse.ArgumentParser(prog=prog, description=(bench.__doc__ or "").splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON object keyed by figure name")
    ap.add_argument("--only", metavar="NAME", help="run one figure (or one group)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMNIGATE_LOG_LEVEL", "warning")
    from gateway import logs
    from gateway.bench.runner import run

    logs.configure("warning", "json")
    quiet = args.json
    figures = asyncio.run(run(args.only, (lambda s: None) if quiet else (lambda s: print(s, file=sys.stderr))))
    if not figures:
        print(f"{prog}: no figure named {args.only!r}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(figures, ensure_ascii=False))
        return 0
    for name, fig in figures.items():
        if "error" in fig:
            print(f"{name:28} ERROR {fig['error']}")
            continue
        ratio = f"{fig['ratio']:.2f}× {fig.get('baseline_label', 'baseline')} ({fig['baseline']:g} {fig['unit']})" \
            if fig.get("ratio") is not None else ""
        to_ingest = f"  [{fig['ratio_to_ingest']:.2f}× ingest]" if "ratio_to_ingest" in fig else ""
        print(f"{name:28} {fig['value']:>12,.1f} {fig['unit']:<12}{to_ingest} {ratio}")
        detail = fig.get("detail") or {}
        if isinstance(detail, dict) and detail:
            print(" " * 29 + ", ".join(f"{k}={v}" for k, v in detail.items() if not isinstance(v, (dict, list))))
    return 0
