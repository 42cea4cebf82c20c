"""The third-party payload corpus in ``../shared/corpus`` (never copied here).

``rows(channel)`` gives the manifest rows of a channel, for data-driven tests;
``CORPUS`` is None when the corpus is absent, and the corpus tests skip with
that reason, except under CI (``CI=true``), where its absence is a failure.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent
_CANDIDATES = [Path(os.environ["OMNIGATE_CORPUS"])] if os.environ.get("OMNIGATE_CORPUS") else []
_CANDIDATES.append(_ROOT.parent / "shared" / "corpus")
CORPUS: Path | None = next((p for p in _CANDIDATES if (p / "MANIFEST.tsv").is_file()), None)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Row:
    path: str
    channel: str
    format: str
    source_repo: str
    what: str
    expected: str

    @property
    def file(self) -> Path:
        assert CORPUS is not None
        return CORPUS / self.path

    @property
    def invalid(self) -> bool:
        return self.expected.startswith("invalid")

    @property
    def meta(self) -> dict | None:
        """The ``*.meta.json`` sidecar (secrets and request context), if any."""
        side = self.file.with_suffix(".meta.json")
        return json.loads(side.read_text(encoding="utf-8")) if side.exists() else None

    @property
    def context(self) -> dict:
        """The sidecar as ``omnigate parse --context`` takes it: expected results removed."""
        m = dict(self.meta or {})
        for k in ("decrypted_xml", "note", "decrypted", "expected"):
            m.pop(k, None)
        return m

    def facts(self) -> dict[str, str]:
        """``key=value`` facts of the expected column (trailing comments dropped)."""
        out: dict[str, str] = {}
        for part in re.split(r";\s+", self.expected):
            m = re.match(r"([A-Za-z_.\-]+)=(.*)", part.strip())
            if m:
                v = re.sub(r"\s+\([^()]*\)?$", "", m.group(2).strip())
                out.setdefault(m.group(1), v)
        return out

    def read(self) -> bytes:
        return self.file.read_bytes()


def require_corpus() -> Path:
    if CORPUS is None:
        if IN_CI:
            pytest.fail("../shared/corpus is missing, and CI must run the corpus tests")
        pytest.skip("../shared/corpus is absent (set OMNIGATE_CORPUS to its path)")
    return CORPUS


def rows(channel: str | None = None) -> list[Row]:
    """Manifest rows (of one channel); [] when the corpus is absent."""
    if CORPUS is None:
        return []
    out = []
    with open(CORPUS / "MANIFEST.tsv", encoding="utf-8") as fh:
        head = fh.readline().rstrip("\n").split("\t")
        for line in fh:
            d = dict(zip(head, line.rstrip("\n").split("\t")))
            if channel is None or d["channel"] == channel:
                out.append(Row(d["path"], d["channel"], d["format"], d["source_repo"], d["what_it_exercises"], d["expected"]))
    return out


def row_named(channel: str, name: str) -> Row:
    """The manifest row of ``channel`` whose path contains ``name``. No corpus:
    skip (fail under CI, see ``require_corpus``); a corpus without that
    payload is always a failure, never a skip."""
    require_corpus()
    found = [r for r in rows(channel) if name in r.path]
    if not found:
        pytest.fail(f"the corpus has no {channel} payload named {name!r}")
    return found[0]


def params(channel: str) -> list:
    """pytest parameters for a channel's rows, one per payload, id = file name.

    When the corpus is absent, a single parameter that skips (or fails in CI)."""
    rs = rows(channel)
    if not rs:
        return [pytest.param(None, id="corpus-absent")]
    return [pytest.param(r, id=Path(r.path).name) for r in rs]
