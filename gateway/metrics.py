"""Prometheus metrics (names prefixed ``omnigate_``), one registry per app.

A registry per application (not the global default) keeps tests and several
apps in one process independent. Gauges that reflect the store (journal
backlog) are read at scrape time through a collector callback.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

disable_created_metrics()  # *_created series double the output and nobody graphs them

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        #: Ingest counts, kept as plain ints (the ingest path is the hot path:
        #: a prometheus Counter takes a lock per increment) and exported by
        #: :meth:`ingest_families` at scrape time. channel → count.
        self.received: dict[str, int] = {}
        self.redelivered: dict[str, int] = {}
        self.rejected = Counter("omnigate_rejected", "Requests refused before storing (auth, size, format)",
                                ["channel", "reason"], registry=r)
        self.deduped = Counter("omnigate_deduped", "Messages dropped as exact redeliveries", ["channel"], registry=r)
        self.near_duplicates = Counter("omnigate_near_duplicates", "Messages linked as near duplicates",
                                       ["channel"], registry=r)
        self.processed = Counter("omnigate_processed", "Messages committed by the pipeline", ["channel"], registry=r)
        self.failed = Counter("omnigate_failed", "Journal entries that failed processing", ["channel"], registry=r)
        self.replies = Counter("omnigate_replies", "Reply send attempts settled, by outcome (sent, retrying, failed)",
                               ["channel", "status"], registry=r)
        self.conflicts = Counter("omnigate_commit_conflicts", "Commits retried on a fresh snapshot", registry=r)
        self.pipeline_latency = Histogram("omnigate_pipeline_latency_seconds",
                                          "From journal append to committed ticket", ["channel"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.connector_up = Gauge("omnigate_connector_up", "1 when a connector's loop runs", ["channel", "task"],
                                  registry=r)
        self._backlog: dict[str, int] = {}
        self._assignment: dict = {}
        self._children: dict[tuple[Any, str], Any] = {}

    def by_channel(self, metric: Any, channel: str) -> Any:
        """``metric.labels(channel)``, looked up once: ``labels()`` takes a
        lock and checks its labels on every call (twice per pipeline
        message), a dict lookup does not. The child is still created on
        first use, so a series appears once it has something to count."""
        child = self._children.get((metric, channel))
        if child is None:
            child = self._children[(metric, channel)] = metric.labels(channel)
        return child

    def set_journal_counts(self, counts: dict[str, int]) -> None:
        """Latest journal counts by status (refreshed by the worker)."""
        self._backlog = dict(counts)

    def register_collector(self, collect: Callable[[], list]) -> None:
        class _C:
            def collect(self_inner):  # noqa: N805 - prometheus collector protocol
                return collect()

        self.registry.register(_C())

    def ingest_families(self) -> list:
        received = CounterMetricFamily("omnigate_received", "Payloads appended to the journal", labels=["channel"])
        for channel, n in sorted(self.received.items()):
            received.add_metric([channel], n)
        again = CounterMetricFamily("omnigate_redelivered", "Payloads whose idempotency key was already journaled",
                                    labels=["channel"])
        for channel, n in sorted(self.redelivered.items()):
            again.add_metric([channel], n)
        return [received, again]

    def journal_families(self) -> list:
        g = GaugeMetricFamily("omnigate_journal_entries", "Journal entries by status", labels=["status"])
        for status, n in sorted(self._backlog.items()):
            g.add_metric([status], n)
        b = GaugeMetricFamily("omnigate_journal_backlog", "Journal entries waiting for the pipeline")
        b.add_metric([], self._backlog.get("pending", 0))
        return [g, b]

    def set_assignment_stats(self, stats: dict) -> None:
        """Latest assignment/SLA figures from the store (``gateway.assignment``; shared by all instances)."""
        self._assignment = dict(stats)

    def assignment_families(self) -> list:
        s = self._assignment
        if not s or s.get("unavailable"):  # a backend that does not keep these figures yet (Redis)
            return []
        out: list = []
        for name, key, what in (("omnigate_first_response_seconds", "first_response", "ticket creation to first "
                                 "public agent reply"), ("omnigate_resolution_seconds", "resolution",
                                                         "ticket creation to solved")):
            fam = SummaryMetricFamily(name, f"Time from {what} (wall-clock), over solved tickets in the store")
            fam.add_metric([], count_value=s[key]["count"], sum_value=s[key]["sum_s"])
            out.append(fam)
        for name, key in (("omnigate_sla_breaches", "sla_breaches"), ("omnigate_sla_warnings", "sla_warnings")):
            fam = CounterMetricFamily(name, f"SLA {key.split('_')[1]} fired, by policy and target",
                                      labels=["policy", "target"])
            for policy, targets in sorted(s[key].items()):
                for target, n in sorted(targets.items()):
                    fam.add_metric([policy, target], n)
            out.append(fam)
        queued = GaugeMetricFamily("omnigate_assign_queued", "Tickets waiting for an agent, by team", labels=["team"])
        for team, n in sorted(s["queued"].items()):
            queued.add_metric([team], n)
        agents = GaugeMetricFamily("omnigate_agents", "Agents by presence", labels=["presence"])
        for presence, n in sorted(s["agents"].items()):
            agents.add_metric([presence], n)
        held = GaugeMetricFamily("omnigate_assigned_tickets", "Open tickets holding an agent's capacity")
        held.add_metric([], s["assigned"])
        fallback = GaugeMetricFamily("omnigate_calendar_fallback_year", "1 for each year a calendar answered with "
                                     "weekly hours alone (no holiday data)", labels=["calendar", "year"])
        for calendar, years in sorted(s.get("calendar_fallback_years", {}).items()):
            for year in years:
                fallback.add_metric([calendar, str(year)], 1)
        return [*out, queued, agents, held, fallback]

    def render(self) -> bytes:
        return generate_latest(self.registry)


AsyncCounts = Callable[[], Awaitable[dict[str, int]]]
