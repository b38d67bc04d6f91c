"""Alert rules over the database's stats: evaluated by every loop, announced by one (issue 9).

Every `monitoring.evaluate_every_seconds` a loop reads the cluster's figures (store.stats() over
`monitoring.window_seconds`, the critical errors any loop recorded, the seconds since progress)
and checks each rule. A rule that has held for its `for_seconds` fires; one that stops holding
resolves. The change is recorded in the rule's alert document, conditional on the state this loop
read (io/alert_state.py): of several loops that see the same change, the one whose update wins logs the
WARNING line and sends the webhook, so the cluster pages once. Every loop's
`ctxbatch_alerts_firing` gauge shows the recorded state, the same in all of them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pymongo.errors import PyMongoError

from ctxbatch.config import AlertRule, MonitoringSettings
from ctxbatch.io import ContextStore, Status, utcnow
from ctxbatch.io.alert_state import FIRING, RESOLVED, AlertBook, AlertState
from ctxbatch.monitoring.webhook import WebhookSender, alertmanager_payload

log = logging.getLogger("ctxbatch.monitoring")


@dataclass(frozen=True)
class Change:
    """A transition this loop recorded (so announces)."""

    rule: AlertRule
    status: str  # FIRING or RESOLVED
    value: float | None
    state: AlertState


class Readings:
    """The figures of one evaluation, each read from the database once and only if a rule asks.

    The default rules need counts and two index lookups; only `latency_p95_seconds` costs the
    whole stats() (its percentiles sample the window's documents).
    """

    def __init__(self, store: ContextStore, book: AlertBook, window_seconds: float) -> None:
        self.store, self.book, self.window = store, book, window_seconds
        self._read: dict[str, Any] = {}

    def _once(self, name: str, read: Callable[[], Any]) -> Any:
        if name not in self._read:
            self._read[name] = read()
        return self._read[name]

    def value(self, rule: AlertRule) -> float | None:
        """The rule's metric now; None when it has no value (nothing finished, nothing pending)."""
        metric = rule.metric
        if metric in ("success_rate", "throughput_per_second"):
            counts = self._once("counts", lambda: self.store.finished_counts(self.window))
            finished = counts["completed"] + counts["failed"]
            if metric == "throughput_per_second":
                return finished / self.window
            return counts["completed"] / finished if finished else None
        if metric == "queue_length":
            lengths = self._once("queue", lambda: self.store.queue_length(Status.PENDING))
            return float(lengths[rule.level] if rule.level else sum(lengths.values()))
        if metric == "oldest_pending_seconds":
            oldest = self._once(f"oldest {rule.level}", lambda: self.store.oldest_pending(level=rule.level))
            return None if oldest is None else max((utcnow() - oldest).total_seconds(), 0.0)
        if metric == "latency_p95_seconds":
            return self._once("stats", lambda: self.store.stats(window_seconds=self.window))["latency_seconds"]["p95"]
        if metric == "critical_errors":
            return float(self._once("critical", lambda: self.book.critical_errors(self.window, utcnow())))
        if metric == "seconds_since_progress":
            return float(self._once("progress", self.store.seconds_since_progress))
        raise ValueError(f"unknown alert metric {metric!r}")


def holds(rule: AlertRule, value: float | None) -> bool:
    if value is None:
        return False
    return value > rule.above if rule.above is not None else rule.below is not None and value < rule.below


def _bound(rule: AlertRule) -> str:
    return f"above {rule.above:g}" if rule.above is not None else f"below {rule.below:g}"


def describe(rule: AlertRule, value: float | None) -> str:
    """`metric (level) = value, above X for N s`: what the rule saw."""
    shown = "none" if value is None else f"{value:.4g}"
    where = f" ({rule.level})" if rule.level else ""
    held = f" for {rule.for_seconds:g} s" if rule.for_seconds else ""
    return f"{rule.metric}{where} = {shown}, {_bound(rule)}{held}"


class AlertEvaluator:
    """The rules of one loop: `evaluate()` reads the figures and records the changes it wins.

    `clock` (seconds, monotonic) times how long a rule has held, for its `for_seconds`.
    """

    def __init__(
        self,
        store: ContextStore,
        rules: list[AlertRule],
        window_seconds: float,
        owner: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.rules = rules
        self.window_seconds = window_seconds
        self.owner = owner
        self.book = store.alert_book
        self.firing: dict[str, bool] = {rule.name: False for rule in rules}
        self._holding_since: dict[str, float] = {}
        self.clock = clock

    def evaluate(self) -> list[Change]:
        readings = Readings(self.store, self.book, self.window_seconds)
        states = self.book.states()
        changes = []
        for rule in self.rules:
            value = readings.value(rule)
            state = states.get(rule.name)
            change = self._decide(rule, value, state)
            if change is not None:
                changes.append(change)
                state = change.state
            self.firing[rule.name] = state is not None and state.status == FIRING
        return changes

    def _decide(self, rule: AlertRule, value: float | None, state: AlertState | None) -> Change | None:
        now = utcnow()
        recorded_firing = state is not None and state.status == FIRING
        if not holds(rule, value):
            self._holding_since.pop(rule.name, None)
            if recorded_firing and state is not None and self.book.resolve(state, self.owner, value, now):
                return Change(rule, RESOLVED, value, self._state(rule.name))
            return None
        at = self.clock()
        since = self._holding_since.setdefault(rule.name, at)
        if recorded_firing or at - since < rule.for_seconds:
            return None
        if self.book.fire(rule.name, state, self.owner, value, now):
            return Change(rule, FIRING, value, self._state(rule.name))
        return None

    def _state(self, name: str) -> AlertState:
        return self.book.states()[name]


def notification(change: Change) -> dict[str, Any]:
    rule, state = change.rule, change.state
    labels = {"alertname": rule.name, "severity": rule.severity, "metric": rule.metric}
    if rule.level:
        labels["level"] = rule.level
    annotations = {
        "summary": rule.summary or f"{rule.metric} {_bound(rule)}",
        "description": f"{describe(rule, change.value)} (recorded by {state.owner})",
    }
    return alertmanager_payload(change.status, labels, annotations, state.starts_at, state.ends_at)


class AlertsCollector(Collector):
    """`ctxbatch_alerts_firing{alertname,severity}`: 1 while the alert is recorded firing, else 0."""

    def __init__(self, evaluator: AlertEvaluator) -> None:
        self.evaluator = evaluator

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "ctxbatch_alerts_firing",
            "1 while an alert rule is firing (cluster-wide), else 0.",
            labels=["alertname", "severity"],
        )
        for rule in self.evaluator.rules:
            family.add_metric([rule.name, rule.severity], 1.0 if self.evaluator.firing.get(rule.name) else 0.0)
        yield family


class AlertMonitor:
    """Runs an AlertEvaluator every `evaluate_every_seconds` in a thread, logs and sends what it wins."""

    def __init__(
        self, store: ContextStore, settings: MonitoringSettings, owner: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.evaluator = AlertEvaluator(store, settings.rules(), settings.window_seconds, owner, clock)
        self.every = settings.evaluate_every_seconds
        self.sender = WebhookSender(settings.webhook_url) if settings.webhook_url and self.evaluator.rules else None
        self.evaluations = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        firing = sorted(name for name, on in self.evaluator.firing.items() if on)
        return f"<AlertMonitor rules={len(self.evaluator.rules)} firing={firing} evaluations={self.evaluations}>"

    def start(self) -> None:
        if self.evaluator.rules and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ctxbatch-alerts", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread after one last evaluation (a short run's alerts count too), then the sender."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self.evaluate_once()
        if self.sender is not None:
            self.sender.close()

    def evaluate_once(self) -> list[Change]:
        """One evaluation: record, log and send the changes this loop wins; a database error is logged."""
        try:
            changes = self.evaluator.evaluate()
        except PyMongoError as exc:
            log.warning("alerts: the database did not answer (%s); evaluating again in %g s", exc, self.every)
            return []
        finally:
            self.evaluations += 1
        for change in changes:
            if change.status == FIRING:
                log.warning(
                    "alert firing: %s (%s): %s",
                    change.rule.name,
                    change.rule.severity,
                    describe(change.rule, change.value),
                )
            else:
                log.warning("alert resolved: %s", change.rule.name)
            if self.sender is not None:
                self.sender.send(notification(change))
        return changes

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.evaluate_once()
            except Exception:  # a bug here must not end the alerts silently, nor the run
                log.exception("alerts: the evaluation raised; evaluating again in %g s", self.every)
            self._stop.wait(self.every)
