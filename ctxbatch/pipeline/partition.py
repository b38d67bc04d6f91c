"""The graph of a claimed batch, and what runs on a worker for each of its partitions.

Per partition, two tasks: `<label>-load-<run>` reads the contexts its part of the claim still holds
(fenced by the lease token), and `<label>-partition-<run>` runs the engine over them, isolated per
row, and writes the outcome back in one fenced bulk write. The loop's process only ever holds ids;
payloads travel from MongoDB to a worker and results back, never through the loop.
"""

from __future__ import annotations

import datetime as dt
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from distributed import Client, Future

from ctxbatch.config import RetrySettings, backoff_after
from ctxbatch.errors import CriticalError
from ctxbatch.io import Claim, ContextStore, error_record, utcnow
from ctxbatch.io.schema import epoch_ms
from ctxbatch.pipeline.calls import WorkerCalls
from ctxbatch.pipeline.engine import Engine
from ctxbatch.pipeline.isolate import run_partition
from ctxbatch.pipeline.worker import worker_resources

COUNTS = ("completed", "retried", "failed", "lost", "deferred")
CREATED_MS = "ctxbatch_created_ms"
DEFERRALS = "ctxbatch_deferrals"


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed context runs again: `backoff_seconds[attempt]`, or never once retries are spent."""

    context_retries: int
    backoff_seconds: tuple[float, ...]
    max_deferrals: int = 20

    @classmethod
    def of(cls, retry: RetrySettings) -> RetryPolicy:
        return cls(retry.context_retries, tuple(retry.backoff_seconds), retry.max_deferrals)

    def retry_at(self, attempts: int, now: dt.datetime) -> dt.datetime | None:
        if attempts > self.context_retries:
            return None
        return now + dt.timedelta(seconds=backoff_after(self.backoff_seconds, attempts))

    def defer_at(self, deferrals: int, after_seconds: float | None, now: dt.datetime) -> dt.datetime | None:
        """When a context deferred `deferrals` times before may run again; None once deferrals are spent."""
        if deferrals >= self.max_deferrals:
            return None
        wait = backoff_after(self.backoff_seconds, deferrals + 1) if after_seconds is None else after_seconds
        return now + dt.timedelta(seconds=wait)


@dataclass(frozen=True)
class PartitionJob:
    """What every partition of a batch needs besides its part of the claim; shipped to the workers."""

    engine: Engine
    uri: str
    database: str
    policy: RetryPolicy
    concurrency: int
    timeout: float | None = None
    rate: float | None = None  # this batch's share per worker of worker.rate_limit_per_second
    adaptive: tuple[int, int] | None = None  # (min, max) with engine_concurrency: auto


def summary(
    contexts: int = 0,
    seconds: float = 0.0,
    critical: dict[str, str] | None = None,
    latency_seconds: list[float] | None = None,
    processing_seconds: list[float] | None = None,
    **counts: int,
) -> dict[str, Any]:
    """One partition's outcome, as the loop reads it: counts, engine seconds, and a critical error if any.

    With, per completed context, its latency (submitted -> written) and engine seconds: a few
    floats per context for the loop's histograms, never a payload.
    """
    return {
        "contexts": contexts, **dict.fromkeys(COUNTS, 0), **counts, "seconds": seconds, "critical": critical,
        "latency_seconds": latency_seconds or [], "processing_seconds": processing_seconds or [],
    }  # fmt: skip


def submit_batch(
    client: Client, claim: Claim, partitions: int, label: str, run: int, job: PartitionJob
) -> list[Future]:
    """Submit the claim as `partitions` load -> process pairs; the futures of the process tasks."""
    parts = claim.split(partitions)
    futures = []
    for i, part in enumerate(parts):
        loaded = client.submit(load_partition, part, job, key=(f"{label}-load-{run}", i))
        futures.append(client.submit(process_partition, loaded, part, job, key=(f"{label}-partition-{run}", i)))
    return futures


def load_partition(claim: Claim, job: PartitionJob) -> pd.DataFrame:
    """The payloads of this part of the claim that its lease still holds, as the engine's DataFrame."""
    return as_frame(worker_resources().store(job.uri, job.database).load(claim))


def as_frame(held: list[dict[str, Any]]) -> pd.DataFrame:
    """Stored contexts as the DataFrame engines get: id, payload, priority, attempts.

    When each was submitted rides along in `attrs` (not a column engines would see), for the
    latency of each completed context.
    """
    frame = pd.DataFrame(
        {
            "id": pd.Series([d["_id"] for d in held], dtype=object),
            "payload": pd.Series([d.get("payload") for d in held], dtype=object),
            "priority": pd.Series([d["priority"] for d in held], dtype="int64"),
            "attempts": pd.Series([d["attempts"] for d in held], dtype="int64"),
        }
    )
    frame.attrs[CREATED_MS] = {d["_id"]: epoch_ms(d["created_at"]) for d in held if "created_at" in d}
    frame.attrs[DEFERRALS] = {d["_id"]: int(d["deferrals"]) for d in held if d.get("deferrals")}
    return frame


def process_partition(frame: pd.DataFrame, claim: Claim, job: PartitionJob) -> dict[str, Any]:
    """Run the engine over one partition with this worker's resources and write its outcome back."""
    resources = worker_resources()
    return process_with(resources.store(job.uri, job.database), resources.ready, frame, claim, job, resources.calls)


def process_with(
    store: ContextStore,
    ready: Callable[[Engine], Engine],
    frame: pd.DataFrame,
    claim: Claim,
    job: PartitionJob,
    calls: WorkerCalls | None = None,
) -> dict[str, Any]:
    """The engine (made `ready` first) over one partition, then one fenced write back; returns its summary.

    A CriticalError is returned in the summary rather than raised, so the loop can stop and retry
    the batch without Dask logging it as a crashed task.
    """
    if frame.empty:
        return summary()
    try:
        outcome = run_partition(ready(job.engine), frame, job.concurrency, job.timeout, calls, job.rate, job.adaptive)
    except CriticalError as exc:
        return summary(len(frame), critical=error_record(exc, "".join(traceback.format_exception(exc, limit=5))))
    attempts = {cid: int(n) for cid, n in zip(frame["id"], frame["attempts"], strict=True)}
    now = utcnow()
    retry_at = {
        cid: None if cid in outcome.final else job.policy.retry_at(attempts[cid], now) for cid in outcome.errors
    }
    deferrals = frame.attrs.get(DEFERRALS, {})
    deferred = set()
    for cid, after in outcome.deferred.items():
        # Deferred while deferrals last; then failed for good with the service's last answer.
        retry_at[cid] = job.policy.defer_at(deferrals.get(cid, 0), after, now)
        if retry_at[cid] is not None:
            deferred.add(cid)
    written = store.settle(claim, outcome.results, outcome.errors, retry_at, deferred=deferred)
    lost = set(written.lost)
    done = [cid for cid in outcome.results if cid not in lost]
    created, now_ms = frame.attrs.get(CREATED_MS, {}), epoch_ms(utcnow())
    return summary(
        len(frame),
        seconds=outcome.seconds,
        latency_seconds=[max(now_ms - created[cid], 0) / 1000 for cid in done if cid in created],
        processing_seconds=[outcome.row_seconds[cid] for cid in done if cid in outcome.row_seconds],
        completed=sum(1 for cid in outcome.results if cid not in lost),
        retried=sum(1 for cid, when in retry_at.items() if when is not None and cid not in lost),
        failed=sum(1 for cid, when in retry_at.items() if when is None and cid not in lost),
        lost=len(lost),
        deferred=sum(1 for cid in deferred if cid not in lost),
    )
