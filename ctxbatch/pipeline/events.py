"""The loop's events, and the subscribers that listen to them (dramatiq's Middleware is the model).

A subscriber overrides the hooks it needs; the others do nothing. The loop calls every hook in its
own thread, between its turns, so a hook should be quick (hand slow work to a thread of its own).
A hook that raises is logged with its traceback and skipped; the run goes on.

| hook                    | event             | when                                                   |
|-------------------------|-------------------|--------------------------------------------------------|
| on_run_started          | RunStarted        | the cluster is up, before the first claim              |
| on_sizing_decision      | SizingDecision    | the sizer planned the next batch                       |
| on_batch_claimed        | BatchClaimed      | a batch was claimed and its partitions submitted       |
| on_partition_finished   | PartitionFinished | a partition was written back (not one stopped)         |
| on_batch_finished       | BatchFinished     | every partition of a batch was written back            |
| on_batch_critical       | BatchCritical     | a critical error stopped a batch (retried or failed)   |
| on_engine_concurrency   | EngineConcurrency | a worker's limit on async calls in flight changed      |
| on_leases_reaped        | LeasesReaped      | expired leases (of any loop) were returned to the queue |
| on_run_finished         | RunFinished       | the run is over, its batches written or released       |
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ctxbatch.config import Settings
from ctxbatch.pipeline.report import RunReport
from ctxbatch.sizing import Decision, Observation, Plan, Readings

log = logging.getLogger("ctxbatch.pipeline")


@dataclass(frozen=True)
class RunStarted:
    owner: str  # the loop's lease owner, host:pid:random
    engine: str  # the engine's name
    settings: Settings
    dashboard_link: str | None  # the Dask dashboard, when it serves one
    report: RunReport  # the run's report, kept up to date while it runs


@dataclass(frozen=True)
class SizingDecision:
    decision: Decision  # size, partitions, reason and inputs (also in `report.decisions`)


@dataclass(frozen=True)
class BatchClaimed:
    seq: int  # the batch's number in this loop, from 1
    label: str  # `ctxbatch-<seq>-<token[:6]>`, the prefix of its Dask task names
    size: int  # contexts claimed (at most plan.size)
    token: str  # the lease token fencing its writes
    plan: Plan
    readings: Readings  # the load the plan was made from


@dataclass(frozen=True)
class PartitionFinished:
    """A partition written back: what the worker that ran it returned, passed on as it is."""

    seq: int
    label: str
    contexts: int = 0  # contexts the partition held when it loaded
    completed: int = 0
    retried: int = 0  # failed and pending again for a later try
    deferred: int = 0  # the engine said RetryLater: pending again, the try not counted (not a retry)
    failed: int = 0  # failed for good
    lost: int = 0  # no longer under this lease when written (another loop reaped them)
    seconds: float = 0.0  # engine wall time
    latency_seconds: tuple[float, ...] = ()  # per completed context: submitted -> written
    processing_seconds: tuple[float, ...] = ()  # per completed context: engine time
    worker: str = ""  # the address of the worker that ran it
    engine_concurrency: int | None = None  # that worker's limit on async calls in flight, when it ended
    # tokens of the results written, by kind (input, output, total), as their `usage` reported them
    usage: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchFinished:
    seq: int
    label: str
    contexts: int
    wall_seconds: float  # claim (or last retry) to written
    observation: Observation  # what the sizer was told


@dataclass(frozen=True)
class BatchCritical:
    seq: int
    label: str
    error: dict[str, Any]  # the critical error's record: type, message, traceback
    held: int  # contexts still under the lease when it stopped
    retries_left: int  # retries still allowed after this one; 0 when spent (the held contexts failed)
    failed: int  # contexts failed for good with this error
    released: bool  # given back to the queue (the loop is stopping) rather than retried
    retrying: bool = False  # held under the lease, to run again after a backoff (still in flight)


@dataclass(frozen=True)
class EngineConcurrency:
    """Each worker's limit on async engine calls in flight, as its partitions last reported it."""

    limits: dict[str, int]  # worker address -> calls in flight allowed
    auto: bool  # learnt (`engine_concurrency: auto`) rather than fixed

    @property
    def total(self) -> int:
        """The window: calls in flight allowed over the cluster."""
        return sum(self.limits.values())


@dataclass(frozen=True)
class LeasesReaped:
    count: int


@dataclass(frozen=True)
class RunFinished:
    report: RunReport


class Subscriber:
    """Listens to a run's events; override the hooks you need (each gets one event)."""

    def on_run_started(self, event: RunStarted) -> None:
        """The cluster is up; nothing is claimed yet."""

    def on_sizing_decision(self, event: SizingDecision) -> None:
        """The sizer chose the next batch's size and split."""

    def on_batch_claimed(self, event: BatchClaimed) -> None:
        """A batch was claimed and submitted."""

    def on_partition_finished(self, event: PartitionFinished) -> None:
        """A partition was written back."""

    def on_batch_finished(self, event: BatchFinished) -> None:
        """Every partition of a batch was written back."""

    def on_batch_critical(self, event: BatchCritical) -> None:
        """A critical error stopped a batch."""

    def on_engine_concurrency(self, event: EngineConcurrency) -> None:
        """A worker's limit on async calls in flight changed."""

    def on_leases_reaped(self, event: LeasesReaped) -> None:
        """Expired leases went back to the queue."""

    def on_run_finished(self, event: RunFinished) -> None:
        """The run is over."""


HOOKS = tuple(name for name in vars(Subscriber) if name.startswith("on_"))


def emit(subscribers: Iterable[Any], hook: str, event: object) -> None:
    """Call `hook` on each subscriber in order; one that raises is logged and skipped."""
    for subscriber in subscribers:
        method = getattr(subscriber, hook, None)
        if method is None:
            continue
        try:
            method(event)
        except Exception:  # a subscriber never stops the loop
            log.exception("subscriber %r raised in %s; going on", subscriber, hook)
