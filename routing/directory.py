"""The directory: agents, teams, SLA policies and calendars, from admin YAML.

Parsed strictly (msgspec ``forbid_unknown_fields``: a typo fails loudly) and
cross-checked (an agent's team, a policy's calendar, an overflow target must
exist), with errors that say where: ``directory.yaml:42: agents[3].skills:
Expected `int`, got `str```. Pure: the caller reads the file and passes the
text (``routing/`` does no I/O), except the ``holidays_ical`` files a
calendar names, read through :func:`parse_directory`'s ``read`` (default:
beside the directory file).

The YAML shape (``deploy/directory.example.yaml`` is a full example)::

    channel_classes:            # optional: channel → capacity class
      sms: chat                 #   (defaults: chat / email / call, see routing.assign)
    calendars:                  # name → routing.calendar.CalendarConfig
      cn-office:
        timezone: Asia/Shanghai         # default
        hours:                          # mon…sun, weekdays, weekend, daily
          weekdays: [09:00-12:00, 13:30-18:00]
        holidays: CN                    # CN (default) or none
        holidays_ical: cn-2027.ics      # published holiday calendar (path beside this file):
                                        #   VEVENTs are closed days, 补班/workday events open days
        closed: {2026-12-31: year-end stocktake}
        open: {2027-02-06: 调休 (notice of 2026-11-xx)}
        arranged_years: [2027]          # years entered by hand in closed/open
      always: {always_open: true}       # 24×7; "24x7" exists without being defined
    teams:                      # name → TeamConfig
      billing:
        title: Billing
        calendar: cn-office
        sticky: true                    # prefer the contact's last agent
        overflow:                       # routing.assign.OverflowStep, in order
          - {after: 10m, widen_to: [support]}
          - {after: 30m, lower_skills_by: 1, raise_priority: true}
    agents:                     # list of AgentConfig
      - id: a-lilei
        name: 李雷
        roles: [agent, lead]            # agent, lead, admin
        teams: [billing]
        skills: {billing: 3, english: 2}
        capacity: {chat: 5, email: 20, call: 1}
    sla_policies:               # list of routing.sla.SlaPolicy; first match wins
      - id: urgent
        match: {priority: [urgent]}     # priority, tier, channel lists
        calendar: 24x7
        targets: {first_response: 15m, next_response: 30m, resolution: 4h}
        warn_at: 0.8
        pause_on_pending: true
        escalations:
          - when: breach
            actions: [{action: reassign_to_lead}, {action: raise_priority, to: urgent}]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from routing.assign import DEFAULT_CHANNEL_CLASSES, OverflowStep
from routing.calendar import BusinessCalendar, CalendarConfig, CalendarError, ical_days
from routing.model import Agent, AgentRole, Presence
from routing.sla import ReassignToLead, SlaPolicy

T = TypeVar("T")
BUILTIN_24X7 = "24x7"


class DirectoryError(ValueError):
    """A directory file is wrong: where (source, line, path) and what."""

    def __init__(self, source: str, line: int | None, path: str, message: str) -> None:
        self.source, self.line, self.path, self.message = source, line, path, message
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {path}: {message}" if path else f"{where}: {message}")


# ---------------------------------------------------------------- configuration shapes


class TeamConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    title: str | None = None
    calendar: str | None = None
    sticky: bool = True
    overflow: list[OverflowStep] = []


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    id: str
    name: str
    login: str | None = None
    roles: list[AgentRole] = msgspec.field(default_factory=lambda: ["agent"])
    teams: list[str] = []
    skills: dict[str, int] = {}
    capacity: dict[str, int] = {}
    presence: Presence = "offline"  # until the agent signs in to the console

    def __post_init__(self) -> None:
        for skill, level in self.skills.items():
            if level < 1:
                raise ValueError(f"skill {skill} level must be 1 or more, got {level}")
        for cls, cap in self.capacity.items():
            if cap < 0:
                raise ValueError(f"capacity {cls} must not be negative, got {cap}")

    def to_model(self) -> Agent:
        return msgspec.convert(msgspec.to_builtins(self), Agent)


class _Document(msgspec.Struct, forbid_unknown_fields=True):
    """The top level; each section is converted on its own so errors keep their path."""

    channel_classes: dict[str, str] = {}
    calendars: dict[str, Any] = {}
    teams: dict[str, Any] = {}
    agents: list[Any] = []
    sla_policies: list[Any] = []


class Directory(msgspec.Struct, frozen=True):
    """A checked directory, with its calendars built."""

    channel_classes: dict[str, str]
    calendars: dict[str, BusinessCalendar]
    teams: dict[str, TeamConfig]
    agents: list[AgentConfig]
    sla_policies: list[SlaPolicy]

    def agent_models(self) -> list[Agent]:
        return [a.to_model() for a in self.agents]

    def policy(self, policy_id: str) -> SlaPolicy:
        return next(p for p in self.sla_policies if p.id == policy_id)


# ---------------------------------------------------------------- errors with lines


class _Locator:
    """Maps a msgspec path (``$.agents[3].skills``) to a line of the YAML text."""

    _TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")

    def __init__(self, root: yaml.Node | None) -> None:
        self.root = root

    def line(self, path: str, unknown_key: str | None = None) -> int | None:
        """The line of the deepest node on ``path``: a mapping entry's key line, a list item's line."""
        node, at = self.root, self.root
        for m in self._TOKEN.finditer(path.removeprefix("$")):
            step = self._child(node, m[1], m[2])
            if step is None:
                break
            at, node = step
        if unknown_key is not None and isinstance(node, yaml.MappingNode):
            at = next((k for k, _ in node.value if k.value == unknown_key), at)
        return at.start_mark.line + 1 if at is not None else None

    @staticmethod
    def _child(node: yaml.Node | None, key: str | None, index: str | None) -> tuple[yaml.Node, yaml.Node] | None:
        """(where the child starts, the child's value node)."""
        if isinstance(node, yaml.MappingNode) and key is not None:
            return next(((k, v) for k, v in node.value if k.value == key), None)
        if isinstance(node, yaml.SequenceNode) and index is not None and index.isdigit():
            i = int(index)
            return (node.value[i], node.value[i]) if i < len(node.value) else None
        return None


class _Checker:
    """Converts sections and collects cross-reference errors with their lines."""

    def __init__(self, source: str, locator: _Locator) -> None:
        self.source, self.locator = source, locator

    def fail(self, path: str, message: str, unknown_key: str | None = None) -> DirectoryError:
        shown = path.removeprefix("$").removeprefix(".")
        return DirectoryError(self.source, self.locator.line(path, unknown_key), shown, message)

    def convert(self, data: Any, type_: type[T], path: str) -> T:
        try:
            return msgspec.convert(data, type_)
        except msgspec.ValidationError as exc:
            text = str(exc)
            message, _, _ = text.partition(" - at ")
            inner = re.search(r"`(\$[^`]*)`", text)
            full = path + (inner[1][1:] if inner else "")
            unknown = re.search(r"unknown field `([^`]*)`", message)
            raise self.fail(full.replace("[...]", ""), message, unknown[1] if unknown else None) from None


def _compose(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    try:
        return yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise DirectoryError(source, mark.line + 1 if mark else None, "", f"not valid YAML: {exc}") from None


# ---------------------------------------------------------------- parsing


def _read_beside(source: str) -> Callable[[str], bytes]:
    """The default reader of ``holidays_ical`` files: relative to the directory file."""

    def read(path: str) -> bytes:
        p = Path(path)
        return (p if p.is_absolute() else Path(source).parent / p).read_bytes()

    return read


def parse_directory(text: str, source: str = "<directory>", read: Callable[[str], bytes] | None = None) -> Directory:
    """Parse and check a directory YAML document; raises :class:`DirectoryError`.

    ``read`` fetches the ``holidays_ical`` files a calendar names (default:
    read from disk relative to ``source``, the one I/O of this module)."""
    data, root = _compose(text, source)
    check = _Checker(source, _Locator(root))
    doc = check.convert({} if data is None else data, _Document, "$")
    calendars = {BUILTIN_24X7: BusinessCalendar.twenty_four_seven(BUILTIN_24X7)}
    read = read or _read_beside(source)
    for name, raw in doc.calendars.items():
        cfg = check.convert(raw, CalendarConfig, f"$.calendars.{name}")
        ical = None
        if cfg.holidays_ical is not None:
            where = f"$.calendars.{name}.holidays_ical"
            try:
                ical = ical_days(read(cfg.holidays_ical), cfg.holidays_ical)
            except OSError as exc:
                raise check.fail(where, f"cannot read {cfg.holidays_ical}: {exc.strerror or exc}") from None
            except CalendarError as exc:
                raise check.fail(where, str(exc)) from None
        calendars[name] = BusinessCalendar.from_config(name, cfg, ical)
    teams = {name: check.convert(raw, TeamConfig, f"$.teams.{name}") for name, raw in doc.teams.items()}
    agents = check.convert(doc.agents, list[AgentConfig], "$.agents")
    policies = check.convert(doc.sla_policies, list[SlaPolicy], "$.sla_policies")
    classes = {**DEFAULT_CHANNEL_CLASSES, **doc.channel_classes}
    directory = Directory(classes, calendars, teams, agents, policies)
    problem = next(_cross_errors(directory), None)
    if problem is not None:
        raise check.fail(*problem)
    return directory


def agent_errors(d: Directory, agent: AgentConfig) -> list[tuple[str, str]]:
    """(field, message) for what ``agent`` names that ``d`` does not define
    (an agent created or changed through the API is checked like one in the YAML)."""
    out = []
    class_names = set(d.channel_classes.values())
    for j, team in enumerate(agent.teams):
        if team not in d.teams:
            out.append((f"$.teams[{j}]", _unknown("team", team, d.teams)))
    for cls in agent.capacity:
        if cls not in class_names:
            out.append(("$.capacity", _unknown("capacity class", cls, class_names)))
    return out


def _unknown(kind: str, name: str, known: Any) -> str:
    return f"undefined {kind} {name!r} (defined: {', '.join(sorted(known)) or 'none'})"


def _cross_errors(d: Directory) -> Iterator[tuple[str, str]]:
    """(path, message) for every reference to something undefined or defined twice."""
    yield from _duplicates("$.agents", [a.id for a in d.agents], "agent id")
    yield from _duplicates("$.sla_policies", [p.id for p in d.sla_policies], "policy id")
    class_names = set(d.channel_classes.values())
    for i, agent in enumerate(d.agents):
        for j, team in enumerate(agent.teams):
            if team not in d.teams:
                yield f"$.agents[{i}].teams[{j}]", _unknown("team", team, d.teams)
        for cls in agent.capacity:
            if cls not in class_names:
                yield (
                    f"$.agents[{i}].capacity",
                    _unknown("capacity class", cls, class_names) + "; add a channel_classes entry for a new one",
                )
    for name, team in d.teams.items():
        if team.calendar is not None and team.calendar not in d.calendars:
            yield f"$.teams.{name}.calendar", _unknown("calendar", team.calendar, d.calendars)
        for i, step in enumerate(team.overflow):
            for other in step.widen_to:
                if other not in d.teams:
                    yield f"$.teams.{name}.overflow[{i}].widen_to", _unknown("team", other, d.teams)
    for i, policy in enumerate(d.sla_policies):
        if policy.calendar not in d.calendars:
            yield f"$.sla_policies[{i}].calendar", _unknown("calendar", policy.calendar, d.calendars)
        for j, esc in enumerate(policy.escalations):
            for action in esc.actions:
                if isinstance(action, ReassignToLead) and action.team is not None and action.team not in d.teams:
                    yield f"$.sla_policies[{i}].escalations[{j}]", _unknown("team", action.team, d.teams)


def _duplicates(path: str, ids: list[str], what: str) -> Iterator[tuple[str, str]]:
    seen: dict[str, int] = {}
    for i, ident in enumerate(ids):
        if ident in seen:
            yield f"{path}[{i}].id", f"duplicate {what} {ident!r} (first at {path.removeprefix('$.')}[{seen[ident]}])"
        seen.setdefault(ident, i)


def calendar_from_text(text: str, name: str, source: str = "<directory>") -> BusinessCalendar:
    """One calendar of a directory document (what ``omnigate calendar --config`` needs)."""
    calendars = parse_directory(text, source).calendars
    if name not in calendars:
        raise DirectoryError(source, None, "calendars", _unknown("calendar", name, calendars))
    return calendars[name]
