"""Reading rule files: the only I/O of the rules engine.

Files are composed into YAML *nodes*, not loaded into plain values, so every
later error can point at the line and column of the node at fault. Files are
read in file-name order (``00-root.yaml`` before ``10-billing.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from routing.rules.types import RuleError

#: libyaml's composer when PyYAML was built with it (same marks, ~10× faster)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Document:
    """One YAML file: its path as given (for messages) and its root node
    (None for an empty file)."""

    path: str
    node: yaml.Node | None


def yaml_files(directory: str | Path) -> list[Path]:
    """The ``*.yaml`` / ``*.yml`` files directly in ``directory``, by name."""
    d = Path(directory)
    return sorted((p for p in d.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml")), key=lambda p: p.name)


def read_documents(directory: str | Path) -> tuple[list[Document], list[RuleError]]:
    """Compose every YAML file of ``directory``; syntax errors are returned
    (with their position), not raised, so one bad file does not hide others."""
    d = Path(directory)
    if not d.is_dir():
        return [], [RuleError(str(d), 1, 1, "not a directory")]
    docs: list[Document] = []
    errors: list[RuleError] = []
    for path in yaml_files(d):
        doc, err = read_document(path)
        if err is not None:
            errors.append(err)
        else:
            docs.append(doc)
    return docs, errors


def read_document(path: Path) -> tuple[Document, RuleError | None]:
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Document(name, None), RuleError(name, 1, 1, f"cannot read: {exc}")
    return compose_text(text, name)


def compose_text(text: str, name: str) -> tuple[Document, RuleError | None]:
    """Compose YAML text (one document) into nodes; a syntax error becomes a
    positioned :class:`RuleError`."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        return Document(name, None), RuleError(name, line, col, f"YAML syntax: {problem}")
    except yaml.YAMLError as exc:
        return Document(name, None), RuleError(name, 1, 1, f"YAML: {exc}")
    return Document(name, node), None
