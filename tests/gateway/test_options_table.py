"""The README's connector options are what the manifests generate."""

from __future__ import annotations

from pathlib import Path

from gateway.commands import options

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_tables_are_generated_from_the_manifests():
    block = options.readme_block(README.read_text(encoding="utf-8"))
    assert block is not None, "README.md lacks the generated options block"
    assert block == options.block(), "README.md is stale: run `omnigate options --readme README.md`"


def test_every_manifest_option_and_secret_flag_is_in_the_tables():
    from connectors.registry import builtin_manifests

    text = options.render()
    for channel, m in builtin_manifests().items():
        for name, spec in m.options.items():
            row = next(line for line in text.splitlines() if line.startswith(f"| `{channel}.{name}` |"))
            assert ("yes:" in row) == bool(spec.get("secret")), row
