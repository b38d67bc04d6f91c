"""The graph of a claimed batch, and what runs on a worker for each of its partitions.

Per partition, two tasks: `<label>-load-<run>` reads the contexts its part of the claim still holds
(fenced by the lease token), and `<label>-partition-<run>` runs the engine over them, isolated per
row, and writes the outcome back in one fenced bulk write. The loop's process only ever holds ids;
payloads travel from MongoDB to a worker and results back, never through the loop.

An async engine's partition leaves the worker's thread pool while it runs (`distributed.secede`): it
only waits on the worker's event loop, and holding a thread would keep the worker's next partition
queued behind this one's slowest call, so the worker's limit on calls in flight drained at the end of
every partition. Seceded, all the partitions a worker holds feed its one gate of calls at once.

A database outage stops no partition (issue 20, item 5): its load and its write are tried again
until the database is back, for up to `mongo.outage_seconds`, so the results it computed meanwhile
are written then, under its lease if that still holds (the fence decides; what it lost is reported
lost), rather than dropped and paid for again. What waits is only the partitions in flight, each
holding its own outcome (the memory it held anyway: nothing new is claimed while the database is
away); past the bound the partition fails as before and its batch is retried.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd
from distributed import Client, Future, get_worker, secede

from ctxbatch.config import OUTAGE_SECONDS, LimitsSettings
from ctxbatch.errors import CriticalError
from ctxbatch.io import Claim, ContextStore, error_record, utcnow
from ctxbatch.io.outage import ride_out
from ctxbatch.io.schema import epoch_ms
from ctxbatch.pipeline.calls import WorkerCalls
from ctxbatch.pipeline.engine import Engine
from ctxbatch.pipeline.events import PartitionFinished
from ctxbatch.pipeline.fate import RetryPolicy
from ctxbatch.pipeline.isolate import run_partition
from ctxbatch.pipeline.worker import worker_resources


@dataclass(frozen=True)
class PartitionJob:
    """What every partition of a batch needs besides its part of the claim; shipped to the workers."""

    engine: Engine
    uri: str
    database: str
    policy: RetryPolicy
    concurrency: int
    timeout: float | None = None
    limits: LimitsSettings = field(default_factory=LimitsSettings)  # shared by every loop (Settings.shared_limits)
    adaptive: tuple[int, int] | None = None  # (min, max) with engine_concurrency: auto
    engine_key: str = ""  # the engine's fingerprint, computed once where the job is built
    outage_seconds: float = OUTAGE_SECONDS  # a load or write waits out the database this long


@dataclass(frozen=True)
class PartitionStopped:
    """A partition whose engine raised what stops the batch (a CriticalError): nothing of it was written."""

    contexts: int
    error: dict[str, Any]


@dataclass(frozen=True)
class Loaded:
    """A partition as loaded: the engine's DataFrame, and what the write back needs of each context."""

    frame: pd.DataFrame  # id, payload, priority, attempts: what engines get
    created_ms: dict[str, int]  # when each was submitted, for the latency of each completed context
    deferrals: dict[str, int]  # RetryLater deferrals so far, of those deferred before

    @classmethod
    def of(cls, held: list[dict[str, Any]]) -> Loaded:
        return cls(
            as_frame(held),
            {d["_id"]: epoch_ms(d["created_at"]) for d in held if "created_at" in d},
            {d["_id"]: int(d["deferrals"]) for d in held if d.get("deferrals")},
        )


def submit_batch(
    client: Client, claim: Claim, partitions: int, seq: int, label: str, run: int, job: PartitionJob
) -> list[Future]:
    """Submit the claim as `partitions` load -> process pairs; the futures of the process tasks."""
    parts = claim.split(partitions)
    futures = []
    for i, part in enumerate(parts):
        loaded = client.submit(load_partition, part, job, key=(f"{label}-load-{run}", i))
        processed = client.submit(process_partition, loaded, part, job, seq, label, key=(f"{label}-partition-{run}", i))
        futures.append(processed)
    return futures


def load_partition(claim: Claim, job: PartitionJob) -> Loaded:
    """The contexts of this part of the claim that its lease still holds (the database waited for)."""
    store = worker_resources().store(job.uri, job.database)
    return Loaded.of(ride_out(store, lambda: store.load(claim), job.outage_seconds, f"loading {len(claim)} contexts"))


def as_frame(held: list[dict[str, Any]]) -> pd.DataFrame:
    """Stored contexts as the DataFrame engines get: id, payload, priority, attempts."""
    return pd.DataFrame(
        {
            "id": pd.Series([d["_id"] for d in held], dtype=object),
            "payload": pd.Series([d.get("payload") for d in held], dtype=object),
            "priority": pd.Series([d["priority"] for d in held], dtype="int64"),
            "attempts": pd.Series([d["attempts"] for d in held], dtype="int64"),
        }
    )


def process_partition(
    loaded: Loaded, claim: Claim, job: PartitionJob, seq: int, label: str
) -> PartitionFinished | PartitionStopped:
    """Run the engine over one partition with this worker's resources and write its outcome back."""
    resources = worker_resources()
    store = resources.store(job.uri, job.database)
    if job.engine.kind == "async" and not loaded.frame.empty:
        secede()  # see the module's note
    ready = functools.partial(resources.ready, key=job.engine_key)
    finished = process_with(store, ready, loaded, claim, job, resources.calls, seq, label)
    if isinstance(finished, PartitionStopped):
        return finished
    return replace(finished, worker=get_worker().address, engine_concurrency=resources.calls.limit)


def process_with(
    store: ContextStore,
    ready: Callable[[Engine], Engine],
    loaded: Loaded,
    claim: Claim,
    job: PartitionJob,
    calls: WorkerCalls | None = None,
    seq: int = 0,
    label: str = "",
) -> PartitionFinished | PartitionStopped:
    """The engine (made `ready` first) over one partition, then one fenced write back.

    A CriticalError is returned (PartitionStopped) rather than raised, so the loop can stop and
    retry the batch without Dask logging it as a crashed task.
    """
    frame = loaded.frame
    if frame.empty:
        return PartitionFinished(seq, label)
    limit = calls.shared_limit(store.limits, job.limits) if calls else None
    try:
        outcome = run_partition(ready(job.engine), frame, job.concurrency, job.timeout, calls, limit, job.adaptive)
    except CriticalError as exc:
        return PartitionStopped(len(frame), error_record(exc, "".join(traceback.format_exception(exc, limit=5))))
    attempts = {cid: int(n) for cid, n in zip(frame["id"], frame["attempts"], strict=True)}
    decided = job.policy.next_states(outcome.results, outcome.failures, attempts, loaded.deferrals, utcnow())
    # Paid for: kept through an outage and written when the database is back (see the module's note).
    what = f"writing {len(frame)} outcomes"
    report = ride_out(store, functools.partial(decided.write, store, claim), job.outage_seconds, what)
    lost = set(report.lost)
    done = [cid for cid in outcome.results if cid not in lost]
    now_ms, created = epoch_ms(utcnow()), loaded.created_ms
    counts = decided.count(skip=lost)
    return PartitionFinished(
        seq,
        label,
        contexts=len(frame),
        completed=counts["completed"],
        retried=counts["retried"],
        deferred=counts["deferred"],
        failed=counts["failed"],
        lost=len(lost),
        seconds=outcome.seconds,
        # A few floats per completed context for the loop's histograms, never a payload.
        latency_seconds=tuple(max(now_ms - created[cid], 0) / 1000 for cid in done if cid in created),
        processing_seconds=tuple(outcome.row_seconds[cid] for cid in done if cid in outcome.row_seconds),
        usage=report.usage,
    )
