"""Strict, position-keeping reading of composed YAML nodes.

Admin-written rules are read strictly (typos fail loudly) and every problem is
collected as a :class:`RuleError` at the node's ``file:line:column``, so one
run of the checker lists all of them. Readers return ``None`` after recording
an error; callers simply skip what could not be read.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import yaml

from routing.rules.types import RuleError

_TAG_NAMES = {
    "tag:yaml.org,2002:str": "a string",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a timestamp",
    "tag:yaml.org,2002:seq": "a list",
    "tag:yaml.org,2002:map": "a mapping",
}
_STR = "tag:yaml.org,2002:str"


def describe(node: yaml.Node) -> str:
    return _TAG_NAMES.get(node.tag, node.tag)


@dataclass(frozen=True)
class Pos:
    """Where something was written, for errors found after reading."""

    file: str
    line: int
    column: int

    def error(self, message: str) -> RuleError:
        return RuleError(self.file, self.line, self.column, message)


class Reader:
    """Reads the nodes of one file, appending problems to a shared list."""

    def __init__(self, file: str, errors: list[RuleError]):
        self.file = file
        self.errors = errors

    def pos(self, node: yaml.Node) -> Pos:
        m = node.start_mark
        return Pos(self.file, m.line + 1, m.column + 1)

    def error(self, node: yaml.Node, message: str) -> None:
        self.errors.append(self.pos(node).error(message))

    def mapping(
        self,
        node: yaml.Node,
        known: Collection[str],
        required: Collection[str] = (),
        what: str = "mapping",
    ) -> dict[str, yaml.Node] | None:
        """A mapping's value nodes by key; unknown, duplicate and missing keys
        are errors (with a "did you mean" for a likely typo)."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping, got {describe(node)}")
            return None
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node)
            if key is None:
                continue
            if key in out:
                self.error(key_node, f"duplicate key {key!r} in {what}")
                continue
            if key not in known:
                self.error(key_node, f"unknown key {key!r} in {what}{suggest(key, known)}")
                continue
            out[key] = value_node
        for key in required:
            if key not in out:
                self.error(node, f"{what} lacks the required key {key!r}")
        return out

    def items(self, node: yaml.Node, what: str) -> Iterator[tuple[str, yaml.Node, yaml.Node]]:
        """(key, key node, value node) of a mapping with free keys (names)."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"{what} must be a mapping, got {describe(node)}")
            return
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = self._key(key_node)
            if key is None:
                continue
            if key in seen:
                self.error(key_node, f"duplicate key {key!r} in {what}")
                continue
            seen.add(key)
            yield key, key_node, value_node

    def _key(self, node: yaml.Node) -> str | None:
        if isinstance(node, yaml.ScalarNode):
            return node.value  # its text, whatever YAML thinks it is (mon, 2025, on…)
        self.error(node, f"a key must be a string, got {describe(node)}")
        return None

    def string(self, node: yaml.Node, what: str = "value", allow_empty: bool = False) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR:
            hint = " (quote it)" if isinstance(node, yaml.ScalarNode) and node.tag != "tag:yaml.org,2002:null" else ""
            self.error(node, f"{what} must be a string, got {describe(node)}{hint}")
            return None
        if not allow_empty and not node.value.strip():
            self.error(node, f"{what} must not be empty")
            return None
        return node.value

    def text(self, node: yaml.Node, what: str = "value") -> str | None:
        """Any scalar's text (timestamps, numbers): for values parsed later."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            self.error(node, f"{what} must be a scalar, got {describe(node)}")
            return None
        return node.value

    def boolean(self, node: yaml.Node, what: str = "value") -> bool | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:bool":
            self.error(node, f"{what} must be true or false, got {describe(node)}")
            return None
        return node.value.lower() in ("true", "yes", "on", "y")

    def integer(self, node: yaml.Node, what: str = "value") -> int | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            self.error(node, f"{what} must be an integer, got {describe(node)}")
            return None
        return int(node.value.replace("_", ""), 0)

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"{what} must be a list, got {describe(node)}")
            return None
        return list(node.value)

    def strings(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]] | None:
        """A list of non-empty strings, each with its node (for later errors)."""
        items = self.sequence(node, what)
        if items is None:
            return None
        out = []
        for item in items:
            s = self.string(item, f"an item of {what}")
            if s is not None:
                out.append((s, item))
        return out


def suggest(key: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f"; expected one of: {', '.join(sorted(known))}"


def to_python(node: yaml.Node) -> object:
    """A node's plain value, for data handed to a typed decoder (test inputs)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()
