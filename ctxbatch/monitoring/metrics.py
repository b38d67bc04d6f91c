"""A loop's own metrics and its alerts, as a subscriber of the loop's events (issue 9).

Every run gets a registry of its own (two runs in one process never collide), served at
`http://{monitoring.metrics_host}:{monitoring.metrics_port}/metrics` while the run lasts. While the
run goes on, that registry is also bridged into prometheus_client's default registry, which is what
distributed's scheduler serves at its own `/metrics`: with the LocalCluster a run starts (its
scheduler lives in the loop's process) the scheduler's page shows the same figures. One run per
process is bridged at a time.

The counters and histograms are this loop's; the queue's gauges and the alerts are the database's,
the same in every loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from ctxbatch.config import Settings
from ctxbatch.errors import ConfigError
from ctxbatch.io import ContextStore, utcnow
from ctxbatch.io.usage import KINDS
from ctxbatch.monitoring.alerts import AlertMonitor, AlertsCollector
from ctxbatch.monitoring.database import DatabaseCollector
from ctxbatch.pipeline.events import (
    BatchClaimed,
    BatchCritical,
    BatchFinished,
    EngineConcurrency,
    LeasesReaped,
    PartitionFinished,
    RunFinished,
    RunStarted,
    Subscriber,
)

log = logging.getLogger("ctxbatch.monitoring")

OUTCOMES = ("completed", "failed", "retried", "deferred", "lost")
LATENCY_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
PROCESSING_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
BATCH_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
# Every metric a loop serves: dashboards and prometheus-rules.yml rely on these names.
METRIC_NAMES = (
    "ctxbatch_contexts_processed_total",
    "ctxbatch_tokens_total",
    "ctxbatch_context_latency_seconds",
    "ctxbatch_processing_seconds",
    "ctxbatch_batch_seconds",
    "ctxbatch_batch_size",
    "ctxbatch_batches_in_flight",
    "ctxbatch_engine_concurrency",
    "ctxbatch_critical_errors_total",
    "ctxbatch_leases_reaped_total",
    "ctxbatch_queue_length",
    "ctxbatch_oldest_pending_seconds",
    "ctxbatch_contexts",
    "ctxbatch_database_up",
    "ctxbatch_alerts_firing",
)


class LoopMetrics:
    """The registry of one run and the metrics the loop's events update."""

    def __init__(self, store: ContextStore) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.processed = Counter(
            "ctxbatch_contexts_processed",
            "Contexts this loop settled, by outcome (failed: for good).",
            ["outcome"],
            registry=r,
        )
        for outcome in OUTCOMES:
            self.processed.labels(outcome)  # every outcome shows, at 0 until it happens
        self.tokens = Counter(
            "ctxbatch_tokens",
            "Tokens of the results this loop wrote, by kind (input, output, total), as their usage reported them.",
            ["kind"],
            registry=r,
        )
        for kind in KINDS:
            self.tokens.labels(kind)
        self.latency = Histogram(
            "ctxbatch_context_latency_seconds",
            "Submitted -> finished, per completed context.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.processing = Histogram(
            "ctxbatch_processing_seconds",
            "Engine time per completed context.",
            buckets=PROCESSING_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "ctxbatch_batch_seconds", "Claim (or last retry) -> written, per batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_size = Gauge("ctxbatch_batch_size", "Contexts of the last batch claimed.", registry=r)
        self.in_flight = Gauge("ctxbatch_batches_in_flight", "Batches claimed and not yet written.", registry=r)
        self.engine_concurrency = Gauge(
            "ctxbatch_engine_concurrency",
            "Each worker's limit on async engine calls in flight, as its last partition reported it.",
            ["worker"],
            registry=r,
        )
        self.critical = Counter("ctxbatch_critical_errors", "Batches stopped by a critical error.", registry=r)
        self.reaped = Counter("ctxbatch_leases_reaped", "Expired leases returned to the queue.", registry=r)
        r.register(DatabaseCollector(store))


class _Bridge(Collector):
    """The run's registry inside prometheus_client's default one (which distributed's scheduler serves)."""

    lock = threading.Lock()
    active: _Bridge | None = None

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def describe(self) -> Iterable[Metric]:
        return []  # no names claimed: the default registry then never calls collect() to check them

    def collect(self) -> Iterator[Metric]:
        return iter(self.registry.collect())

    def install(self) -> bool:
        with _Bridge.lock:
            if _Bridge.active is not None:
                log.debug("metrics: another run's metrics are in the default registry; not bridging this one")
                return False
            REGISTRY.register(self)
            _Bridge.active = self
            return True

    def remove(self) -> None:
        with _Bridge.lock:
            if _Bridge.active is self:
                REGISTRY.unregister(self)
                _Bridge.active = None


class LoopMonitor(Subscriber):
    """Subscribes to a run's events: updates LoopMetrics, serves them, and runs the alert rules."""

    def __init__(
        self, store: ContextStore, settings: Settings, owner: str, announce: Callable[[str], None] | None = None
    ) -> None:
        monitoring = settings.monitoring
        self.store = store
        self.owner = owner
        self.metrics = LoopMetrics(store)
        self.alerts = AlertMonitor(store, monitoring, owner)
        self.metrics.registry.register(AlertsCollector(self.alerts.evaluator))
        self.book = store.alert_book
        self.host, self.port = monitoring.metrics_host, monitoring.metrics_port
        self.url: str | None = None
        self._bridge = _Bridge(self.metrics.registry)
        self._batches: set[int] = set()
        self._announce = announce or log.info

    def __repr__(self) -> str:
        return f"<LoopMonitor metrics={self.url or 'not served'} alerts={self.alerts!r}>"

    # -- the run ------------------------------------------------------------------------------

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Serve the metrics (with `monitoring.metrics_port`) for as long as the block runs."""
        if self.port is None:
            yield
            return
        try:
            server, _ = start_http_server(self.port, self.host, registry=self.metrics.registry)
        except OSError as exc:
            where = f"{self.host}:{self.port}"
            raise ConfigError("monitoring.metrics_port", f"cannot serve on {where}: {exc.strerror}") from None
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{server.server_address[1]}/metrics"
        self._announce(f"serving the loop's Prometheus metrics at {self.url}")
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()

    def on_run_started(self, event: RunStarted) -> None:
        self._bridge.install()
        self.alerts.start()

    def on_run_finished(self, event: RunFinished) -> None:
        self.alerts.stop()
        self._bridge.remove()
        self._batches.clear()
        self.metrics.in_flight.set(0)

    # -- batches and partitions ---------------------------------------------------------------

    def on_batch_claimed(self, event: BatchClaimed) -> None:
        self.metrics.batch_size.set(event.size)
        self._batches.add(event.seq)
        self.metrics.in_flight.set(len(self._batches))

    def on_partition_finished(self, event: PartitionFinished) -> None:
        for outcome in OUTCOMES:
            count = getattr(event, outcome)
            if count:
                self.metrics.processed.labels(outcome).inc(count)
        for kind, count in event.usage.items():
            if count:
                self.metrics.tokens.labels(kind).inc(count)
        for seconds in event.latency_seconds:
            self.metrics.latency.observe(seconds)
        for seconds in event.processing_seconds:
            self.metrics.processing.observe(seconds)

    def on_batch_finished(self, event: BatchFinished) -> None:
        self.metrics.batch_seconds.observe(event.wall_seconds)
        self._done(event.seq)

    def on_batch_critical(self, event: BatchCritical) -> None:
        self.metrics.critical.inc()
        if event.failed:
            self.metrics.processed.labels("failed").inc(event.failed)
        # Every loop's `critical_errors` rule counts it: it goes to the database.
        self.book.record_critical(self.owner, event.label, event.error, utcnow())
        if event.released or event.retries_left == 0 or event.held == 0:
            self._done(event.seq)

    def on_leases_reaped(self, event: LeasesReaped) -> None:
        self.metrics.reaped.inc(event.count)

    def on_engine_concurrency(self, event: EngineConcurrency) -> None:
        for worker, limit in event.limits.items():
            self.metrics.engine_concurrency.labels(worker).set(limit)

    def _done(self, seq: int) -> None:
        self._batches.discard(seq)
        self.metrics.in_flight.set(len(self._batches))
