"""The scheduler loop: claim a batch, map the engine over its Dask partitions, settle, repeat.

Up to `max_parallel_batches` batches are in flight; their leases are renewed while they run and
other loops' expired leases are reaped. A critical error keeps the batch's contexts under its
lease, waits `backoff_seconds[i]` and runs what is left again, at most `batch_retries` times.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, Future, futures_of, wait
from pymongo.errors import PyMongoError

from ctxbatch.config import Settings, load_config
from ctxbatch.errors import DatabaseUnavailable
from ctxbatch.io import Claim, ContextStore, connect, error_record
from ctxbatch.io.frames import claim_frame
from ctxbatch.pipeline.cluster import dask_client
from ctxbatch.pipeline.engine import Engine, resolve_engine
from ctxbatch.pipeline.report import RunReport
from ctxbatch.pipeline.tasks import SUMMARY_META, RetryPolicy, process_partition
from ctxbatch.sizing import Observation, Plan, Readings, Sizer, WorkerScaler, resolve_sizer, resources

log = logging.getLogger("ctxbatch.pipeline")

POLL_SECONDS = 0.05
# An error-rate alert needs this many tries behind it.
ALERT_MIN_TRIES = 100
IDLE_SECONDS = 0.25


@dataclass
class _Batch:
    """One claimed batch in flight (or waiting out a critical-error backoff)."""

    seq: int
    claim: Claim
    plan: Plan
    readings: Readings
    started: float = field(default_factory=time.monotonic)
    futures: list[Future] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    critical: dict[str, str] | None = None
    retries: int = 0
    due: float = 0.0  # when a batch waiting out a backoff runs again

    @property
    def label(self) -> str:
        return f"ctxbatch-{self.seq}-{self.claim.token[:6]}"


class Pipeline:
    """Claims contexts in batches and processes them on Dask; `run()` until stopped or empty."""

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
    ) -> None:
        self.settings = load_config(config)
        self.engine = resolve_engine(engine)
        self.store = store or connect(config=self.settings, announce=announce)
        self.sizer: Sizer = resolve_sizer(sizer or self.settings.worker.sizer, self.settings.worker)
        self.client = client
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.report = RunReport()
        self._announce = announce or (lambda message: log.info(message))
        self._on_progress = on_progress
        self._batches: list[_Batch] = []
        self._next: tuple[Plan, Readings] | None = None
        self._fill_since: float | None = None
        self._next_maintenance = 0.0
        self._alerted = False
        self._seq = 0
        self._stop = threading.Event()
        self._stop_now = threading.Event()
        worker = self.settings.worker
        adaptive = self.settings.dask.adaptive
        self.scaler = (
            WorkerScaler(adaptive.minimum, adaptive.maximum, worker.target_batch_seconds) if adaptive else None
        )
        self._cluster: Any = None
        self._policy = RetryPolicy(worker.retry.context_retries, tuple(worker.retry.backoff_seconds))
        self._maintain_every = max(0.2, min(worker.lease_seconds / 4, 10.0))

    def __repr__(self) -> str:
        r = self.report
        return (
            f"<Pipeline engine={self.engine.name} in_flight={len(self._batches)} "
            f"completed={r.completed} failed={r.failed} retried={r.retried}>"
        )

    def stop(self, now: bool = False) -> None:
        """Stop claiming and let batches in flight finish; with `now`, release them at once."""
        self._stop.set()
        if now:
            self._stop_now.set()

    # -- the loop -------------------------------------------------------------------------

    def run(self, until_empty: bool = False, max_contexts: int | None = None) -> RunReport:
        """Process contexts until stopped, until `max_contexts` were claimed, or (until_empty) none are left."""
        self.report = RunReport(decisions=self.sizer.decisions)
        self._stop.clear()
        self._stop_now.clear()
        self._next, self._fill_since, self._next_maintenance = None, None, 0.0
        self._alerted = False
        self.store.ensure_indexes()
        with (
            self._signals(),
            dask_client(self.settings.dask, self.store, self.client, self._announce) as (client, cluster),
        ):
            self.report.dashboard_link = client.dashboard_link if self.settings.dask.dashboard_address else None
            self.report.started = time.monotonic()  # the rate is the loop's, not the cluster's start-up
            self._cluster = cluster  # None unless the run owns it: only then does it scale it
            try:
                self._loop(client, until_empty, max_contexts)
            finally:
                self._release_all()
                self.report.finished = time.monotonic()
                self._cluster = None
        log.info("run finished: %s", self.report.summary_line())
        return self.report

    def _loop(self, client: Client, until_empty: bool, max_contexts: int | None) -> None:
        outages = 0
        while not self._stop_now.is_set():
            try:
                if self._step(client, until_empty, max_contexts):
                    return
                outages = 0
            except (PyMongoError, DatabaseUnavailable) as exc:
                # A database outage stops no batch by itself: their leases hold (and are fenced),
                # so wait it out with the batch backoff, and give up only when it lasts.
                outages += 1
                retry = self.settings.worker.retry
                if outages > max(retry.batch_retries, 1):
                    raise DatabaseUnavailable(f"lost the database {outages} times in a row: {exc}") from exc
                log.warning("the database did not answer (%s); trying again", exc)
                self._stop_now.wait(retry.backoff(outages))

    def _step(self, client: Client, until_empty: bool, max_contexts: int | None) -> bool:
        """One turn of the loop; True when the run is over."""
        self._collect(client)
        if time.monotonic() >= self._next_maintenance:
            self._maintain()
            self._next_maintenance = time.monotonic() + self._maintain_every
        budget = None if max_contexts is None else max_contexts - self.report.claimed
        can_claim = not self._stop.is_set() and (budget is None or budget > 0)
        started = False
        if can_claim and len(self._batches) < self.settings.worker.max_parallel_batches:
            started = self._start_batch(client, until_empty, budget)
        if not self._batches:
            if not can_claim:
                self.report.stopped_by = self.report.stopped_by or ("stop" if self._stop.is_set() else "max_contexts")
                return True
            if until_empty and not started and self._queue_drained():
                self.report.stopped_by = "empty"
                return True
        if not started:
            self._wait_a_little()
        return False

    def _wait_a_little(self) -> None:
        running = [f for b in self._batches for f in b.futures if not f.done()]
        if running:
            with contextlib.suppress(TimeoutError):  # distributed's wait raises when time is up
                wait(running, timeout=IDLE_SECONDS, return_when="FIRST_COMPLETED")
        else:
            self._stop_now.wait(POLL_SECONDS if self._batches else IDLE_SECONDS)

    def _queue_drained(self) -> bool:
        counts = self.store.status_counts()
        return counts["pending"] == 0 and counts["processing"] == 0

    # -- starting a batch -----------------------------------------------------------------

    def _start_batch(self, client: Client, until_empty: bool, budget: int | None) -> bool:
        worker = self.settings.worker
        if self._next is None:
            # Plan once per batch started (a plan is a sizing decision), and only with work to plan for.
            if self.store.claimable(1) == 0:
                self._fill_since = None  # the wait for a full batch starts with the first context
                return False
            readings = resources.read(client, self.store, len(self._batches))
            self._next = (self.sizer.plan(readings), readings)
        plan, readings = self._next
        size = plan.size if budget is None else min(plan.size, budget)
        # Wait for a full batch, up to batch_timeout_seconds (the seed's fill rule).
        self._fill_since = self._fill_since or time.monotonic()
        filling = not until_empty and time.monotonic() - self._fill_since < worker.batch_timeout_seconds
        if filling and self.store.claimable(size) < size:
            return False
        claim = self.store.claim(size, self.owner, worker.lease_seconds, by_priority=worker.priorities.enabled)
        if not claim.ids:
            return False
        self._next = None
        self._fill_since = None
        self._seq += 1
        batch = _Batch(self._seq, claim, plan, readings)
        self.report.claimed += len(claim)
        self.report.batches += 1
        self._submit(client, batch)
        self._batches.append(batch)
        return True

    def _submit(self, client: Client, batch: _Batch) -> None:
        frame = claim_frame(
            self.store,
            batch.claim,
            min(batch.plan.partitions, len(batch.claim)),
            batch.label,
            process_partition,
            SUMMARY_META,
            engine=self.engine,
            policy=self._policy,
            concurrency=self.settings.worker.engine_concurrency,
        )
        batch.futures = futures_of(client.persist(frame))
        batch.summaries, batch.critical = [], None

    # -- finishing a batch ----------------------------------------------------------------

    def _collect(self, client: Client) -> None:
        now = time.monotonic()
        for batch in list(self._batches):
            if batch.due:
                if self._stop.is_set():
                    self._give_back(batch)
                elif now >= batch.due:
                    self._rerun(client, batch)
                continue
            if not all(f.done() for f in batch.futures):
                continue
            for future in batch.futures:
                self._read_summary(batch, future)
            if batch.critical is None:
                self._finish(batch)
            else:
                self._after_critical(batch)

    def _read_summary(self, batch: _Batch, future: Future) -> None:
        try:
            rows = future.result().to_dict("records")
        except Exception as exc:  # a lost worker, database or cluster stops the batch like a CriticalError
            batch.critical = batch.critical or error_record(exc)
            return
        for row in rows:
            if row["critical"]:
                batch.critical = batch.critical or json.loads(row["critical"])
            else:
                batch.summaries.append(row)
                self.report.add(row)
        if self._on_progress:
            try:
                self._on_progress(self.report)
            except Exception:  # a user's hook never stops the loop
                log.exception("the on_progress hook raised; going on")

    def _finish(self, batch: _Batch) -> None:
        self._batches.remove(batch)
        self._observe(batch, critical=False)
        self._scale(batch.readings.workers)
        self._alert_on_errors()

    def _alert_on_errors(self) -> None:
        """Warn once a run when its share of failed tries passes `monitoring.alert_error_rate`.

        Over the run, not per batch: a batch of retries is often all bad rows, which is no news.
        """
        r = self.report
        tries = r.completed + r.failed + r.retried
        threshold = self.settings.monitoring.alert_error_rate
        if self._alerted or tries < ALERT_MIN_TRIES or threshold is None:
            return
        if r.failed + r.retried > threshold * tries:
            self._alerted = True
            log.warning("alert: %d of %d tries failed so far in this run", r.failed + r.retried, tries)

    def _observe(self, batch: _Batch, critical: bool) -> None:
        observation = Observation(
            contexts=len(batch.claim),
            planned=batch.plan.size,
            wall_seconds=time.monotonic() - batch.started,
            partition_seconds=[float(s["seconds"]) for s in batch.summaries],
            errors=sum(int(s["retried"]) + int(s["failed"]) for s in batch.summaries),
            critical=critical,
            readings=batch.readings,
        )
        self.sizer.observe(observation)
        if self.scaler:
            self.scaler.observe(observation)

    def _scale(self, current: int) -> None:
        """With `dask.adaptive`, size the owned LocalCluster from the queue; else only report the want."""
        if self.scaler is None:
            return
        want = self.scaler.want(self.store.status_counts()["pending"], current)
        self.report.wanted_workers = want
        if want != current and self._cluster is not None:
            log.info("scaling the local cluster from %d to %d workers", current, want)
            self._cluster.scale(want)
            self.report.scaled_to = want

    def _after_critical(self, batch: _Batch) -> None:
        """Hold what is left under the lease and run it again after a backoff, or fail it for good."""
        assert batch.critical is not None
        self.report.critical += 1
        self._observe(batch, critical=True)
        retry = self.settings.worker.retry
        left = self.store.held(batch.claim)
        log.warning(
            "batch %s stopped by %s: %s (%d contexts left)",
            batch.label, batch.critical["type"], batch.critical["message"], len(left),
        )  # fmt: skip
        if not left.ids or self._stop.is_set():
            batch.claim = left
            self._give_back(batch)
            return
        if batch.retries >= retry.batch_retries:
            written = self.store.fail(left, dict.fromkeys(left.ids, batch.critical), None)
            self.report.failed += written.written
            self._batches.remove(batch)
            return
        batch.retries += 1
        batch.claim = left
        batch.due = time.monotonic() + retry.backoff(batch.retries)

    def _rerun(self, client: Client, batch: _Batch) -> None:
        batch.due = 0.0
        batch.started = time.monotonic()
        self._submit(client, batch)

    # -- leases, shutdown -----------------------------------------------------------------

    def _maintain(self) -> None:
        worker = self.settings.worker
        for batch in self._batches:
            self.store.renew(batch.claim, worker.lease_seconds)
        reaped = self.store.reap_expired(max_attempts=worker.retry.context_retries + 1)
        if reaped:
            log.info("returned %d contexts with expired leases to the queue", reaped)

    def _give_back(self, batch: _Batch) -> None:
        """Release what the batch holds and forget it; its finished partitions are already written."""
        for future in batch.futures:
            future.cancel()
        try:
            self.store.release(batch.claim)
        except PyMongoError as exc:
            log.warning("could not release batch %s (%s); its lease will expire", batch.label, exc)
        self._batches.remove(batch)

    def _release_all(self) -> None:
        """Give back whatever this loop still holds (a second signal, stop(now=True), or an error)."""
        for batch in list(self._batches):
            self._give_back(batch)

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: the first drains, the second releases at once. Main thread only."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handle(signum: int, _frame: Any) -> None:
            now = self._stop.is_set()
            self.stop(now=now)
            name = signal.Signals(signum).name
            self._announce(
                f"{name}: releasing batches in flight"
                if now
                else f"{name}: finishing batches in flight (again to release them now)"
            )

        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
