"""The values the rules engine takes and gives: its public vocabulary.

:class:`RuleInput` is what the pipeline knows about a message when it routes
it; :class:`RuleOutcome` is the decision plus its reasons (the route path and,
per matched rule, the matchers that matched), which the core records as one
``rule`` timeline entry per matched rule. :class:`RuleError` is one checker
finding, printed ``file:line:column: message``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from routing.model import Inbound


class RuleInput(msgspec.Struct, frozen=True):
    """A message as the routing tree sees it: the Inbound plus what the
    pipeline learnt before routing (contact, ticket) and the clock."""

    inbound: Inbound
    now: datetime
    contact_name: str | None = None
    contact_tier: str | None = None
    contact_tags: tuple[str, ...] = ()
    #: the contact's ``language`` attribute, used when the Inbound has none
    contact_language: str | None = None
    is_new_ticket: bool = True
    ticket_number: int | None = None
    #: status of the ticket a follow-up belongs to (None for a new ticket)
    ticket_status: str | None = None


class MatchedRule(msgspec.Struct, frozen=True):
    """One rule on the route path and why it matched (human-readable)."""

    id: str
    title: str
    owner: str
    matched: tuple[str, ...]
    depth: int = 0  # 0 for the root


class AutoReply(msgspec.Struct, frozen=True):
    template: str
    language: str
    subject: str | None
    text: str


class RuleOutcome(msgspec.Struct, frozen=True):
    """The routing decision. ``path`` lists the matched rule ids depth-first
    (the root first); ``matched`` gives each of them with its reasons."""

    path: tuple[str, ...]
    matched: tuple[MatchedRule, ...]
    priority: str = "normal"
    team: str | None = None
    skills: dict[str, int] = msgspec.field(default_factory=dict)
    tags: tuple[str, ...] = ()
    assignee: str | None = None
    assign_team: str | None = None
    auto_reply: AutoReply | None = None
    #: why a rule's auto-reply was not sent (the inbound is itself automatic…)
    auto_reply_suppressed: str | None = None
    webhooks: tuple[str, ...] = ()
    spam: bool = False
    ignore: bool = False

    @property
    def rule(self) -> str:
        """The deciding rule: the last one on the path."""
        return self.path[-1]

    def to_dict(self) -> dict:
        """Plain JSON-shaped data (lists, not tuples)."""
        return msgspec.json.decode(msgspec.json.encode(self))


@dataclass(frozen=True)
class KnownNames:
    """Names the rules may refer to, known outside the rules (agents, teams,
    webhooks). A kind left as None is not checked."""

    teams: frozenset[str] | None = None
    agents: frozenset[str] | None = None
    webhooks: frozenset[str] | None = None
    #: skills some agent of the directory has (a rule asking for another can never be met)
    skills: frozenset[str] | None = None


@dataclass(frozen=True, order=True)
class RuleError:
    """One finding of the checker, with the position of the YAML node at fault."""

    file: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


@dataclass
class RulesInvalid(Exception):
    """The rule set has errors; ``errors`` lists them all, in file order."""

    errors: list[RuleError] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(map(str, self.errors))
