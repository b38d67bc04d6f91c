"""`Pipeline`: builds a run — the loop (`pipeline/loop.py`) wired to its cluster and its subscribers.

The loop claims, runs partitions, collects and emits events; it knows nothing of what listens.
This module is where a run is put together: the settings, the engine, the store, the sizer, the
partition job, the Dask cluster, the signals, the metrics port, and the subscribers in their order
(the run's counters first, so user subscribers see them already updated; then monitoring's metrics
and alerts, worker scaling, the sizer's history, the sizing decisions every loop publishes, a
notebook's progress; then the user's own).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from distributed import Client

from ctxbatch.config import Settings, load_config
from ctxbatch.io import ContextStore, connect
from ctxbatch.io.outage import known_drained
from ctxbatch.monitoring.cluster_page import own_cluster
from ctxbatch.monitoring.dask_pages import page_link
from ctxbatch.monitoring.decisions import DecisionLog
from ctxbatch.monitoring.metrics import LoopMonitor
from ctxbatch.pipeline.cluster import ClusterStart, dask_client
from ctxbatch.pipeline.engine import Engine, configured, fingerprint, resolve_engine
from ctxbatch.pipeline.events import Subscriber
from ctxbatch.pipeline.fate import RetryPolicy
from ctxbatch.pipeline.loop import Loop
from ctxbatch.pipeline.notebook import NotebookProgress, in_notebook
from ctxbatch.pipeline.partition import PartitionJob
from ctxbatch.pipeline.remember import RememberSizing, history_key
from ctxbatch.pipeline.report import RunReport
from ctxbatch.pipeline.signals import stop_on_signals
from ctxbatch.pipeline.subscribers import ProgressHook, RunCounters, WorkerScaling, resolve_subscriber
from ctxbatch.sizing import Sizer, WorkerScaler, resolve_sizer

log = logging.getLogger("ctxbatch.pipeline")


class Pipeline:
    """Claims contexts in batches and processes them on Dask; `run()` until stopped or empty.

    `client`: a Dask client to run on (left open), or a `ClusterStart` begun earlier (closed when the
    run ends); by default the `dask:` settings say which cluster to join or start. `subscribers` listen
    to the run's events (`ctxbatch.Subscriber`): objects, or "module:callable" naming a class or
    factory of one.
    """

    def __init__(
        self,
        engine: str | Callable[..., Any] | Engine,
        config: str | os.PathLike[str] | dict[str, Any] | Settings | None = None,
        store: ContextStore | None = None,
        client: Client | ClusterStart | None = None,
        *,
        sizer: Any = None,
        announce: Callable[[str], None] | None = None,
        on_progress: Callable[[RunReport], None] | None = None,
        subscribers: Sequence[Subscriber | str] = (),
    ) -> None:
        self.settings = load_config(config)
        self.engine = configured(resolve_engine(engine), self.settings)
        self.store = store or connect(config=self.settings, announce=announce)
        self.sizer: Sizer = resolve_sizer(sizer or self.settings.worker.sizer, self.settings.worker)
        self.client = client
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.report = RunReport()
        self.subscribers: list[Any] = [resolve_subscriber(s) for s in subscribers]
        if on_progress:
            self.subscribers.insert(0, ProgressHook(on_progress))
        self._announce = announce or (lambda message: log.info(message))
        adaptive = self.settings.dask.adaptive
        self.scaler = (
            WorkerScaler(adaptive.minimum, adaptive.maximum, self.settings.worker.target_batch_seconds)
            if adaptive
            else None
        )
        self.job = partition_job(self.engine, self.store, self.settings)
        self.monitor: LoopMonitor | None = None  # the run's metrics and alerts, while it runs
        self._loop: Loop | None = None

    def __repr__(self) -> str:
        r = self.report
        in_flight = len(self._loop.in_flight) if self._loop else 0
        return (
            f"<Pipeline engine={self.engine.name} in_flight={in_flight} "
            f"completed={r.completed} failed={r.failed} retried={r.retried}>"
        )

    def stop(self, now: bool = False) -> None:
        """Stop claiming and let batches in flight finish; with `now`, release them at once."""
        if self._loop is not None:
            self._loop.stop(now)

    def run(self, until_empty: bool = False, max_contexts: int | None = None) -> RunReport:
        """Process contexts until stopped, until `max_contexts` were claimed, or (until_empty) none are left."""
        self.report = RunReport(decisions=self.sizer.decisions)
        deprecated_rate = self.settings.worker.rate_limit_per_second
        if deprecated_rate is not None:
            log.warning(
                "worker.rate_limit_per_second is deprecated: read as limits.requests_per_minute: %g "
                "(60 x %g, shared by every loop on the database under limits.name %r)",
                60 * deprecated_rate,
                deprecated_rate,
                self.settings.limits.name,
            )
        loop = self._loop = Loop(self.store, self.settings, self.sizer, self.job, self.owner)  # stop() reaches it
        if until_empty and self.client is None and known_drained(self.store, self.settings.worker.queues):
            # Nothing to do: no cluster, no metrics port; an empty run costs about a connection.
            self.report.stopped_by = "empty"
            log.info("run finished: %s", self.report.summary_line())
            return self.report
        dask = self.settings.dask
        owned = not isinstance(self.client, Client)
        # Its own LocalCluster starts now, in a thread, while the run prepares (pipeline/cluster.py).
        given = self.client if self.client is not None else own_cluster(dask)
        with contextlib.ExitStack() as started:
            if isinstance(given, ClusterStart):
                started.callback(given.close)  # also when the run fails before it waits for the cluster
            self.monitor = LoopMonitor(self.store, self.settings, self.owner, self._announce)
            remember = self._remember_sizing()
            for memory in remember:
                memory.resume()  # before the first plan, which claim_ahead may make
            started.enter_context(self.monitor.serving())  # a metrics port that is taken fails the run here
            started.enter_context(stop_on_signals(loop.stop, lambda: loop.stopping, self._announce))
            if isinstance(given, ClusterStart) and given.shape is not None:
                # The first batch is claimed while the cluster's workers boot; released if the run fails first.
                started.callback(loop.give_back_ahead)
                loop.claim_ahead(*given.shape, until_empty, max_contexts)
            client, cluster = started.enter_context(dask_client(dask, self.store, given, self._announce))
            subscribers = [
                RunCounters(self.report),
                self.monitor,
                *([WorkerScaling(self.scaler, self.store, cluster)] if self.scaler else []),
                *remember,
                DecisionLog(self.store),
                *([NotebookProgress(self.store)] if in_notebook() else []),
                *self.subscribers,
            ]
            link = client.dashboard_link if dask.dashboard_address else None
            self.report.page_link = page_link(client) if link else None
            if self.report.page_link and owned:  # beside the Dask link dask_client announced
                self._announce(f"ctxbatch: {self.report.page_link}")
            loop.run(client, self.report, subscribers, until_empty, max_contexts, link)
        log.info("run finished: %s", self.report.summary_line())
        return self.report

    def _remember_sizing(self) -> list[RememberSizing]:
        """The subscriber that starts the sizer from its history and keeps what it learns, if it should."""
        if not (self.settings.worker.sizing_history and self.sizer.remembers):
            return []
        client = self.client if isinstance(self.client, Client) else None
        key = history_key(self.engine.name, self.job.engine_key, self.settings, client)
        return [RememberSizing(self.sizer, self.store, key, self.owner)]


def partition_job(engine: Engine, store: ContextStore, settings: Settings) -> PartitionJob:
    """What every partition of the run's batches needs, from the settings."""
    work = settings.worker
    auto = work.engine_concurrency == "auto"
    return PartitionJob(
        engine,
        store.uri,
        store.database_name,
        RetryPolicy(work.retry),
        work.max_engine_concurrency if auto else int(work.engine_concurrency),
        work.context_timeout_seconds,
        adaptive=(work.min_engine_concurrency, work.max_engine_concurrency) if auto else None,
        limits=settings.shared_limits,
        engine_key=fingerprint(engine),
        outage_seconds=settings.mongo.outage_seconds,
    )
