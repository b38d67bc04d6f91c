"""The loop: claim a batch, submit its partitions to Dask, collect, settle, observe, repeat.

Up to `max_parallel_batches` claims are in flight; their leases are renewed while they run and
other loops' expired leases are reaped (`leases.py`). With an async engine the loop keeps the
engine's window full: the window is each worker's limit on calls in flight (as its partitions report
it) summed over the workers; the sizer makes each batch hold at least that (unless the config sets
batch sizes), the partitions of every batch in flight feed the workers' gates at once
(`partition.py`), and a batch is claimed as soon as one finishes, never after waiting for a full one
(`batch_timeout_seconds` is for row and batch engines, whose batches cost a call each).

A critical error keeps the batch's contexts under its lease and runs what is left again after a
backoff, or fails it (`fate.py` decides which). The loop emits events (`events.py`) and knows
nothing of who listens: a run's counters, progress, metrics, alerts and scaling are subscribers
that `ctxbatch.run.Pipeline` wires in.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from distributed import Client, Future, wait
from pymongo.errors import PyMongoError

from ctxbatch.config import Settings
from ctxbatch.errors import DatabaseUnavailable
from ctxbatch.io import Claim, ContextStore, TenantShares, error_record
from ctxbatch.io.outage import short_reason
from ctxbatch.pipeline.adaptive import first_limit
from ctxbatch.pipeline.events import (
    BatchClaimed,
    BatchCritical,
    BatchFinished,
    EngineConcurrency,
    LeasesReaped,
    PartitionFinished,
    RunFinished,
    RunStarted,
    SizingDecision,
    Subscriber,
    emit,
)
from ctxbatch.pipeline.leases import LeaseKeeper
from ctxbatch.pipeline.partition import PartitionJob, PartitionStopped, submit_batch
from ctxbatch.pipeline.report import RunReport
from ctxbatch.sizing import Observation, Plan, Readings, Sizer, resources

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
    finished: list[PartitionFinished] = field(default_factory=list)
    critical: dict[str, str] | None = None
    retries: int = 0
    due: float = 0.0  # when a claim waiting out a backoff runs again

    @property
    def label(self) -> str:
        return f"ctxbatch-{self.seq}-{self.claim.token[:6]}"


class Loop:
    """One run's loop over the queue: `run()` until stopped, until `max_contexts` were claimed, or empty."""

    def __init__(
        self,
        store: ContextStore,
        settings: Settings,
        sizer: Sizer,
        job: PartitionJob,
        owner: str,
    ) -> None:
        self.store = store
        self.settings = settings
        self.sizer = sizer
        self.job = job
        self.owner = owner
        self.subscribers: list[Subscriber] = []
        self.in_flight: list[_InFlight] = []
        self._next: tuple[Plan, Readings] | None = None
        self._limits: dict[str, int] = {}  # each worker's limit on async calls, as last reported
        self._said_capped = False
        self._fill_since: float | None = None
        self._claimed = 0
        self._seq = 0
        self._stop = threading.Event()
        self._stop_now = threading.Event()
        self._ordered = False  # this loop's aging recorded for its queues (io/ordering.py)
        self._shares = TenantShares(settings.worker.tenants.weights, settings.limits.tenant_in_flight)
        self._ahead: _InFlight | None = None  # the first claim, made while the cluster starts (claim_ahead)
        self._untold: list[tuple[str, object]] | None = []  # events before run() starts: told once it does

    def stop(self, now: bool = False) -> None:
        """Stop claiming and let batches in flight finish; with `now`, release them at once."""
        self._stop.set()
        if now:
            self._stop_now.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _emit(self, hook: str, event: object) -> None:
        if self._untold is not None:
            self._untold.append((hook, event))
        else:
            emit(self.subscribers, hook, event)

    def claim_ahead(self, workers: int, threads: int, until_empty: bool, max_contexts: int | None) -> None:
        """Claim the first batch while the run's own cluster starts, sized for the cluster it will be
        (`workers` of `threads` threads each); run() submits it first and tells its events after
        RunStarted. Advisory: when the database does not answer, run() claims as it always does."""

        def expected() -> Readings:
            read = resources.read(None, self.store, 0)
            return replace(read, workers=workers, threads=workers * threads)

        try:
            self._prepare()
            self._ahead = self._next_claim(expected, until_empty, max_contexts)
        except (PyMongoError, DatabaseUnavailable) as exc:
            log.debug("no claim ahead of the cluster: %s", short_reason(exc))

    def give_back_ahead(self) -> None:
        """Release the claim made ahead of the cluster, if run() never took it (the run failed first)."""
        if self._ahead is not None:
            self.in_flight.append(self._ahead)
            self._ahead = None
            self._release_all()

    def run(
        self,
        client: Client,
        report: RunReport,
        subscribers: Sequence[Subscriber] = (),
        until_empty: bool = False,
        max_contexts: int | None = None,
        dashboard_link: str | None = None,
    ) -> None:
        """Process contexts on `client`'s cluster, telling `subscribers`; `report.stopped_by` says why it ended."""
        self.subscribers = list(subscribers)
        leases = LeaseKeeper(self.store, self.settings.worker)
        started = RunStarted(self.owner, self.job.engine.name, self.settings, dashboard_link, report)
        untold, self._untold = self._untold or [], None
        for hook, event in [("on_run_started", started), *untold]:
            self._emit(hook, event)
        try:
            if self._ahead is not None:
                ahead, self._ahead = self._ahead, None
                self._start(client, ahead)
            report.stopped_by = self._loop(client, leases, until_empty, max_contexts)
        finally:
            self._release_all()
            self._emit("on_run_finished", RunFinished(report))

    def _loop(self, client: Client, leases: LeaseKeeper, until_empty: bool, max_contexts: int | None) -> str | None:
        outages = 0
        outage_began: float | None = None
        bound = self.settings.mongo.outage_seconds
        while not self._stop_now.is_set():
            try:
                stopped_by = self._step(client, leases, until_empty, max_contexts)
                if stopped_by:
                    return stopped_by
                outages, outage_began = 0, None
            except (PyMongoError, DatabaseUnavailable) as exc:
                # A database outage stops no batch by itself: their leases hold (and are fenced),
                # so wait it out with the batch backoff, and give up only when it outlasts the bound.
                outages += 1
                outage_began = outage_began or time.monotonic()
                lasted = time.monotonic() - outage_began
                reason = short_reason(exc)
                if lasted >= bound:
                    raise DatabaseUnavailable(
                        f"the database did not answer for {lasted:.0f} s (mongo.outage_seconds is {bound:g}): {reason}"
                    ) from exc
                log.warning("the database did not answer (%s); trying again", reason)
                # At most a quarter lease apart, so the leases are renewed soon after it is back.
                self._stop_now.wait(min(self.job.policy.backoff(outages), leases.every, bound - lasted))
        return None  # stopped at once: what it held is released, whatever it was doing

    def _prepare(self) -> None:
        """Once: the indexes, and this loop's aging for its queues. Here rather than before the loop, so
        that a database away when the run starts is waited for."""
        self.store.ensure_indexes()
        if not self._ordered:
            work = self.settings.worker
            self.store.order_queues(work.queues, work.priorities.order_aging_seconds)
            self._ordered = True

    def _step(self, client: Client, leases: LeaseKeeper, until_empty: bool, max_contexts: int | None) -> str | None:
        """One turn of the loop; why the run is over, or None while it goes on."""
        self._prepare()
        self._collect(client)
        if leases.due():
            reaped = leases.upkeep(f.claim for f in self.in_flight)
            if reaped:
                log.info("returned %d contexts with expired leases to the queue", reaped)
                self._emit("on_leases_reaped", LeasesReaped(reaped))
        budget = None if max_contexts is None else max_contexts - self._claimed
        can_claim = not self._stop.is_set() and (budget is None or budget > 0)
        started = False
        if can_claim and len(self.in_flight) < self.settings.worker.max_parallel_batches:
            started = self._claim(client, until_empty, budget)
        if not self.in_flight:
            if not can_claim:
                return "stop" if self._stop.is_set() else "max_contexts"
            if until_empty and not started and self.store.drained(self.settings.worker.queues):
                return "empty"
        if not started:
            self._wait_a_little()
        return None

    def _wait_a_little(self) -> None:
        running = [f for b in self.in_flight for f in b.futures if not f.done()]
        if running:
            with contextlib.suppress(TimeoutError):  # distributed's wait raises when time is up
                wait(running, timeout=IDLE_SECONDS, return_when="FIRST_COMPLETED")
        else:
            self._stop_now.wait(POLL_SECONDS if self.in_flight else IDLE_SECONDS)

    # -- claim and submit -----------------------------------------------------------------

    def _claim(self, client: Client, until_empty: bool, budget: int | None) -> bool:
        flight = self._next_claim(lambda: resources.read(client, self.store, len(self.in_flight)), until_empty, budget)
        if flight is None:
            return False
        self._start(client, flight)
        return True

    def _next_claim(self, read: Callable[[], Readings], until_empty: bool, budget: int | None) -> _InFlight | None:
        """The next batch's claim, planned from `read()`'s readings; None when there is none to make yet."""
        worker_settings = self.settings.worker
        if self._next is None:
            # Plan once per batch started (a plan is a sizing decision), and only with work to plan for.
            if self.store.claimable(1, self.settings.worker.queues) == 0:
                self._fill_since = None  # the wait for a full batch starts with the first context
                return None
            readings = read()
            readings = replace(readings, window=self._window(readings.workers))
            self._say_if_capped(readings.window)
            self._next = (self.sizer.plan(readings), readings)
            self._emit("on_sizing_decision", SizingDecision(self.sizer.decisions[-1]))
        plan, readings = self._next
        size = plan.size if budget is None else min(plan.size, budget)
        # Wait for a full batch, up to batch_timeout_seconds (the seed's fill rule), unless async.
        self._fill_since = self._fill_since or time.monotonic()
        waited = time.monotonic() - self._fill_since
        filling = not until_empty and not self._async and waited < worker_settings.batch_timeout_seconds
        if filling and self.store.claimable(size, worker_settings.queues) < size:
            return None
        claim = self.store.claim(
            size,
            self.owner,
            worker_settings.lease_seconds,
            queues=worker_settings.queues,
            aging_seconds=worker_settings.priorities.order_aging_seconds,
            shares=self._shares,
        )
        if not claim.ids:
            return None
        self._next = None
        self._fill_since = None
        self._seq += 1
        self._claimed += len(claim)
        return _InFlight(self._seq, claim, plan, readings)

    def _start(self, client: Client, flight: _InFlight) -> None:
        """A claimed batch's partitions submitted, and the claim told."""
        self._submit(client, flight)
        self.in_flight.append(flight)
        claim = flight.claim
        event = BatchClaimed(flight.seq, flight.label, len(claim), claim.token, flight.plan, flight.readings)
        self._emit("on_batch_claimed", event)

    # -- the async engine's window ---------------------------------------------------------

    @property
    def _async(self) -> bool:
        return self.job.engine.kind == "async"

    def _window(self, workers: int) -> int:
        """Calls in flight the workers' limits allow (0 for row and batch engines)."""
        if not self._async:
            return 0
        job = self.job
        limits = list(self._limits.values())
        if limits:
            per_worker: float = sum(limits) / len(limits)
        else:
            per_worker = first_limit(*job.adaptive) if job.adaptive else job.concurrency
        return round(per_worker * max(1, workers))

    def _say_if_capped(self, window: int) -> None:
        """Once, when it first shows (at start, or as an auto limit climbs): the config's batch sizes
        keep fewer calls in flight than the workers allow."""
        work = self.settings.worker
        if self._said_capped or not window or not work.sizes_given:
            return
        largest = max(self.sizer.configured_bounds) * work.max_parallel_batches
        if largest < window:
            self._said_capped = True
            log.warning(
                "batches cap the engine's calls in flight at %d (largest batch %d x max_parallel_batches %d), "
                "under the %d the workers allow: leave batch sizes unset to size batches to the window",
                largest,
                max(self.sizer.configured_bounds),
                work.max_parallel_batches,
                window,
            )

    def _heard(self, finished: PartitionFinished) -> None:
        """Note the limit a partition's worker reported; tell subscribers when it changed."""
        limit, worker = finished.engine_concurrency, finished.worker
        if limit is None or self._limits.get(worker) == limit:
            return
        self._limits[worker] = limit
        self._emit("on_engine_concurrency", EngineConcurrency(dict(self._limits), self.job.adaptive is not None))

    def _submit(self, client: Client, flight: _InFlight) -> None:
        partitions = min(flight.plan.partitions, len(flight.claim))
        flight.futures = submit_batch(
            client, flight.claim, partitions, flight.seq, flight.label, flight.retries, self.job
        )
        flight.finished, flight.critical = [], None

    # -- collect and observe --------------------------------------------------------------

    def _collect(self, client: Client) -> None:
        now = time.monotonic()
        for flight in list(self.in_flight):
            if flight.due:
                if self._stop.is_set():
                    self._give_back(flight)
                elif now >= flight.due:
                    flight.due = 0.0
                    flight.started = time.monotonic()
                    self._submit(client, flight)
                continue
            if flight.futures:
                if not all(f.done() for f in flight.futures):
                    continue
                for future in flight.futures:
                    self._read_partition(flight, future)
                # Read once: when the database fails what follows, the next turn decides again
                # without telling the partitions (and counting their contexts) twice.
                flight.futures = []
            if flight.critical is None:
                self._batch_done(flight)
            else:
                self._after_critical(flight)

    def _read_partition(self, flight: _InFlight, future: Future) -> None:
        try:
            finished = future.result()
        except Exception as exc:  # a lost worker, database or cluster stops the batch like a CriticalError
            flight.critical = flight.critical or error_record(exc)
            return
        if isinstance(finished, PartitionStopped):
            flight.critical = flight.critical or finished.error
            return
        flight.finished.append(finished)
        self._heard(finished)
        self._emit("on_partition_finished", finished)

    def _observe(self, flight: _InFlight, critical: bool, contexts: int | None = None) -> Observation:
        observation = Observation(
            contexts=len(flight.claim) if contexts is None else contexts,
            planned=flight.plan.size,
            wall_seconds=time.monotonic() - flight.started,
            partition_seconds=[p.seconds for p in flight.finished],
            errors=sum(p.retried + p.deferred + p.failed for p in flight.finished),
            critical=critical,
            readings=flight.readings,
            lost=sum(p.lost for p in flight.finished),
        )
        self.sizer.observe(observation)
        return observation

    def _batch_done(self, flight: _InFlight) -> None:
        self.in_flight.remove(flight)
        observation = self._observe(flight, critical=False)
        self._emit(
            "on_batch_finished",
            BatchFinished(flight.seq, flight.label, len(flight.claim), observation.wall_seconds, observation),
        )

    def _after_critical(self, flight: _InFlight) -> None:
        """Hold what is left under the lease and run it again after a backoff, or fail it for good."""
        error = flight.critical
        assert error is not None
        policy = self.job.policy
        ran = len(flight.claim)
        left = self.store.held(flight.claim)
        log.warning(
            "batch %s stopped by %s: %s (%d contexts left)",
            flight.label,
            error["type"],
            short_reason(Exception(error["message"])),
            len(left),
        )
        flight.claim = left
        failed, released, retries_left, retrying = 0, False, 0, False
        wait_seconds = policy.batch_retry_in(flight.retries)
        if not left.ids or self._stop.is_set():
            self._give_back(flight)
            released = True
        elif wait_seconds is None:
            failed = policy.failed_for_good(left.ids, error).write(self.store, left).written
            self.in_flight.remove(flight)
        else:
            flight.retries += 1
            flight.due = time.monotonic() + wait_seconds
            retries_left = policy.settings.batch_retries - flight.retries
            retrying = True
        self._observe(flight, critical=True, contexts=ran)  # after the database answered: told once
        event = BatchCritical(flight.seq, flight.label, error, len(left), retries_left, failed, released, retrying)
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
        self.in_flight.remove(flight)

    def _release_all(self) -> None:
        """Give back whatever this loop still holds (a second signal, stop(now=True), or an error)."""
        for flight in list(self.in_flight):
            self._give_back(flight)
        try:
            self.store.release_unanswered()
        except PyMongoError as exc:
            reason = short_reason(exc)
            log.warning("could not give back a claim the database did not answer (%s); its lease will expire", reason)
