"""The ``omnigate`` command line.

Each sub-command lives in its own module under :mod:`gateway.commands` and is
imported only when it runs, so ``omnigate parse email`` starts without
loading aiohttp, the store or any other channel.
"""

from __future__ import annotations

import importlib
import sys

#: name → (module, one-line help). The module has ``main(argv, prog) -> int``.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("gateway.commands.serve", "run the gateway daemon"),
    "parse": ("gateway.commands.parse", "normalize recorded payloads with a channel's parser"),
    "replay": ("gateway.commands.replay", "re-run journal entries through the pipeline"),
    "rules": ("gateway.commands.rules", "check, test and diff routing rules"),
    "calendar": ("gateway.commands.calendar", "business-hours calendars: due times, closed days"),
    "migrate": ("gateway.commands.migrate", "move a single-node (SQLite) installation to Redis"),
    "backup": ("gateway.commands.backup", "a consistent online copy of the SQLite store and attachments"),
    "tokens": ("gateway.commands.tokens", "per-agent API tokens: create, list, revoke"),
    "openapi": ("gateway.commands.openapi", "print the OpenAPI document of /api/v1"),
    "webhooks": ("gateway.commands.webhooks", "webhook endpoints: list, dead letters, replay"),
    "options": ("gateway.commands.options", "each connector's options as Markdown tables (from the manifests)"),
    "bench": ("gateway.bench", "measure throughput and latency against raw baselines"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: omnigate COMMAND [ARGS…]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`omnigate COMMAND --help` describes one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from importlib.metadata import version

        print(version("omnigate"))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"omnigate: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"omnigate {name}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
