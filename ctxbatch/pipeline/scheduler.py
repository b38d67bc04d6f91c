"""The scheduler loop: claim a batch, submit its partitions to Dask, collect, settle, repeat.

Up to `max_parallel_batches` claims are in flight; their leases are renewed while they run and
other loops' expired leases are reaped (`leases.py`). A critical error keeps the batch's contexts
under its lease, waits `backoff_seconds[i]` and runs what is left again, at most `batch_retries`
times. Everything else a run does (its counters, the progress bar, its metrics and alert rules,
worker scaling, a user's hooks) listens to the loop's events (`events.py`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from distributed import Client, Future, wait
from pymongo.errors import PyMongoError

from ctxbatch.config import Settings, load_config
from ctxbatch.errors import DatabaseUnavailable
from ctxbatch.io import Claim, ContextStore, connect, error_record
from ctxbatch.io.outage import short_reason
from ctxbatch.monitoring.dask_pages import page_link
from ctxbatch.monitoring.loop import LoopMonitor
from ctxbatch.pipeline import worker
from ctxbatch.pipeline.cluster import dask_client
from ctxbatch.pipeline.engine import Engine, configured, resolve_engine
from ctxbatch.pipeline.events import (
    BatchClaimed,
    BatchCritical,
    BatchFinished,
    LeasesReaped,
    PartitionFinished,
    RunFinished,
    RunStarted,
    SizingDecision,
    Subscriber,
    emit,
)
from ctxbatch.pipeline.leases import LeaseKeeper
from ctxbatch.pipeline.notebook import NotebookProgress, in_notebook
from ctxbatch.pipeline.partition import PartitionJob, RetryPolicy, submit_batch
from ctxbatch.pipeline.report import RunReport
from ctxbatch.pipeline.signals import stop_on_signals
from ctxbatch.pipeline.subscribers import ProgressHook, RunCounters, WorkerScaling, resolve_subscriber
from ctxbatch.sizing import Observation, Plan, Readings, Sizer, WorkerScaler, resolve_sizer, resources

log = logging.getLogger("ctxbatch.pipeline")

POLL_SECONDS = 0.05
IDLE_SECONDS = 0.25


@dataclass
class _InFlight:
    """One claim in flight (or waiting out a critical-error backoff)."""

    seq: int
    claim: Claim
    plan: Plan
    readings: Readings
    started: float = field(default_factory=time.monotonic)
    futures: list[Future] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    critical: dict[str, str] | None = None
    retries: int = 0
    due: float = 0.0  # when a claim waiting out a backoff runs again

    @property
    def label(self) -> str:
        return f"ctxbatch-{self.seq}-{self.claim.token[:6]}"


class Pipeline:
    """Claims contexts in batches and processes them on Dask; `run()` until stopped or empty.

    `subscribers` listen to the run's events (`ctxbatch.Subscriber`): objects, or "module:callable"
    naming a class or factory of one.
    """

    def __init__(
        self,
        engine: str | Callable[..., Any] | Engine,
        config: str | os.PathLike[str] | dict[str, Any] | Settings | None = None,
        store: ContextStore | None = None,
        client: Client | None = None,
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
        work = self.settings.worker
        auto = work.engine_concurrency == "auto"
        self._job = PartitionJob(
            self.engine,
            self.store.uri,
            self.store.database_name,
            RetryPolicy.of(work.retry),
            work.max_engine_concurrency if auto else int(work.engine_concurrency),
            work.context_timeout_seconds,
            adaptive=(work.min_engine_concurrency, work.max_engine_concurrency) if auto else None,
        )
        self._in_flight: list[_InFlight] = []
        self._listeners: list[Any] = []
        self.monitor: LoopMonitor | None = None  # the run's metrics and alerts, while it runs
        self._next: tuple[Plan, Readings] | None = None
        self._fill_since: float | None = None
        self._seq = 0
        self._stop = threading.Event()
        self._stop_now = threading.Event()

    def __repr__(self) -> str:
        r = self.report
        return (
            f"<Pipeline engine={self.engine.name} in_flight={len(self._in_flight)} "
            f"completed={r.completed} failed={r.failed} retried={r.retried}>"
        )

    def stop(self, now: bool = False) -> None:
        """Stop claiming and let batches in flight finish; with `now`, release them at once."""
        self._stop.set()
        if now:
            self._stop_now.set()

    def _emit(self, hook: str, event: object) -> None:
        emit(self._listeners, hook, event)

    # -- the loop -------------------------------------------------------------------------

    def run(self, until_empty: bool = False, max_contexts: int | None = None) -> RunReport:
        """Process contexts until stopped, until `max_contexts` were claimed, or (until_empty) none are left."""
        self.report = RunReport(decisions=self.sizer.decisions)
        self._stop.clear()
        self._stop_now.clear()
        self._next, self._fill_since = None, None
        self.store.ensure_indexes()
        if until_empty and self.client is None and self.store.drained():
            # Nothing to do: no cluster, no metrics port; an empty run costs about a connection.
            self.report.stopped_by = "empty"
            log.info("run finished: %s", self.report.summary_line())
            return self.report
        leases = LeaseKeeper(self.store, self.settings.worker)
        dask = self.settings.dask
        # Here, not at the top: monitoring's subscribers import the pipeline's events.
        from ctxbatch.monitoring.decisions import DecisionLog

        self.monitor = LoopMonitor(self.store, self.settings, self.owner, self._announce)
        with (
            self.monitor.serving(),  # a metrics port that is taken fails the run here, before the cluster
            stop_on_signals(self.stop, self._stop.is_set, self._announce),
            dask_client(dask, self.store, self.client, self._announce) as (client, cluster),
        ):
            worker.install(client)
            self._listeners = [
                RunCounters(self.report),
                self.monitor,
                *([WorkerScaling(self.scaler, self.store, cluster)] if self.scaler else []),
                DecisionLog(self.store),
                *([NotebookProgress(self.store)] if in_notebook() else []),
                *self.subscribers,
            ]
            link = client.dashboard_link if dask.dashboard_address else None
            self.report.page_link = page_link(client) if link else None
            if self.report.page_link and self.client is None:  # beside the Dask link dask_client announced
                self._announce(f"ctxbatch: {self.report.page_link}")
            self._emit("on_run_started", RunStarted(self.owner, self.engine.name, self.settings, link, self.report))
            try:
                self._loop(client, leases, until_empty, max_contexts)
            finally:
                self._release_all()
                self._emit("on_run_finished", RunFinished(self.report))
        log.info("run finished: %s", self.report.summary_line())
        return self.report

    def _loop(self, client: Client, leases: LeaseKeeper, until_empty: bool, max_contexts: int | None) -> None:
        outages = 0
        outage_began: float | None = None
        bound = self.settings.mongo.outage_seconds
        while not self._stop_now.is_set():
            try:
                if self._step(client, leases, until_empty, max_contexts):
                    return
                outages, outage_began = 0, None
            except (PyMongoError, DatabaseUnavailable) as exc:
                # A database outage stops no batch by itself: their leases hold (and are fenced),
                # so wait it out with the batch backoff, and give up only when it outlasts the bound.
                outages += 1
                outage_began = outage_began or time.monotonic()
                if self.store.follow_embedded():
                    log.warning("the embedded database moved to %s; following it", self.store.uri)
                lasted = time.monotonic() - outage_began
                reason = short_reason(exc)
                if lasted >= bound:
                    raise DatabaseUnavailable(
                        f"the database did not answer for {lasted:.0f} s (mongo.outage_seconds is {bound:g}): {reason}"
                    ) from exc
                log.warning("the database did not answer (%s); trying again", reason)
                self._stop_now.wait(min(self.settings.worker.retry.backoff(outages), bound - lasted))

    def _step(self, client: Client, leases: LeaseKeeper, until_empty: bool, max_contexts: int | None) -> bool:
        """One turn of the loop; True when the run is over."""
        self._collect(client)
        if leases.due():
            reaped = leases.upkeep(f.claim for f in self._in_flight)
            if reaped:
                log.info("returned %d contexts with expired leases to the queue", reaped)
                self._emit("on_leases_reaped", LeasesReaped(reaped))
        budget = None if max_contexts is None else max_contexts - self.report.claimed
        can_claim = not self._stop.is_set() and (budget is None or budget > 0)
        started = False
        if can_claim and len(self._in_flight) < self.settings.worker.max_parallel_batches:
            started = self._claim(client, until_empty, budget)
        if not self._in_flight:
            if not can_claim:
                self.report.stopped_by = self.report.stopped_by or ("stop" if self._stop.is_set() else "max_contexts")
                return True
            if until_empty and not started and self.store.drained():
                self.report.stopped_by = "empty"
                return True
        if not started:
            self._wait_a_little()
        return False

    def _wait_a_little(self) -> None:
        running = [f for b in self._in_flight for f in b.futures if not f.done()]
        if running:
            with contextlib.suppress(TimeoutError):  # distributed's wait raises when time is up
                wait(running, timeout=IDLE_SECONDS, return_when="FIRST_COMPLETED")
        else:
            self._stop_now.wait(POLL_SECONDS if self._in_flight else IDLE_SECONDS)

    # -- claim and submit -----------------------------------------------------------------

    def _claim(self, client: Client, until_empty: bool, budget: int | None) -> bool:
        worker_settings = self.settings.worker
        if self._next is None:
            # Plan once per batch started (a plan is a sizing decision), and only with work to plan for.
            if self.store.claimable(1) == 0:
                self._fill_since = None  # the wait for a full batch starts with the first context
                return False
            readings = resources.read(client, self.store, len(self._in_flight))
            self._next = (self.sizer.plan(readings), readings)
            self._emit("on_sizing_decision", SizingDecision(self.sizer.decisions[-1]))
        plan, readings = self._next
        size = plan.size if budget is None else min(plan.size, budget)
        # Wait for a full batch, up to batch_timeout_seconds (the seed's fill rule).
        self._fill_since = self._fill_since or time.monotonic()
        filling = not until_empty and time.monotonic() - self._fill_since < worker_settings.batch_timeout_seconds
        if filling and self.store.claimable(size) < size:
            return False
        claim = self.store.claim(
            size, self.owner, worker_settings.lease_seconds, by_priority=worker_settings.priorities.enabled
        )
        if not claim.ids:
            return False
        self._next = None
        self._fill_since = None
        self._seq += 1
        flight = _InFlight(self._seq, claim, plan, readings)
        self._submit(client, flight)
        self._in_flight.append(flight)
        self._emit("on_batch_claimed", BatchClaimed(flight.seq, flight.label, len(claim), claim.token, plan, readings))
        return True

    def _submit(self, client: Client, flight: _InFlight) -> None:
        partitions = min(flight.plan.partitions, len(flight.claim))
        job = self._job
        limit = self.settings.worker.rate_limit_per_second
        if limit is not None:  # each worker's fair share, as many workers as the batch's readings saw
            job = replace(job, rate=limit / max(1, flight.readings.workers))
        flight.futures = submit_batch(client, flight.claim, partitions, flight.label, flight.retries, job)
        flight.summaries, flight.critical = [], None

    # -- collect --------------------------------------------------------------------------

    def _collect(self, client: Client) -> None:
        now = time.monotonic()
        for flight in list(self._in_flight):
            if flight.due:
                if self._stop.is_set():
                    self._give_back(flight)
                elif now >= flight.due:
                    flight.due = 0.0
                    flight.started = time.monotonic()
                    self._submit(client, flight)
                continue
            if not all(f.done() for f in flight.futures):
                continue
            for future in flight.futures:
                self._read_summary(flight, future)
            if flight.critical is None:
                self._finish(flight)
            else:
                self._after_critical(flight)

    def _read_summary(self, flight: _InFlight, future: Future) -> None:
        try:
            summary = future.result()
        except Exception as exc:  # a lost worker, database or cluster stops the batch like a CriticalError
            flight.critical = flight.critical or error_record(exc)
            return
        if summary["critical"]:
            flight.critical = flight.critical or summary["critical"]
            return
        flight.summaries.append(summary)
        counts = {k: summary[k] for k in ("contexts", "completed", "retried", "failed", "lost", "seconds")}
        latency, processing = tuple(summary["latency_seconds"]), tuple(summary["processing_seconds"])
        finished = PartitionFinished(
            flight.seq, flight.label, **counts, latency_seconds=latency, processing_seconds=processing
        )
        self._emit("on_partition_finished", finished)

    def _observe(self, flight: _InFlight, critical: bool) -> Observation:
        observation = Observation(
            contexts=len(flight.claim),
            planned=flight.plan.size,
            wall_seconds=time.monotonic() - flight.started,
            partition_seconds=[float(s["seconds"]) for s in flight.summaries],
            errors=sum(int(s["retried"]) + int(s["failed"]) for s in flight.summaries),
            critical=critical,
            readings=flight.readings,
        )
        self.sizer.observe(observation)
        return observation

    def _finish(self, flight: _InFlight) -> None:
        self._in_flight.remove(flight)
        observation = self._observe(flight, critical=False)
        self._emit(
            "on_batch_finished",
            BatchFinished(flight.seq, flight.label, len(flight.claim), observation.wall_seconds, observation),
        )

    def _after_critical(self, flight: _InFlight) -> None:
        """Hold what is left under the lease and run it again after a backoff, or fail it for good."""
        error = flight.critical
        assert error is not None
        self._observe(flight, critical=True)
        retry = self.settings.worker.retry
        left = self.store.held(flight.claim)
        log.warning(
            "batch %s stopped by %s: %s (%d contexts left)",
            flight.label,
            error["type"],
            short_reason(Exception(error["message"])),
            len(left),
        )
        flight.claim = left
        failed, released, retries_left = 0, False, 0
        if not left.ids or self._stop.is_set():
            self._give_back(flight)
            released = True
        elif flight.retries >= retry.batch_retries:
            failed = self.store.fail(left, dict.fromkeys(left.ids, error), None).written
            self._in_flight.remove(flight)
        else:
            flight.retries += 1
            flight.due = time.monotonic() + retry.backoff(flight.retries)
            retries_left = retry.batch_retries - flight.retries
        event = BatchCritical(flight.seq, flight.label, error, len(left), retries_left, failed, released)
        self._emit("on_batch_critical", event)

    # -- giving back ----------------------------------------------------------------------

    def _give_back(self, flight: _InFlight) -> None:
        """Release what the claim holds and forget it; its finished partitions are already written."""
        for future in flight.futures:
            future.cancel()
        try:
            self.store.release(flight.claim)
        except PyMongoError as exc:
            log.warning("could not release batch %s (%s); its lease will expire", flight.label, short_reason(exc))
        self._in_flight.remove(flight)

    def _release_all(self) -> None:
        """Give back whatever this loop still holds (a second signal, stop(now=True), or an error)."""
        for flight in list(self._in_flight):
            self._give_back(flight)
        try:
            self.store.release_unanswered()
        except PyMongoError as exc:
            reason = short_reason(exc)
            log.warning("could not give back a claim the database did not answer (%s); its lease will expire", reason)
