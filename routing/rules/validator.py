"""The checker: composed rule files → a :class:`RuleSet`, or precise errors.

Every problem is reported as ``file:line:column: message`` at the node at
fault, and all of them are collected in one pass: unknown keys (with a "did
you mean"), wrong types, malformed matchers, invalid regexes, bad time zones,
undefined list / interval / template references, unknown teams, agents and
webhooks (when a :class:`KnownNames` is given), duplicate rule ids, and rules
made unreachable by a catch-all sibling above them.

File layout (each key optional per file; files merge in name order)::

    timezone: Asia/Shanghai          # for weekday / time-literal matchers
    lists:     {NAME: [str, ...]}
    intervals: {NAME: {timezone, holidays: CN|none, times: [{weekdays: [mon-fri], hours: ["09:00-18:00"]}]}}
    templates: {NAME: {default_language: zh-CN, zh-CN: {subject, text, fallback_name}, en: {...}}}
    route:     the root rule (exactly one file has it)
    routes:    [rule, ...]  appended to the root's children, in file order
"""

from __future__ import annotations

import dataclasses
import re
import string
import zoneinfo
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import yaml

from routing.model import PRIORITIES
from routing.rules.loader import Document
from routing.rules.nodes import Pos, Reader
from routing.rules.spec import (
    DEFAULT_TIMEZONE,
    TEXT_FIELDS,
    Actions,
    IntervalSpec,
    KeywordSpec,
    MatcherSpec,
    Period,
    RuleSet,
    RuleSpec,
    TemplateSpec,
    Variant,
)
from routing.rules.syntax import SyntaxProblem, parse_hours, parse_matcher, parse_weekdays
from routing.rules.types import KnownNames, RuleError

FILE_KEYS = ("timezone", "lists", "intervals", "templates", "route", "routes")
RULE_KEYS = (
    "id", "title", "owner", "enabled", "matchers", "keywords", "priority", "team", "skills", "tags",
    "assign", "auto_reply", "webhooks", "spam", "ignore", "continue", "routes",
)  # fmt: skip
ROOT_FORBIDDEN = ("matchers", "keywords", "continue")
TEMPLATE_VARIABLES = ("contact_name", "ticket_number")
_ID = re.compile(r"[a-z0-9][a-z0-9_.-]*\Z")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*\Z")


@dataclass
class _Ref:
    kind: str  # list | interval | template | team | agent | webhook
    name: str
    pos: Pos


@dataclass
class _Collected:
    """Definitions gathered from all files, with where each was defined."""

    timezone: tuple[str, Pos] | None = None
    lists: dict[str, tuple[tuple[str, ...], Pos]] = field(default_factory=dict)
    intervals: dict[str, tuple[IntervalSpec, Pos]] = field(default_factory=dict)
    templates: dict[str, tuple[TemplateSpec, Pos]] = field(default_factory=dict)
    root: RuleSpec | None = None
    root_pos: Pos | None = None
    root_written: bool = False  # a `route:` was there, even if it had errors
    extra_routes: list[RuleSpec] = field(default_factory=list)
    refs: list[_Ref] = field(default_factory=list)


def check_documents(
    docs: Iterable[Document],
    directory: KnownNames | None = None,
    calendars: Collection[str] = (),
    errors: list[RuleError] | None = None,
) -> tuple[RuleSet | None, list[RuleError]]:
    """Validate composed rule files. ``calendars`` names the business-hours
    calendars the runtime will supply (accepted wherever an interval is)."""
    errors = [] if errors is None else errors
    unreadable = bool(errors)  # a file that could not be read may hold the root
    docs = list(docs)
    got = _Collected()
    for doc in docs:
        if doc.node is not None:
            _FileReader(Reader(doc.path, errors), got).read(doc.node)
    if got.root is None:
        if not got.root_written and not unreadable:
            errors.append(RuleError(docs[0].path if docs else "rules", 1, 1, "no root route: one file must define `route:`"))
        return None, _sorted(errors)
    root = dataclasses.replace(got.root, children=got.root.children + tuple(got.extra_routes))
    _check_ids(root, errors)
    _check_reachable(root, errors)
    _check_refs(got, directory, set(calendars), errors)
    if errors:
        return None, _sorted(errors)
    ruleset = RuleSet(
        timezone=got.timezone[0] if got.timezone else DEFAULT_TIMEZONE,
        lists={k: v for k, (v, _) in got.lists.items()},
        intervals={k: v for k, (v, _) in got.intervals.items()},
        templates={k: v for k, (v, _) in got.templates.items()},
        root=root,
        files=tuple(d.path for d in docs),
    )
    return ruleset, []


def _sorted(errors: list[RuleError]) -> list[RuleError]:
    return sorted(set(errors))


# ---------------------------------------------------------------- one file


class _FileReader:
    def __init__(self, r: Reader, got: _Collected):
        self.r = r
        self.got = got

    def read(self, node: yaml.Node) -> None:
        top = self.r.mapping(node, FILE_KEYS, what="rule file")
        if top is None:
            return
        if "timezone" in top:
            self._timezone(top["timezone"])
        for key, reader in (("lists", self._list), ("intervals", self._interval), ("templates", self._template)):
            if key in top:
                for name, key_node, value in self.r.items(top[key], key):
                    if self._new_name(key, name, key_node):
                        reader(name, key_node, value)
        if "route" in top:
            self._root(top["route"])
        if "routes" in top:
            self.got.extra_routes += self._rules(top["routes"], "routes")

    def _new_name(self, kind: str, name: str, node: yaml.Node) -> bool:
        if not _NAME.match(name):
            self.r.error(node, f"{kind[:-1]} name {name!r} must match [A-Za-z_][A-Za-z0-9_.-]*")
            return False
        earlier = getattr(self.got, kind).get(name)
        if earlier is not None:
            first = earlier[1]
            self.r.error(node, f"{kind[:-1]} {name!r} is already defined at {first.file}:{first.line}:{first.column}")
            return False
        return True

    def _timezone(self, node: yaml.Node) -> None:
        tz = self._zone(node)
        if tz is None:
            return
        if self.got.timezone is not None:
            first = self.got.timezone[1]
            self.r.error(node, f"timezone is already set at {first.file}:{first.line}:{first.column}")
            return
        self.got.timezone = (tz, self.r.pos(node))

    def _zone(self, node: yaml.Node) -> str | None:
        name = self.r.string(node, "timezone")
        if name is None:
            return None
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            self.r.error(node, f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai)")
            return None
        return name

    # ------------------------------------------------------------ definitions

    def _list(self, name: str, key_node: yaml.Node, node: yaml.Node) -> None:
        items = self.r.strings(node, f"list {name!r}")
        if items is not None:
            self.got.lists[name] = (tuple(s for s, _ in items), self.r.pos(key_node))

    def _interval(self, name: str, key_node: yaml.Node, node: yaml.Node) -> None:
        m = self.r.mapping(node, ("timezone", "times", "holidays"), required=("times",), what=f"interval {name!r}")
        if m is None:
            return
        holidays = self.r.string(m["holidays"], "holidays") if "holidays" in m else "none"
        if holidays is not None and holidays not in ("CN", "none"):
            self.r.error(m["holidays"], f"interval {name!r}: holidays must be CN or none, got {holidays!r}")
            holidays = None
        if holidays is None:
            return
        tz = self._zone(m["timezone"]) if "timezone" in m else DEFAULT_TIMEZONE
        periods = [self._period(p) for p in self.r.sequence(m["times"], "times") or []] if "times" in m else []
        if "times" in m and not periods:
            self.r.error(m["times"], f"interval {name!r} needs at least one entry in times")
        if tz is not None and periods and None not in periods:
            self.got.intervals[name] = (IntervalSpec(name, tz, tuple(periods), holidays), self.r.pos(key_node))

    def _period(self, node: yaml.Node) -> Period | None:
        m = self.r.mapping(node, ("weekdays", "hours"), what="a times entry")
        if m is None:
            return None
        days = self._each(m, "weekdays", parse_weekdays)
        hours = self._each(m, "hours", parse_hours)
        if days is None or hours is None:
            return None
        return Period(frozenset().union(*days) if "weekdays" in m else frozenset(range(7)), tuple(hours))

    def _each(self, m: dict[str, yaml.Node], key: str, parse) -> list | None:
        """``parse`` applied to each string of the list ``m[key]`` ([] when absent)."""
        if key not in m:
            return []
        items = self.r.strings(m[key], key)
        if items is None:
            return None
        out = []
        for value, item in items:
            try:
                out.append(parse(value))
            except SyntaxProblem as exc:
                self.r.error(item, str(exc))
                return None
        return out

    def _template(self, name: str, key_node: yaml.Node, node: yaml.Node) -> None:
        variants: dict[str, Variant | None] = {}
        default: tuple[str, yaml.Node] | None = None
        for key, k_node, value in self.r.items(node, f"template {name!r}"):
            if key == "default_language":
                lang = self.r.string(value, "default_language")
                default = (lang, value) if lang is not None else None
            elif _LANGUAGE.match(key):
                variants[key] = self._variant(name, key, value)
            else:
                self.r.error(k_node, f"unknown key {key!r} in template {name!r}: expected default_language or a language tag such as zh-CN or en")
        if not variants:
            self.r.error(node, f"template {name!r} needs at least one language variant (zh-CN: {{text: …}})")
            return
        if None in variants.values():  # the variant's own error was reported
            return
        if default is None:
            if len(variants) > 1:
                self.r.error(node, f"template {name!r} has several languages: say which is the default_language")
                return
            default = (next(iter(variants)), node)
        if default[0] not in variants:
            self.r.error(default[1], f"default_language {default[0]!r} is not one of the template's languages ({', '.join(variants)})")
            return
        self.got.templates[name] = (TemplateSpec(name, default[0], variants), self.r.pos(key_node))

    def _variant(self, template: str, lang: str, node: yaml.Node) -> Variant | None:
        what = f"template {template!r} language {lang!r}"
        m = self.r.mapping(node, ("subject", "text", "fallback_name"), required=("text",), what=what)
        if m is None or "text" not in m:
            return None
        values = {k: self.r.string(v, k, allow_empty=k == "fallback_name") for k, v in m.items()}
        ok = all(v is not None for v in values.values())
        for key in ("subject", "text"):
            if values.get(key) is not None:
                ok &= self._placeholders(m[key], values[key])
        if not ok:
            return None
        return Variant(values.get("subject"), values["text"], values.get("fallback_name") or "")

    def _placeholders(self, node: yaml.Node, text: str) -> bool:
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
        except ValueError as exc:
            self.r.error(node, f"bad placeholder: {exc} (write {{{{ and }}}} for literal braces)")
            return False
        unknown = [n for n in names if n not in TEMPLATE_VARIABLES]
        if unknown:
            self.r.error(node, f"unknown placeholder {{{unknown[0]}}}; known: {', '.join('{' + v + '}' for v in TEMPLATE_VARIABLES)}")
            return False
        return True

    # ------------------------------------------------------------ rules

    def _root(self, node: yaml.Node) -> None:
        self.got.root_written = True
        if self.got.root is not None:
            first = self.got.root_pos
            self.r.error(node, f"a second root route: the root is already defined at {first.file}:{first.line}:{first.column}")
            return
        if isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                if key_node.value in ROOT_FORBIDDEN:
                    self.r.error(key_node, f"the root route matches every message: {key_node.value!r} is not allowed here")
        rule = self._rule(node, root=True)
        if rule is not None:
            self.got.root, self.got.root_pos = rule, rule.pos

    def _rules(self, node: yaml.Node, what: str) -> list[RuleSpec]:
        out = []
        for item in self.r.sequence(node, what) or []:
            rule = self._rule(item)
            if rule is not None:
                out.append(rule)
        return out

    def _rule(self, node: yaml.Node, root: bool = False) -> RuleSpec | None:
        m = self.r.mapping(node, RULE_KEYS, required=("id", "title", "owner"), what="the root route" if root else "rule")
        if m is None:
            return None
        if root:  # reported by _root; dropped so nothing else trips on them
            m = {k: v for k, v in m.items() if k not in ROOT_FORBIDDEN}
        rid = self._rule_id(m["id"]) if "id" in m else None
        title = self.r.string(m["title"], "title") if "title" in m else None
        owner = self.r.string(m["owner"], "owner") if "owner" in m else None
        enabled = self.r.boolean(m["enabled"], "enabled") if "enabled" in m else True
        cont = self.r.boolean(m["continue"], "continue") if "continue" in m else False
        matchers = [self._matcher(x) for x in self.r.sequence(m["matchers"], "matchers") or []] if "matchers" in m else []
        keywords = self._keywords(m["keywords"]) if "keywords" in m else None
        actions = self._actions(m)
        children = self._rules(m["routes"], "routes") if "routes" in m else []
        parts = (rid, title, owner, enabled, cont, actions, *matchers)
        if any(p is None for p in parts) or ("keywords" in m and keywords is None):
            return None
        return RuleSpec(
            id=rid, title=title, owner=owner, enabled=enabled, matchers=tuple(matchers), keywords=keywords,
            actions=actions, cont=cont, children=tuple(children), pos=self.r.pos(m["id"]),
        )  # fmt: skip

    def _rule_id(self, node: yaml.Node) -> str | None:
        rid = self.r.string(node, "id")
        if rid is not None and not _ID.match(rid):
            self.r.error(node, f"rule id {rid!r} must be lower-case letters, digits, '_', '.', '-'")
            return None
        return rid

    def _matcher(self, node: yaml.Node) -> MatcherSpec | None:
        source = self.r.string(node, "matcher")
        if source is None:
            return None
        try:
            parsed = parse_matcher(source)
            if parsed.op in ("=~", "!~"):
                re.compile(parsed.value)
        except SyntaxProblem as exc:
            self.r.error(node, str(exc))
            return None
        except re.error as exc:
            self.r.error(node, f"invalid regex {parsed.value!r}: {exc}")
            return None
        if parsed.ref is not None:
            self.got.refs.append(_Ref("interval" if parsed.field == "time" else "list", parsed.ref, self.r.pos(node)))
        return MatcherSpec(parsed, self.r.pos(node))

    def _keywords(self, node: yaml.Node) -> KeywordSpec | None:
        m = self.r.mapping(node, ("any", "lists", "in"), what="keywords")
        if m is None:
            return None
        if "any" not in m and "lists" not in m:
            self.r.error(node, "keywords needs `any: [words]` and/or `lists: [names]`")
            return None
        words = self.r.strings(m["any"], "any") if "any" in m else []
        for word, w_node in words or []:
            if word.strip("*").strip() == "" or "*" in word.rstrip("*") or word.endswith("**"):
                self.r.error(w_node, f"keyword {word!r}: '*' may only end a word (prefix match)")
                return None
        lists = self.r.strings(m["lists"], "lists") if "lists" in m else []
        for name, l_node in lists or []:
            self.got.refs.append(_Ref("list", name, self.r.pos(l_node)))
        fields = self.r.strings(m["in"], "in") if "in" in m else [(f, node) for f in TEXT_FIELDS]
        for f, f_node in fields or []:
            if f not in TEXT_FIELDS:
                self.r.error(f_node, f"keywords look in {' and '.join(TEXT_FIELDS)}, not {f!r}")
                return None
        if words is None or lists is None or not fields:
            return None
        return KeywordSpec(tuple(w for w, _ in words), tuple(n for n, _ in lists), tuple(f for f, _ in fields), self.r.pos(node))

    def _actions(self, m: dict[str, yaml.Node]) -> Actions | None:
        r, refs, pos = self.r, self.got.refs, self.r.pos
        values: dict = {}
        if "priority" in m:
            p = r.string(m["priority"], "priority")
            if p is not None and p not in PRIORITIES:
                r.error(m["priority"], f"priority is one of {', '.join(PRIORITIES)}, got {p!r}")
                p = None
            values["priority"] = p
        if "team" in m:
            values["team"] = r.string(m["team"], "team")
            refs.append(_Ref("team", values["team"], pos(m["team"])))
        if "skills" in m:
            values["skills"] = self._skills(m["skills"])
        for key in ("tags", "webhooks"):
            if key in m:
                items = r.strings(m[key], key)
                values[key] = None if items is None else tuple(s for s, _ in items)
                if key == "webhooks":
                    refs.extend(_Ref("webhook", s, pos(n)) for s, n in items or [])
        if "assign" in m:
            assign = self._assign(m["assign"])
            values.update(assign if assign is not None else {"assign_agent": None})
        if "auto_reply" in m:
            values["auto_reply"] = r.string(m["auto_reply"], "auto_reply")
            refs.append(_Ref("template", values["auto_reply"], pos(m["auto_reply"])))
        for key in ("spam", "ignore"):
            if key in m:
                values[key] = r.boolean(m[key], key)
        if any(v is None for v in values.values()):
            return None
        return Actions(**values)

    def _skills(self, node: yaml.Node) -> tuple[tuple[str, int], ...] | None:
        out = []
        for name, key_node, value in self.r.items(node, "skills"):
            self.got.refs.append(_Ref("skill", name, self.r.pos(key_node)))
            level = self.r.integer(value, f"level of skill {name!r}")
            if level is not None and not 1 <= level <= 10:
                self.r.error(value, f"level of skill {name!r} must be between 1 and 10, got {level}")
                level = None
            if level is None:
                return None
            out.append((name, level))
        return tuple(out)

    def _assign(self, node: yaml.Node) -> dict[str, str] | None:
        m = self.r.mapping(node, ("agent", "team"), what="assign")
        if m is not None and len(m) != 1:
            self.r.error(node, "assign takes exactly one of agent or team")
        if m is None or len(m) != 1:
            return None
        ((key, value),) = m.items()
        name = self.r.string(value, f"assign.{key}")
        if name is None:
            return None
        self.got.refs.append(_Ref(key, name, self.r.pos(value)))
        return {f"assign_{key}": name}


# ---------------------------------------------------------------- whole-set checks


def _check_ids(root: RuleSpec, errors: list[RuleError]) -> None:
    seen: dict[str, RuleSpec] = {}
    for rule in root.walk():
        first = seen.setdefault(rule.id, rule)
        if first is not rule:
            errors.append(rule.pos.error(f"duplicate rule id {rule.id!r} (first defined at {first.pos.file}:{first.pos.line}:{first.pos.column})"))


def _check_reachable(root: RuleSpec, errors: list[RuleError]) -> None:
    for rule in root.walk():
        catch_all = None
        for child in rule.children:
            if catch_all is not None and child.enabled:
                where = f"{catch_all.pos.file}:{catch_all.pos.line}:{catch_all.pos.column}"
                errors.append(child.pos.error(
                    f"rule {child.id!r} is unreachable: rule {catch_all.id!r} above it ({where}) matches every message and does not continue"
                ))  # fmt: skip
            elif child.catch_all:
                catch_all = child


def _check_refs(got: _Collected, directory: KnownNames | None, calendars: set[str], errors: list[RuleError]) -> None:
    defined = {
        "list": set(got.lists),
        "interval": set(got.intervals) | calendars,
        "template": set(got.templates),
    }
    if directory is not None:
        for kind, names in (("team", directory.teams), ("agent", directory.agents), ("webhook", directory.webhooks),
                            ("skill", directory.skills)):
            if names is not None:
                defined[kind] = set(names)
    for ref in got.refs:
        names = defined.get(ref.kind)
        if names is None or ref.name is None or ref.name in names:
            continue
        what = "interval or calendar" if ref.kind == "interval" else ref.kind
        known = f"; defined: {', '.join(sorted(names))}" if names else f"; no {what} is defined"
        errors.append(ref.pos.error(f"undefined {what} {ref.name!r}{known}"))
