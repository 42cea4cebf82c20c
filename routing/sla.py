"""SLA policies and their clocks: which policy, when due, when to warn.

Pure functions over plain data; the core stores what they return:

- :func:`select_policy`: the first enabled policy (in file order) whose
  ``match`` accepts the ticket's priority, contact tier and channel.
- :func:`evaluate`: for each target of the policy (first response, next
  response, resolution) the moment its clock started, its warning and due
  times in business time on the policy's calendar, whether it is met, paused
  or breached. :func:`sla_state` turns that into the model's ``SlaState``.
- :func:`due_events`: the ``warning``/``breach`` events the durable scheduler
  stores, each with a stable ``key`` so a fired event is never stored twice.
- :func:`escalation_actions`: what the policy says to do when one fires
  (raise priority, reassign to a lead, call a webhook) — data, not code;
  ``routing.assign.raised_priority`` applies a ``RaisePriority``.
- :func:`response_verdict`: does a timeline entry count as a response? Only
  a public reply written by an agent does; an internal note or an auto-reply
  does not.

The clock pauses while the ticket is ``solved`` or ``closed`` (nothing is
owed), and while it is ``pending`` when the policy says ``pause_on_pending``
(the customer owes the next move). Pauses come from the ticket's status
history (:func:`pause_intervals`); the due time is found by spending the
target's business minutes between the pauses (:func:`due_at`; a target's
warning and due time together, in one walk: :func:`warning_and_due_at`).
While a pause is still open and the target was not already overdue when it
began, the due time is unknown and no event is scheduled; the core
re-evaluates on resume.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

import msgspec

from routing.calendar import BusinessCalendar, parse_duration_minutes
from routing.model import Priority, SlaState

TargetName = Literal["first_response", "next_response", "resolution"]
TARGETS: tuple[TargetName, ...] = ("first_response", "next_response", "resolution")
EventKind = Literal["warning", "breach"]
#: Statuses in which no SLA clock runs, whatever the policy.
ALWAYS_PAUSED: frozenset[str] = frozenset({"solved", "closed"})


# ---------------------------------------------------------------- policy (admin YAML)


class SlaMatch(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Which tickets a policy is for; an empty list accepts anything."""

    priority: list[Priority] = []
    tier: list[str] = []
    channel: list[str] = []

    def mismatch(self, priority: str, tier: str | None, channel: str | None) -> str | None:
        """Why a ticket does not match (``None`` when it does)."""
        for field, value in (("priority", priority), ("tier", tier), ("channel", channel)):
            allowed = getattr(self, field)
            if allowed and value not in allowed:
                return f"{field} {value} not in {'/'.join(allowed)}"
        return None


class SlaTargets(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Targets in business minutes: ``15`` or ``"15m"``, ``"2h"``, ``"1h30m"``."""

    first_response: int | str | None = None
    next_response: int | str | None = None
    resolution: int | str | None = None

    def __post_init__(self) -> None:
        self.minutes()

    def minutes(self) -> dict[TargetName, int]:
        return dict(_target_minutes(self))


@functools.lru_cache(maxsize=1024)  # asked on every SLA evaluation, of a handful of policies
def _target_minutes(targets: SlaTargets) -> dict[TargetName, int]:
    return {t: parse_duration_minutes(v) for t in TARGETS if (v := getattr(targets, t)) is not None}


class RaisePriority(msgspec.Struct, tag="raise_priority", tag_field="action", forbid_unknown_fields=True, frozen=True):
    """Raise the ticket's priority to ``to``, or one step when omitted."""

    to: Priority | None = None


class ReassignToLead(
    msgspec.Struct, tag="reassign_to_lead", tag_field="action", forbid_unknown_fields=True, frozen=True
):
    """Reassign to a lead of ``team`` (the ticket's team when omitted)."""

    team: str | None = None


class NotifyWebhook(msgspec.Struct, tag="webhook", tag_field="action", forbid_unknown_fields=True, frozen=True):
    """Send the event to the webhook called ``name`` in the gateway's configuration."""

    name: str


EscalationAction = RaisePriority | ReassignToLead | NotifyWebhook


class Escalation(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``when`` a warning or breach of ``targets`` (all when empty) fires, do ``actions`` in order.

    (``when``, not ``on``: YAML 1.1 reads a bare ``on`` key as ``true``.)
    """

    when: EventKind
    actions: list[EscalationAction]
    targets: list[TargetName] = []


class SlaPolicy(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One SLA policy; policies are tried in order, the first match wins."""

    id: str
    targets: SlaTargets
    calendar: str = "24x7"
    title: str | None = None
    enabled: bool = True
    match: SlaMatch = SlaMatch()
    pause_on_pending: bool = True
    warn_at: float = 0.8
    escalations: list[Escalation] = []

    def __post_init__(self) -> None:
        if not 0 < self.warn_at < 1:
            raise ValueError(f"warn_at must be between 0 and 1 (a fraction of the target), got {self.warn_at}")
        if not self.targets.minutes():
            raise ValueError(f"policy {self.id!r} has no target")


class PolicyMatch(NamedTuple):
    policy: SlaPolicy
    reason: str


def select_policy(
    policies: Sequence[SlaPolicy], priority: str, tier: str | None, channel: str | None
) -> PolicyMatch | None:
    """The first enabled policy matching the ticket, with why."""
    for policy in policies:
        if policy.enabled and policy.match.mismatch(priority, tier, channel) is None:
            said = [
                f"{f} {v}"
                for f, v in (("priority", priority), ("tier", tier), ("channel", channel))
                if getattr(policy.match, f)
            ]
            return PolicyMatch(policy, f"policy {policy.id}: " + (", ".join(said) or "matches every ticket"))
    return None


# ---------------------------------------------------------------- the clock


class StatusChange(msgspec.Struct, frozen=True):
    at: datetime
    status: str


class Pause(NamedTuple):
    start: datetime
    end: datetime | None  # None: still paused


class SlaClock(msgspec.Struct):
    """What the SLA of one ticket depends on (the core keeps it with the ticket).

    ``awaiting_since`` is the first customer message not yet answered after
    the first response (it starts the next-response clock; the core clears
    it on a public agent reply). ``statuses`` is the status history, oldest
    first. ``fired`` holds the ``key`` of every event already fired.
    """

    ticket_id: str
    policy: str
    opened_at: datetime
    statuses: list[StatusChange] = []
    first_response_at: datetime | None = None
    awaiting_since: datetime | None = None
    fired: list[str] = []


def pause_intervals(statuses: Iterable[StatusChange], pausing: frozenset[str]) -> list[Pause]:
    """The intervals spent in a pausing status, from an ordered status history."""
    out: list[Pause] = []
    start: datetime | None = None
    for change in statuses:
        paused = change.status in pausing
        if paused and start is None:
            start = change.at
        elif not paused and start is not None:
            out.append(Pause(start, change.at))
            start = None
    if start is not None:
        out.append(Pause(start, None))
    return out


def due_at(calendar: BusinessCalendar, since: datetime, minutes: float, pauses: Sequence[Pause]) -> datetime | None:
    """When ``minutes`` of business time have run from ``since``, not counting pauses.

    ``None`` when an open pause stops the clock before the time runs out.
    """
    cursor, remaining = since, float(minutes)
    for pause in sorted(pauses):
        if pause.end is not None and pause.end <= cursor:
            continue
        if pause.start > cursor:
            candidate = calendar.add_business_minutes(cursor, remaining)
            if candidate <= pause.start:
                return candidate
            remaining -= calendar.business_minutes_between(cursor, pause.start)
        if pause.end is None:
            return None
        cursor = max(cursor, pause.end)
    return calendar.add_business_minutes(cursor, remaining)


def warning_and_due_at(calendar: BusinessCalendar, since: datetime, warn_minutes: float, minutes: float,
                       pauses: Sequence[Pause]) -> tuple[datetime | None, datetime | None]:
    """``(due_at(…, warn_minutes, …), due_at(…, minutes, …))`` in one walk.

    The two clocks start together and stop at the same pauses, so both are
    spent over each stretch between pauses by one calendar walk
    (:meth:`~routing.calendar.BusinessCalendar.add_business_minutes_pair`)
    until one runs out; the other goes on alone. The same instants as two
    :func:`due_at` calls, float for float.
    """
    cursor, rest_w, rest_d = since, float(warn_minutes), float(minutes)
    warning = due = None
    for pause in sorted(pauses):
        if pause.end is not None and pause.end <= cursor:
            continue
        if pause.start > cursor:
            if warning is None and due is None:
                cand_w, cand_d = calendar.add_business_minutes_pair(cursor, rest_w, rest_d)
            elif due is None:
                cand_w, cand_d = None, calendar.add_business_minutes(cursor, rest_d)
            else:
                cand_w, cand_d = calendar.add_business_minutes(cursor, rest_w), None
            between = None
            if cand_w is not None:
                if cand_w <= pause.start:
                    warning = cand_w
                else:
                    between = calendar.business_minutes_between(cursor, pause.start)
                    rest_w -= between
            if cand_d is not None:
                if cand_d <= pause.start:
                    due = cand_d
                else:
                    if between is None:
                        between = calendar.business_minutes_between(cursor, pause.start)
                    rest_d -= between
            if warning is not None and due is not None:
                return warning, due
        if pause.end is None:
            return warning, due
        cursor = max(cursor, pause.end)
    if warning is None and due is None:
        return calendar.add_business_minutes_pair(cursor, rest_w, rest_d)
    if due is None:
        return warning, calendar.add_business_minutes(cursor, rest_d)
    return calendar.add_business_minutes(cursor, rest_w), due


class TargetStatus(NamedTuple):
    """One target of one ticket at one moment."""

    target: TargetName
    since: datetime
    minutes: int
    warning: datetime | None
    due: datetime | None  # None while paused with time left
    met_at: datetime | None
    breached: bool
    paused: bool


class SlaEvent(NamedTuple):
    kind: EventKind
    target: TargetName
    at: datetime
    since: datetime

    @property
    def key(self) -> str:
        """Stable per clock run: the same warning of the same run keeps its key when pauses move it."""
        return f"{self.kind}:{self.target}:{self.since.isoformat()}"


def _running(clock: SlaClock, target: TargetName) -> tuple[datetime, datetime | None] | None:
    """(since, met_at) of a target's current run, or None when it does not run."""
    if target == "first_response":
        return clock.opened_at, clock.first_response_at
    if target == "next_response":
        if clock.first_response_at is None or clock.awaiting_since is None:
            return None
        return clock.awaiting_since, None
    last = clock.statuses[-1] if clock.statuses else None
    return clock.opened_at, last.at if last is not None and last.status in ALWAYS_PAUSED else None


def _pauses(clock: SlaClock, now: datetime, policy: SlaPolicy) -> list[Pause]:
    pausing = ALWAYS_PAUSED | ({"pending"} if policy.pause_on_pending else frozenset())
    return [p for p in pause_intervals(clock.statuses, pausing) if p.start <= now]


def evaluate(clock: SlaClock, now: datetime, policy: SlaPolicy, calendar: BusinessCalendar) -> list[TargetStatus]:
    """The status of every running target of ``policy`` for this ticket at ``now``."""
    pauses = _pauses(clock, now, policy)
    open_pause = bool(pauses) and pauses[-1].end is None
    out = []
    for target, minutes in policy.targets.minutes().items():
        run = _running(clock, target)
        if run is None:
            continue
        since, met_at = run
        warning, due = warning_and_due_at(calendar, since, minutes * policy.warn_at, minutes, pauses)
        breached = due is not None and (met_at or now) >= due
        out.append(TargetStatus(target, since, minutes, warning, due, met_at, breached, open_pause and met_at is None))
    return out


def steady_span(clock: SlaClock, statuses: Sequence[TargetStatus],
                now: datetime) -> tuple[datetime | None, datetime | None]:
    """``[since, until)`` around ``now`` over which :func:`evaluate` gives the same answer.

    ``statuses`` is ``evaluate(clock, now, …)``; for every ``t`` in the span,
    ``evaluate(clock, t, …)`` (with the same policy and calendar) equals it,
    and so do :func:`sla_state` and :func:`due_events` at ``t``. ``evaluate``
    reads ``now`` only through thresholds ``x`` it compares with ``now >= x``:
    the status changes (a pause counts once it has begun) and the due times
    of unmet targets (breached once due). The span runs from the latest
    threshold not after ``now`` to the first one after it (``None``: no
    bound), so a caller may keep the answer for as long as the clock's facts
    stay the same and the time stays inside.
    """
    since: datetime | None = None
    until: datetime | None = None
    thresholds = [change.at for change in clock.statuses]
    thresholds += [st.due for st in statuses if st.met_at is None and st.due is not None]
    for at in thresholds:
        if at <= now:
            if since is None or at > since:
                since = at
        elif until is None or at < until:
            until = at
    return since, until


def due_events(clock: SlaClock, now: datetime, policy: SlaPolicy, calendar: BusinessCalendar,
               statuses: list[TargetStatus] | None = None) -> list[SlaEvent]:
    """The warning and breach events still to fire, earliest first.

    Events of met targets are dropped, and so are those already in
    ``clock.fired``. An event whose ``at`` is not after ``now`` is returned
    too: the scheduler fires it at once (e.g. the policy changed to a
    shorter one). A paused target with time left has no event until resumed.
    ``statuses``: :func:`evaluate`'s answer when the caller has it already.
    """
    events = []
    for st in statuses if statuses is not None else evaluate(clock, now, policy, calendar):
        if st.met_at is not None:
            continue
        for kind, at in (("warning", st.warning), ("breach", st.due)):
            if at is not None:
                event = SlaEvent(kind, st.target, at, st.since)
                if not clock.fired or event.key not in clock.fired:
                    events.append(event)
    return sorted(events, key=lambda e: (e.at, e.kind != "warning", TARGETS.index(e.target)))


def sla_state(clock: SlaClock, now: datetime, policy: SlaPolicy, calendar: BusinessCalendar,
              statuses: list[TargetStatus] | None = None) -> SlaState:
    """The model's ``SlaState`` of the ticket: due times of unmet targets, pause, breaches
    (``statuses``: :func:`evaluate`'s answer when the caller has it already)."""
    if statuses is None:
        statuses = evaluate(clock, now, policy, calendar)
    due = {st.target: st.due for st in statuses if st.met_at is None}
    pauses = _pauses(clock, now, policy)
    paused = pauses[-1].start if pauses and pauses[-1].end is None else None
    return SlaState(
        policy=policy.id,
        first_response_due=due.get("first_response"),
        next_response_due=due.get("next_response"),
        resolution_due=due.get("resolution"),
        paused_at=paused if any(st.paused for st in statuses) else None,
        breached=[st.target for st in statuses if st.breached],
    )


def escalation_actions(policy: SlaPolicy, event: SlaEvent) -> list[EscalationAction]:
    """The actions the policy takes when ``event`` fires, in the order written."""
    return [
        action
        for esc in policy.escalations
        if esc.when == event.kind and (not esc.targets or event.target in esc.targets)
        for action in esc.actions
    ]


# ---------------------------------------------------------------- what counts as a response


class EntryLike(Protocol):
    """A timeline entry as :func:`response_verdict` reads it (``routing.model.TimelineEntry``)."""

    kind: str
    data: dict[str, Any]


class ResponseVerdict(NamedTuple):
    counts: bool
    reason: str


def response_verdict(entry: EntryLike) -> ResponseVerdict:
    """Whether an entry is a public agent reply, which meets a response target.

    The core writes ``message_out`` entries with ``data.author`` (the agent's
    id; absent for the system), ``data.auto`` (true for auto-replies) and
    ``data.public`` (false for a message only agents see).
    """
    if entry.kind == "note":
        return ResponseVerdict(False, "internal note")
    if entry.kind != "message_out":
        return ResponseVerdict(False, f"not an outgoing message ({entry.kind})")
    if entry.data.get("auto"):
        return ResponseVerdict(False, "auto-reply")
    if entry.data.get("public") is False:
        return ResponseVerdict(False, "not public")
    author = entry.data.get("author")
    if not author:
        return ResponseVerdict(False, "sent by the system, not an agent")
    return ResponseVerdict(True, f"public reply by agent {author}")


class _Outgoing(NamedTuple):
    kind: str
    data: dict[str, Any]


def reply_counts_at(at: datetime, data: dict[str, Any]) -> datetime | None:
    """When an outgoing message (``message_out`` written at ``at``, its
    ``data``) met a response target: None if it is no public agent reply
    (:func:`response_verdict`) or its send has not succeeded (a
    ``data.delivery`` whose status is not ``sent``); else the delivery's
    time when it has one, ``at`` otherwise."""
    if not response_verdict(_Outgoing("message_out", data)).counts:
        return None
    delivery = data.get("delivery")
    if isinstance(delivery, dict):
        if delivery.get("status") != "sent":
            return None
        if delivery.get("at"):
            return datetime.fromisoformat(delivery["at"])
    return at


def responses_in(first: datetime | None,
                 events: Iterable[tuple[datetime, bool]]) -> tuple[datetime | None, datetime | None]:
    """(first response, first customer message unanswered since the last
    response) from a ticket's messages as ``(time, is a counting reply)``
    in the timeline's order, taken by time (ties keep that order); ``first``
    is a first response known already (``tickets.first_response_at``).
    Before the first response only the first-response clock runs: no
    unanswered message then."""
    last_reply = awaiting = None
    for at, reply in sorted(events, key=lambda e: e[0]):
        if not reply:
            awaiting = awaiting or at
        else:
            first = first or at
            last_reply, awaiting = at, None
    if first is None or (last_reply is None and awaiting is not None and awaiting <= first):
        awaiting = None
    return first, awaiting
