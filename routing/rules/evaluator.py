"""Evaluating a message against a compiled tree (pure: no I/O, no clock).

Routing is depth-first, as in Alertmanager: the root matches everything; at
each level the children are tried in order, the first that matches is
entered, and the search stops there unless that child says
``continue: true``. A rule matches when all its matchers and its keywords
match. The route path is every matched rule, depth-first.

The decision applies the matched rules' actions in path order, so a child
inherits its parent's settings and overrides what it sets itself; tags,
skills (highest level) and webhooks accumulate. One exception keeps
escalation safe across ``continue``: a priority set in one branch is only
lowered by a descendant of the rule that set it, never by a later sibling
branch (there the more urgent priority wins).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from routing.model import PRIORITY_RANK
from routing.rules.compiler import FIELD_BITS, CompiledTree, Node, is_word_char
from routing.rules.matchers import Calendar, MessageView
from routing.rules.spec import TEXT_FIELDS, TemplateSpec
from routing.rules.types import AutoReply, MatchedRule, RuleInput, RuleOutcome

_SUPPRESSED_AUTO = "the message is itself automatic ({})"


def evaluate(tree: CompiledTree, rule_input: RuleInput, calendars: Mapping[str, Calendar] | None = None) -> RuleOutcome:
    """Route one message: the path through the tree and the decision."""
    view = MessageView(rule_input, tree.timezone, calendars)
    hits = keyword_hits(tree, view)
    matched: list[tuple[Node, tuple[str, ...]]] = [(tree.root, ())]
    _walk(tree, tree.root, view, hits, _group_by_parent(tree, hits), matched)
    return _decide(tree, rule_input, matched)


def keyword_hits(tree: CompiledTree, view: MessageView) -> dict[int, str]:
    """Rule index → why its keywords matched, from one scan per text field."""
    hits: dict[int, str] = {}
    if tree.automaton is None:
        return hits
    for name in TEXT_FIELDS:
        s = view.folded[name]
        if not s:
            continue
        bit, last = FIELD_BITS[name], len(s) - 1
        for end, i in tree.automaton.iter(s):
            kw = tree.keywords[i]
            start = end - len(kw.word) + 1
            if kw.bounded_start and start > 0 and is_word_char(s[start - 1]):
                continue
            whole = not kw.bounded_end or end == last or not is_word_char(s[end + 1])
            for o in kw.owners:
                if o.fields & bit and (whole or o.prefix) and o.node not in hits:
                    listed = f" (list {o.list_name})" if o.list_name else ""
                    hits[o.node] = f'{name} contains "{o.written}"{listed}'
    return hits


def _group_by_parent(tree: CompiledTree, hits: dict[int, str]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for index in hits:
        node = tree.nodes[index]
        out.setdefault(node.parent, []).append(node.position)
    return out


def _walk(
    tree: CompiledTree,
    node: Node,
    view: MessageView,
    hits: dict[int, str],
    hit_children: dict[int, list[int]],
    out: list[tuple[Node, tuple[str, ...]]],
) -> None:
    gated = hit_children.get(node.index)
    positions = sorted({*node.ungated, *gated}) if gated else node.ungated
    for pos in positions:
        child = node.children[pos]
        reasons = _match(child, view, hits)
        if reasons is None:
            continue
        out.append((child, reasons))
        _walk(tree, child, view, hits, hit_children, out)
        if not child.cont:
            return


def _match(node: Node, view: MessageView, hits: dict[int, str]) -> tuple[str, ...] | None:
    for m in node.matchers:
        if not m.test(view):
            return None
    reasons = tuple(m.describe(view) for m in node.matchers)
    if node.keywords is not None:
        reasons += (hits[node.index],)
    return reasons or ("matches every message",)


# ---------------------------------------------------------------- the decision


@dataclass
class _Decision:
    priority: str = "normal"
    priority_by: int | None = None
    team: str | None = None
    skills: dict[str, int] = field(default_factory=dict)
    tags: dict[str, None] = field(default_factory=dict)  # ordered set
    assignee: str | None = None
    assign_team: str | None = None
    template: str | None = None
    webhooks: dict[str, None] = field(default_factory=dict)
    spam: bool = False
    ignore: bool = False

    def apply(self, node: Node) -> None:
        a = node.actions
        if a.priority is not None:
            self._set_priority(a.priority, node)
        self.team = a.team or self.team
        for name, level in a.skills:
            self.skills[name] = max(level, self.skills.get(name, 0))
        self.tags.update(dict.fromkeys(a.tags))
        if a.assign_agent is not None:
            self.assignee, self.assign_team = a.assign_agent, None
        if a.assign_team is not None:
            self.assignee, self.assign_team = None, a.assign_team
        self.template = a.auto_reply or self.template
        self.webhooks.update(dict.fromkeys(a.webhooks))
        self.spam = self.spam if a.spam is None else a.spam
        self.ignore = self.ignore if a.ignore is None else a.ignore

    def _set_priority(self, priority: str, node: Node) -> None:
        inherited = self.priority_by is None or self.priority_by in node.ancestors
        if inherited or PRIORITY_RANK[priority] < PRIORITY_RANK[self.priority]:
            self.priority, self.priority_by = priority, node.index


class _Settled(NamedTuple):
    """The actions of one route path, applied (what :class:`_Decision` ends with)."""

    path: tuple[str, ...]
    priority: str
    team: str | None
    skills: dict[str, int]
    tags: tuple[str, ...]
    assignee: str | None
    assign_team: str | None
    template: str | None
    webhooks: tuple[str, ...]
    spam: bool
    ignore: bool


#: Route paths whose applied actions a tree keeps (a tree with ``continue``
#: rules can have many paths: past this, the rest are applied each time).
MAX_SETTLED_PATHS = 4096


def _settle(tree: CompiledTree, matched: list[tuple[Node, tuple[str, ...]]]) -> _Settled:
    """The matched rules' actions applied in path order. They depend on the
    path alone (the nodes and their ancestors), so each tree keeps them per
    path: a message on a path seen before skips the applying."""
    key = tuple(n.index for n, _ in matched)
    settled = tree.settled.get(key)
    if settled is None:
        d = _Decision()
        for node, _ in matched:
            d.apply(node)
        settled = _Settled(tuple(n.id for n, _ in matched), d.priority, d.team, d.skills, tuple(d.tags), d.assignee,
                           d.assign_team, d.template, tuple(d.webhooks), d.spam, d.ignore)
        if len(tree.settled) < MAX_SETTLED_PATHS:
            tree.settled[key] = settled
    return settled


def _decide(tree: CompiledTree, ri: RuleInput, matched: list[tuple[Node, tuple[str, ...]]]) -> RuleOutcome:
    d = _settle(tree, matched)
    auto_reply, suppressed = None, None
    if d.template is not None:
        suppressed = _suppression(ri, d.spam, d.ignore)
        if suppressed is None:
            auto_reply = render(tree.templates[d.template], ri)
    return RuleOutcome(
        path=d.path,
        matched=tuple(MatchedRule(n.id, n.title, n.owner, reasons, n.depth) for n, reasons in matched),
        priority=d.priority,
        team=d.team,
        skills=dict(d.skills),  # each outcome its own: the caller may change it
        tags=d.tags,
        assignee=d.assignee,
        assign_team=d.assign_team,
        auto_reply=auto_reply,
        auto_reply_suppressed=suppressed,
        webhooks=d.webhooks,
        spam=d.spam,
        ignore=d.ignore,
    )


def _suppression(ri: RuleInput, spam: bool, ignore: bool) -> str | None:
    """Why an auto-reply must not go out: never answer a machine (auto-replies,
    bounces, bulk mail — loops and backscatter), spam or ignored messages."""
    if ri.inbound.auto:
        return _SUPPRESSED_AUTO.format(ri.inbound.auto)
    if spam:
        return "the message is spam"
    if ignore:
        return "the message is ignored"
    return None


# ---------------------------------------------------------------- auto-reply text


def choose_language(template: TemplateSpec, *preferred: str | None) -> str:
    """The first preferred language the template has (``zh`` ≈ ``zh-CN``),
    else the template's default."""
    by_lower = {lang.lower(): lang for lang in template.variants}
    by_primary: dict[str, str] = {}
    for lang in template.variants:
        by_primary.setdefault(lang.lower().split("-", 1)[0], lang)
    for want in preferred:
        if not want:
            continue
        w = want.lower().replace("_", "-")
        found = by_lower.get(w) or by_primary.get(w.split("-", 1)[0])
        if found:
            return found
    return template.default_language


#: Longest customer-controlled name put into a template.
MAX_NAME_CHARS = 64
#: Control and format characters (bidi overrides, zero-width) a name never needs.
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")
_SCHEME = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*):(//)")
_HOSTISH = re.compile(r"(?i)(?<=[a-z0-9-])\.(?=[a-z0-9-]{2,})")


def plain_name(value: str | None) -> str:
    """A customer-chosen display name made safe to put into a reply: one line
    of plain text, no control or bidi characters, at most 64 characters, and
    no working link (``http://evil.example`` → ``http[:]//evil[.]example``:
    mail clients link anything that looks like a URL or a host name)."""
    if not value:
        return ""
    text = " ".join(_INVISIBLE.sub(" ", value).split())
    text = _HOSTISH.sub("[.]", _SCHEME.sub(r"\1[:]\2", text))
    if len(text) > MAX_NAME_CHARS:
        text = text[: MAX_NAME_CHARS - 1].rstrip() + "…"
    return text


def render(template: TemplateSpec, ri: RuleInput) -> AutoReply:
    lang = choose_language(template, ri.inbound.language, ri.contact_language)
    variant = template.variants[lang]
    values = {
        "contact_name": plain_name(ri.contact_name or ri.inbound.sender.name) or variant.fallback_name,
        "ticket_number": "" if ri.ticket_number is None else str(ri.ticket_number),
    }
    # str.format_map reads the placeholders as string.Formatter does (the checker
    # allowed only known names), in C
    subject = variant.subject.format_map(values) if variant.subject is not None else None
    return AutoReply(template.name, lang, subject, variant.text.format_map(values))
