"""The live routing tree, hot-reloaded.

:class:`RulesRuntime` holds the compiled tree the pipeline routes with. It
reloads when a rule file changes (the folder's ``*.yaml`` mtimes and sizes are
polled every second: no file-watching dependency, works on every file system
and in containers with mounted ConfigMaps) and on SIGHUP. A reload compiles
the whole folder off the event loop and swaps the tree in one assignment, so
a message is routed by the old tree or the new one, never a mix. On any
error the last good tree stays live and the errors (``file:line:col:
message``) are reported in :meth:`status` and counted in
``omnigate_rules_reload_errors_total``.

Wiring (the app factory)::

    rules = RulesRuntime(config.rules_dir, known=…, calendars=directory.calendars)
    rules.reload()                                   # at start-up
    app[keys.READINESS]["rules"] = rules.readiness
    metrics.registry.register(rules.collector())
    task = asyncio.create_task(rules.run()); rules.install_sighup()
    …
    outcome = rules.evaluate(rule_input)             # in the pipeline
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from routing.rules import AutoReply, Calendar, CompiledTree, KnownNames, RuleInput, RuleOutcome, check, evaluate
from routing.rules.evaluator import render as render_template
from routing.rules.loader import yaml_files

log = structlog.get_logger(__name__)

POLL_SECONDS = 1.0
#: at most this many errors are kept for /readyz (the checker lists them all)
MAX_REPORTED_ERRORS = 20

Fingerprint = tuple[tuple[str, int, int], ...]


class RulesRuntime:
    def __init__(
        self,
        rules_dir: str | Path,
        *,
        known: KnownNames | None = None,
        calendars: Mapping[str, Calendar] | None = None,
        poll_seconds: float = POLL_SECONDS,
        clock: Callable[[], float] = time.time,
    ):
        self.rules_dir = Path(rules_dir)
        self.known = known
        self.calendars = dict(calendars or {})
        self.poll_seconds = poll_seconds
        self._clock = clock
        self._tree: CompiledTree | None = None
        self._seen: Fingerprint | None = None
        self._lock = threading.Lock()  # one reload at a time (signal + poll)
        self._wake = asyncio.Event()
        self.reloads_total = 0
        self.reload_errors_total = 0
        self.last_success: float | None = None
        self.last_attempt: float | None = None
        self.errors: list[str] = []

    # ------------------------------------------------------------ reading

    @property
    def tree(self) -> CompiledTree | None:
        """The live tree (None until a first load succeeds)."""
        return self._tree

    def evaluate(self, rule_input: RuleInput) -> RuleOutcome | None:
        tree = self._tree  # one read: the whole evaluation uses one tree
        return None if tree is None else evaluate(tree, rule_input, self.calendars)

    def render(self, template: str, rule_input: RuleInput) -> AutoReply | None:
        """Render an auto-reply template of the live tree (after the commit,
        when the ticket number is known); None if the template is gone."""
        tree = self._tree
        spec = None if tree is None else tree.templates.get(template)
        return None if spec is None else render_template(spec, rule_input)

    # ------------------------------------------------------------ reloading

    def reload(self, reason: str = "start") -> bool:
        """Load and compile the folder now; swap the tree in when it is valid.
        Returns whether the live tree is the folder's current content."""
        with self._lock:
            self._seen = self._fingerprint()
            self.last_attempt = self._clock()
            try:
                tree, errors = check(self.rules_dir, known=self.known, calendars=self.calendars)
            except Exception as exc:  # a bug or an I/O failure must not take the live tree down
                tree, errors = None, [f"{self.rules_dir}: {type(exc).__name__}: {exc}"]
            if tree is None:
                self.reload_errors_total += 1
                self.errors = [str(e) for e in errors[:MAX_REPORTED_ERRORS]]
                log.error("rules_reload_failed", reason=reason, errors=len(errors), first=self.errors[0] if self.errors else None,
                          keeping=self._tree is not None)  # fmt: skip
                return False
            self._tree = tree
            self.reloads_total += 1
            self.last_success = self.last_attempt
            self.errors = []
            log.info("rules_reloaded", reason=reason, rules=tree.rule_count, files=len(tree.files), keywords=len(tree.keywords))
            return True

    def poll(self) -> bool | None:
        """Reload if a rule file was added, removed or changed since the last
        attempt; None when nothing changed."""
        if self._fingerprint() == self._seen:
            return None
        return self.reload("change")

    def request_reload(self) -> None:
        """The SIGHUP handler: reload at the next turn of :meth:`run`."""
        self._wake.set()

    def install_sighup(self, loop: asyncio.AbstractEventLoop | None = None,
                       handler: Callable[[], None] | None = None) -> None:
        """SIGHUP reloads (``handler``: the app's, which also tells the other instances)."""
        (loop or asyncio.get_running_loop()).add_signal_handler(signal.SIGHUP, handler or self.request_reload)

    def remove_sighup(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        (loop or asyncio.get_running_loop()).remove_signal_handler(signal.SIGHUP)

    async def run(self) -> None:
        """Poll every ``poll_seconds`` and reload on change or request; runs
        until cancelled. The work happens in a thread, off the event loop."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            except TimeoutError:
                pass
            if self._wake.is_set():
                self._wake.clear()
                await asyncio.to_thread(self.reload, "signal")
            else:
                await asyncio.to_thread(self.poll)

    def _fingerprint(self) -> Fingerprint:
        try:
            files = yaml_files(self.rules_dir)
        except OSError:
            return ()
        out = []
        for p in files:
            try:
                st = p.stat()
            except OSError:  # removed between listing and stat: the next poll sees it
                continue
            out.append((p.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    # ------------------------------------------------------------ reporting

    def status(self) -> dict[str, Any]:
        tree = self._tree
        return {
            "dir": str(self.rules_dir),
            "loaded": tree is not None,
            "rules": tree.rule_count if tree else 0,
            "files": len(tree.files) if tree else 0,
            "last_success": self.last_success,
            "last_attempt": self.last_attempt,
            "reloads": self.reloads_total,
            "reload_errors": self.reload_errors_total,
            "errors": list(self.errors),
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """For /readyz: ready while a tree is live (even if the latest edit
        was refused — that shows in ``errors``)."""
        return self._tree is not None, self.status()

    def collector(self) -> _RulesCollector:
        return _RulesCollector(self)


class _RulesCollector:
    """Prometheus collector reading the runtime's counters at scrape time."""

    def __init__(self, runtime: RulesRuntime):
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self.runtime
        yield CounterMetricFamily("omnigate_rules_reloads", "Successful rule reloads", value=rt.reloads_total)
        yield CounterMetricFamily("omnigate_rules_reload_errors", "Rule reloads refused (the last good tree stayed live)",
                                  value=rt.reload_errors_total)  # fmt: skip
        yield GaugeMetricFamily("omnigate_rules_last_reload_success_timestamp_seconds", "When the live tree was loaded",
                                value=rt.last_success or 0)  # fmt: skip
        yield GaugeMetricFamily("omnigate_rules_loaded", "Rules in the live tree", value=rt.tree.rule_count if rt.tree else 0)

    def describe(self) -> Iterator[Metric]:
        return self.collect()
