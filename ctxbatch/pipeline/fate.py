"""What happens next to a context: the one place that turns how its call ended into its next state.

| the call ended with                | next state                                                        |
|------------------------------------|-------------------------------------------------------------------|
| a result                           | completed                                                         |
| an exception, or a timeout         | pending again after `backoff_seconds[attempts]` while             |
|                                    | `context_retries` last, then failed                               |
| FailNow                            | failed at once, its retries unspent                               |
| RetryLater(after_seconds)          | pending again after that wait (or the backoff), the try counted   |
|                                    | as a deferral, not an attempt; failed once `max_deferrals` are    |
|                                    | spent, with the service's last answer                             |
| CriticalError, or a lost database, | the whole batch stops: held under its lease and run again after   |
| worker or cluster                  | `backoff_seconds[i]`, `batch_retries` times, then failed          |

`isolate.py` records how each row's call ended (a `Failure`); `RetryPolicy` decides; the store only
writes the decision (`NextStates.write` -> `ContextStore.settle`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distributed.comm.core import CommClosedError
from pymongo.errors import ConnectionFailure

from ctxbatch.config import RetrySettings
from ctxbatch.errors import CriticalError, DatabaseUnavailable, FailNow, RetryLater
from ctxbatch.io import Claim, ContextStore, WriteReport

# Not a row's fault: these stop the batch, whichever row raised them (the table's last line).
STOPS_THE_BATCH: tuple[type[BaseException], ...] = (
    CriticalError,
    DatabaseUnavailable,
    ConnectionFailure,
    CommClosedError,
)


@dataclass(frozen=True)
class Failure:
    """How one row's call failed, as far as its next state is concerned."""

    error: dict[str, Any]  # the row's error record: type, message, traceback (and response)
    final: bool = False  # FailNow: retrying cannot help
    deferred: bool = False  # RetryLater: the service said "not now", which is not the row's fault
    after_seconds: float | None = None  # the wait RetryLater asked for (None: the backoff)

    @classmethod
    def of(cls, exc: BaseException, error: dict[str, Any]) -> Failure:
        if isinstance(exc, RetryLater):
            return cls(error, deferred=True, after_seconds=exc.after_seconds)
        return cls(error, final=isinstance(exc, FailNow))


@dataclass(frozen=True)
class NextStates:
    """One partition's decision: what its contexts become, written by one fenced `settle`."""

    results: dict[str, Any] = field(default_factory=dict)  # completed, with these results
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)  # failed or rescheduled, with these errors
    retry_at: dict[str, dt.datetime | None] = field(default_factory=dict)  # per error: when again; None: for good
    deferred: frozenset[str] = frozenset()  # the rescheduled errors that are deferrals

    def write(self, store: ContextStore, claim: Claim) -> WriteReport:
        return store.settle(claim, self.results, self.errors, self.retry_at, deferred=self.deferred)

    def count(self, skip: Iterable[str] = ()) -> dict[str, int]:
        """completed, retried, deferred and failed (for good), leaving out `skip` (the contexts lost)."""
        lost = set(skip)
        again = [cid for cid, when in self.retry_at.items() if when is not None and cid not in lost]
        deferred = sum(1 for cid in again if cid in self.deferred)
        return {
            "completed": sum(1 for cid in self.results if cid not in lost),
            "retried": len(again) - deferred,
            "deferred": deferred,
            "failed": sum(1 for cid, when in self.retry_at.items() if when is None and cid not in lost),
        }


@dataclass(frozen=True)
class RetryPolicy:
    """`worker.retry` as decisions: what each row becomes, and what a batch stopped by a critical error does."""

    settings: RetrySettings

    def backoff(self, attempt: int) -> float:
        return self.settings.backoff(attempt)

    def next_states(
        self,
        results: Mapping[str, Any],
        failures: Mapping[str, Failure],
        attempts: Mapping[str, int],
        deferrals: Mapping[str, int],
        now: dt.datetime,
    ) -> NextStates:
        """Each row's next state, from its result or failure, its attempts and its earlier deferrals."""
        retry_at: dict[str, dt.datetime | None] = {}
        deferred = set()
        for cid, failure in failures.items():
            if failure.deferred:
                retry_at[cid] = self._defer_at(deferrals.get(cid, 0), failure.after_seconds, now)
                if retry_at[cid] is not None:
                    deferred.add(cid)  # deferred while deferrals last; then failed with the service's last answer
            elif failure.final:
                retry_at[cid] = None
            else:
                retry_at[cid] = self._retry_at(attempts[cid], now)
        errors = {cid: failure.error for cid, failure in failures.items()}
        return NextStates(dict(results), errors, retry_at, frozenset(deferred))

    def failed_for_good(self, ids: Iterable[str], error: dict[str, Any]) -> NextStates:
        """A batch whose critical error outlasted its retries: every context it holds fails with that error."""
        ids = list(ids)
        return NextStates(errors=dict.fromkeys(ids, error), retry_at=dict.fromkeys(ids))

    def batch_retry_in(self, retries_done: int) -> float | None:
        """Seconds before a batch stopped by a critical error runs again; None once its retries are spent."""
        if retries_done >= self.settings.batch_retries:
            return None
        return self.backoff(retries_done + 1)

    def _retry_at(self, attempts: int, now: dt.datetime) -> dt.datetime | None:
        if attempts > self.settings.context_retries:
            return None
        return now + dt.timedelta(seconds=self.backoff(attempts))

    def _defer_at(self, deferrals: int, after_seconds: float | None, now: dt.datetime) -> dt.datetime | None:
        if deferrals >= self.settings.max_deferrals:
            return None
        wait = self.backoff(deferrals + 1) if after_seconds is None else after_seconds
        return now + dt.timedelta(seconds=wait)
