"""The checked rule set, as the validator reads it and the compiler takes it.

Plain frozen dataclasses with the positions of what may still be reported
(references, ids). Nothing here evaluates anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from routing.rules.nodes import Pos
from routing.rules.syntax import ParsedMatcher

DEFAULT_TIMEZONE = "Asia/Shanghai"
TEXT_FIELDS = ("subject", "text")


@dataclass(frozen=True)
class MatcherSpec:
    parsed: ParsedMatcher
    pos: Pos


@dataclass(frozen=True)
class KeywordSpec:
    """``keywords: {any: [...], lists: [...], in: [subject, text]}``: matches
    when any of the words (or of the named lists' words) occurs in one of the
    fields."""

    words: tuple[str, ...]
    lists: tuple[str, ...]
    fields: tuple[str, ...]
    pos: Pos


@dataclass(frozen=True)
class Actions:
    priority: str | None = None
    team: str | None = None
    skills: tuple[tuple[str, int], ...] = ()
    tags: tuple[str, ...] = ()
    assign_agent: str | None = None
    assign_team: str | None = None
    auto_reply: str | None = None
    webhooks: tuple[str, ...] = ()
    spam: bool | None = None
    ignore: bool | None = None


@dataclass(frozen=True)
class RuleSpec:
    id: str
    title: str
    owner: str
    enabled: bool
    matchers: tuple[MatcherSpec, ...]
    keywords: KeywordSpec | None
    actions: Actions
    cont: bool
    children: tuple[RuleSpec, ...]
    pos: Pos

    @property
    def catch_all(self) -> bool:
        """Matches everything and stops: later siblings can never be reached."""
        return self.enabled and not self.matchers and self.keywords is None and not self.cont

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class Period:
    weekdays: frozenset[int]
    hours: tuple[tuple[int, int], ...]  # minutes since midnight; empty = all day


@dataclass(frozen=True)
class IntervalSpec:
    name: str
    timezone: str
    periods: tuple[Period, ...]
    #: ``CN``: mainland public holidays are closed, 调休 make-up workdays keep
    #: Monday's hours (routing.calendar's data); ``none``: weekly hours only.
    holidays: str = "none"


@dataclass(frozen=True)
class Variant:
    subject: str | None
    text: str
    fallback_name: str = ""


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    default_language: str
    variants: dict[str, Variant] = field(default_factory=dict)


@dataclass(frozen=True)
class RuleSet:
    timezone: str
    lists: dict[str, tuple[str, ...]]
    intervals: dict[str, IntervalSpec]
    templates: dict[str, TemplateSpec]
    root: RuleSpec
    files: tuple[str, ...]
