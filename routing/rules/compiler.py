"""Compiling a checked rule set into the tree the evaluator walks.

Compiled once per (re)load: regexes are compiled, named lists resolved, and
the keywords of *all* rules go into ONE Aho–Corasick automaton
(pyahocorasick), so a message's subject and text are each scanned once,
whatever the number of keyword rules. Each node also knows which of its
children have no keyword gate: the evaluator visits only those plus the
children whose keywords were found, so 10,000 keyword rules under one parent
cost the hits, not 10,000 tests.

Keywords are compared folded (NFKC + casefold). A keyword that starts or ends
with a letter or digit of an alphabetic script must sit on a word boundary
there (``ai`` does not match "said"); a trailing ``*`` makes it a prefix
(``refund*`` matches "refunded"). CJK keywords match anywhere, as Chinese has
no spaces between words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ahocorasick

from routing.rules.matchers import Matcher, build_matcher
from routing.rules.spec import TEXT_FIELDS, Actions, IntervalSpec, KeywordSpec, RuleSet, RuleSpec, TemplateSpec
from routing.rules.syntax import fold

FIELD_BITS = {name: 1 << i for i, name in enumerate(TEXT_FIELDS)}


@dataclass(frozen=True, slots=True)
class KeywordOwner:
    """One use of a keyword: by which rule, in which fields, how it was written."""

    node: int
    fields: int  # FIELD_BITS mask
    prefix: bool
    written: str
    list_name: str | None


@dataclass(slots=True)
class Keyword:
    """One folded word in the automaton and every rule that uses it."""

    word: str
    bounded_start: bool
    bounded_end: bool
    owners: list[KeywordOwner] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Node:
    index: int
    id: str
    title: str
    owner: str
    enabled: bool
    matchers: tuple[Matcher, ...]
    sources: tuple[str, ...]  # the matchers as written, for the tree view
    keywords: KeywordSpec | None
    actions: Actions
    cont: bool
    depth: int
    ancestors: frozenset[int]
    children: list[Node] = field(default_factory=list)
    parent: int | None = None
    position: int = 0  # among the parent's children
    ungated: tuple[int, ...] = ()  # positions of enabled children without keywords


@dataclass(frozen=True, eq=False)
class CompiledTree:
    root: Node
    nodes: tuple[Node, ...]
    automaton: ahocorasick.Automaton | None
    keywords: tuple[Keyword, ...]
    timezone: str
    templates: Mapping[str, TemplateSpec]
    intervals: Mapping[str, IntervalSpec]
    lists: Mapping[str, tuple[str, ...]]
    files: tuple[str, ...]
    #: route path (node indexes) → its actions applied, filled as messages are
    #: routed (routing/rules/evaluator.py ``_settle``): a cache of a pure function
    settled: dict[tuple[int, ...], Any] = field(default_factory=dict, repr=False)

    @property
    def rule_count(self) -> int:
        return len(self.nodes)


def compile_ruleset(rs: RuleSet) -> CompiledTree:
    nodes: list[Node] = []
    root = _compile_node(rs.root, rs, nodes, depth=0, ancestors=frozenset())
    keywords = _collect_keywords(rs, nodes)
    return CompiledTree(
        root=root,
        nodes=tuple(nodes),
        automaton=_automaton(keywords),
        keywords=tuple(keywords),
        timezone=rs.timezone,
        templates=rs.templates,
        intervals=rs.intervals,
        lists=rs.lists,
        files=rs.files,
    )


def _compile_node(spec: RuleSpec, rs: RuleSet, nodes: list[Node], depth: int, ancestors: frozenset[int]) -> Node:
    node = Node(
        index=len(nodes),
        id=spec.id,
        title=spec.title,
        owner=spec.owner,
        enabled=spec.enabled,
        matchers=tuple(build_matcher(m, rs.lists, rs.intervals, rs.timezone) for m in spec.matchers),
        sources=tuple(m.parsed.canonical() for m in spec.matchers),
        keywords=spec.keywords,
        actions=spec.actions,
        cont=spec.cont,
        depth=depth,
        ancestors=ancestors,
    )
    nodes.append(node)
    for pos, child_spec in enumerate(spec.children):
        child = _compile_node(child_spec, rs, nodes, depth + 1, ancestors | {node.index})
        child.parent, child.position = node.index, pos
        node.children.append(child)
    node.ungated = tuple(c.position for c in node.children if c.enabled and c.keywords is None)
    return node


def _collect_keywords(rs: RuleSet, nodes: list[Node]) -> list[Keyword]:
    by_word: dict[str, Keyword] = {}
    for node in nodes:
        spec = node.keywords
        if spec is None or not node.enabled or not _reachable(node, nodes):
            continue
        mask = sum(FIELD_BITS[f] for f in spec.fields)
        written = [(w, None) for w in spec.words] + [(w, name) for name in spec.lists for w in rs.lists[name]]
        for word, list_name in written:
            prefix = word.endswith("*")
            folded = fold(word.rstrip("*")).strip()
            if not folded:
                continue
            kw = by_word.get(folded)
            if kw is None:
                kw = by_word[folded] = Keyword(folded, is_word_char(folded[0]), is_word_char(folded[-1]))
            kw.owners.append(KeywordOwner(node.index, mask, prefix, word.rstrip("*"), list_name))
    return list(by_word.values())


def _reachable(node: Node, nodes: list[Node]) -> bool:
    """Only enabled rules under enabled parents can ever match."""
    return all(nodes[a].enabled for a in node.ancestors)


def _automaton(keywords: list[Keyword]) -> ahocorasick.Automaton | None:
    if not keywords:
        return None
    auto = ahocorasick.Automaton()
    for i, kw in enumerate(keywords):
        auto.add_word(kw.word, i)
    auto.make_automaton()
    return auto


def is_word_char(c: str) -> bool:
    """A letter or digit of a script that separates words with spaces (below
    the CJK blocks, which start at U+2E80)."""
    return c.isalnum() and c < "\u2e80"
