"""The built-in subscribers: the run's counters, worker scaling, a progress hook (monitoring has its own).

The loop puts them first, in this order, so user subscribers see the counters already updated.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ctxbatch.errors import ConfigError
from ctxbatch.io import ContextStore
from ctxbatch.pipeline.events import (
    BatchClaimed,
    BatchCritical,
    BatchFinished,
    EngineConcurrency,
    PartitionFinished,
    RunFinished,
    RunStarted,
    Subscriber,
)
from ctxbatch.pipeline.report import RunReport
from ctxbatch.resolve import resolve
from ctxbatch.sizing import WorkerScaler

log = logging.getLogger("ctxbatch.pipeline")

EXPECTED = "expected a Subscriber, or 'module:callable' naming a Subscriber class or a factory of one"


class RunCounters(Subscriber):
    """Keeps a RunReport's counters up to date, and its working time: while any batch is in flight."""

    def __init__(self, report: RunReport) -> None:
        self.report = report
        self._in_flight: set[int] = set()  # the batches claimed and not yet done with, by seq

    def on_run_started(self, event: RunStarted) -> None:
        self.report.dashboard_link = event.dashboard_link
        self.report.started = time.monotonic()  # the rate is the loop's, not the cluster's start-up
        self._in_flight.clear()

    def on_batch_claimed(self, event: BatchClaimed) -> None:
        self.report.claimed += event.size
        self.report.batches += 1
        if not self._in_flight:
            self.report.began_working(time.monotonic())
        self._in_flight.add(event.seq)

    def _done_with(self, seq: int) -> None:
        self._in_flight.discard(seq)
        if not self._in_flight:
            self.report.stopped_working(time.monotonic())

    def on_batch_finished(self, event: BatchFinished) -> None:
        self._done_with(event.seq)

    def on_partition_finished(self, event: PartitionFinished) -> None:
        for name in ("completed", "failed", "retried", "deferred", "lost"):
            setattr(self.report, name, getattr(self.report, name) + getattr(event, name))

    def on_batch_critical(self, event: BatchCritical) -> None:
        self.report.critical += 1
        self.report.failed += event.failed
        if not event.retrying:  # held for a retry, it is still in flight
            self._done_with(event.seq)

    def on_engine_concurrency(self, event: EngineConcurrency) -> None:
        self.report.engine_concurrency = dict(event.limits)

    def on_run_finished(self, event: RunFinished) -> None:
        self.report.finished = time.monotonic()
        self.report.stopped_working(self.report.finished)  # what it still held was released


class WorkerScaling(Subscriber):
    """With `dask.adaptive`, sizes the run's own LocalCluster from the queue; else only reports the want."""

    def __init__(self, scaler: WorkerScaler, store: ContextStore, cluster: Any) -> None:
        self.scaler = scaler
        self.store = store
        self.cluster = cluster  # None unless the run owns it: only then does it scale it
        self._report: RunReport | None = None

    def on_run_started(self, event: RunStarted) -> None:
        self._report = event.report

    def on_batch_finished(self, event: BatchFinished) -> None:
        self.scaler.observe(event.observation)
        current = event.observation.readings.workers
        want = self.scaler.want(self.store.status_counts()["pending"], current)
        if self._report is not None:
            self._report.wanted_workers = want
        if want != current and self.cluster is not None:
            log.info("scaling the local cluster from %d to %d workers", current, want)
            self.cluster.scale(want)
            if self._report is not None:
                self._report.scaled_to = want


class ProgressHook(Subscriber):
    """Calls `on_progress(report)` after each partition (Pipeline's `on_progress=`)."""

    def __init__(self, on_progress: Callable[[RunReport], None]) -> None:
        self.on_progress = on_progress
        self._report: RunReport | None = None

    def on_run_started(self, event: RunStarted) -> None:
        self._report = event.report

    def on_partition_finished(self, event: PartitionFinished) -> None:
        if self._report is not None:
            self.on_progress(self._report)


def resolve_subscriber(spec: Any) -> Any:
    """A subscriber from an object, or from "module:callable" naming a class or factory (called with no arguments)."""
    if not isinstance(spec, str):
        return spec
    factory = resolve(spec, {}, what="subscriber", expected=EXPECTED, refuse=lambda m: ConfigError("subscribers", m))
    try:
        return factory()
    except Exception as exc:  # the user's factory: say which one failed, and how
        raise ConfigError("subscribers", f"{spec}() failed: {type(exc).__name__}: {exc}") from exc
