"""What runs on a Dask worker for one partition: the engine, isolated per row, then one fenced write."""

from __future__ import annotations

import datetime as dt
import json
import traceback
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ctxbatch.errors import CriticalError
from ctxbatch.io.claims import Claim
from ctxbatch.io.frames import shared_store
from ctxbatch.io.schema import error_record, utcnow
from ctxbatch.pipeline.engine import Engine
from ctxbatch.pipeline.isolate import run_partition

SUMMARY_META = pd.DataFrame(
    {
        "contexts": pd.Series([], dtype="int64"),
        "completed": pd.Series([], dtype="int64"),
        "retried": pd.Series([], dtype="int64"),
        "failed": pd.Series([], dtype="int64"),
        "lost": pd.Series([], dtype="int64"),
        "seconds": pd.Series([], dtype="float64"),
        "critical": pd.Series([], dtype=object),
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed context runs again: `backoff_seconds[attempt]`, or never once retries are spent."""

    context_retries: int
    backoff_seconds: tuple[float, ...]

    def retry_at(self, attempts: int, now: dt.datetime) -> dt.datetime | None:
        if attempts > self.context_retries:
            return None
        index = min(max(attempts, 1), len(self.backoff_seconds)) - 1
        return now + dt.timedelta(seconds=self.backoff_seconds[index])


def _summary(contexts: int = 0, seconds: float = 0.0, critical: str | None = None, **counts: int) -> pd.DataFrame:
    row: dict[str, Any] = {"contexts": contexts, "completed": 0, "retried": 0, "failed": 0, "lost": 0}
    row.update(counts, seconds=seconds, critical=critical)
    return pd.DataFrame([row]).astype(SUMMARY_META.dtypes.to_dict())


def process_partition(
    frame: pd.DataFrame,
    *,
    engine: Engine,
    claim: Claim,
    uri: str,
    database: str,
    policy: RetryPolicy,
    concurrency: int,
) -> pd.DataFrame:
    """Run the engine over one partition and write its outcome back; returns a one-row summary.

    A CriticalError is returned in the summary rather than raised, so the loop can stop and
    retry the batch without Dask logging it as a crashed task.
    """
    if frame.empty:
        return _summary()
    try:
        outcome = run_partition(engine, frame, concurrency)
    except CriticalError as exc:
        record = error_record(exc, "".join(traceback.format_exception(exc, limit=5)))
        return _summary(len(frame), critical=json.dumps(record))
    attempts = {cid: int(n) for cid, n in zip(frame["id"], frame["attempts"], strict=True)}
    now = utcnow()
    retry_at = {cid: policy.retry_at(attempts[cid], now) for cid in outcome.errors}
    part = Claim(claim.token, claim.owner, claim.expires_at, list(attempts), attempts, claim.batch_ids)
    report = shared_store(uri, database).settle(part, outcome.results, outcome.errors, retry_at)
    lost = set(report.lost)
    return _summary(
        len(frame),
        seconds=outcome.seconds,
        completed=sum(1 for cid in outcome.results if cid not in lost),
        retried=sum(1 for cid, when in retry_at.items() if when is not None and cid not in lost),
        failed=sum(1 for cid, when in retry_at.items() if when is None and cid not in lost),
        lost=len(lost),
    )
