"""fate.py: how each way a row's call ends becomes its next state (the store only writes it)."""

from __future__ import annotations

import datetime as dt

from ctxbatch.config import RetrySettings
from ctxbatch.errors import FailNow, RetryLater
from ctxbatch.pipeline.fate import Failure, RetryPolicy

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
ERROR = {"type": "E", "message": "m", "traceback": ""}


def policy(**retry: object) -> RetryPolicy:
    return RetryPolicy(RetrySettings.model_validate({"backoff_seconds": [5, 15], **retry}))


def test_each_way_a_call_ends_has_its_next_state() -> None:
    # Given one row of each kind, each on its second attempt, with one retry allowed
    failures = {
        "error": Failure.of(ValueError("bad"), ERROR),
        "timeout": Failure.of(TimeoutError("slow"), ERROR),
        "fail-now": Failure.of(FailNow("no"), ERROR),
        "later": Failure.of(RetryLater(42, "busy"), ERROR),
        "later-backoff": Failure.of(RetryLater(None, "busy"), ERROR),
        "spent": Failure.of(ValueError("bad"), ERROR),
    }
    attempts = {"error": 1, "timeout": 1, "fail-now": 1, "later": 1, "later-backoff": 1, "spent": 2}
    deferrals = {"later-backoff": 1}
    decided = policy(context_retries=1).next_states({"ok": 1}, failures, attempts, deferrals, NOW)
    # Then a result completes; an error and a timeout run again after the backoff of their attempt
    assert decided.results == {"ok": 1}
    assert decided.retry_at["error"] == decided.retry_at["timeout"] == NOW + dt.timedelta(seconds=5)
    # And FailNow and an error past its retries fail for good
    assert decided.retry_at["fail-now"] is None and decided.retry_at["spent"] is None
    # And RetryLater runs again after the wait it asked for, or the backoff of its deferrals, as a deferral
    assert decided.retry_at["later"] == NOW + dt.timedelta(seconds=42)
    assert decided.retry_at["later-backoff"] == NOW + dt.timedelta(seconds=15)
    assert decided.deferred == {"later", "later-backoff"}
    assert decided.count() == {"completed": 1, "retried": 2, "deferred": 2, "failed": 2}


def test_a_row_deferred_past_max_deferrals_fails_for_good() -> None:
    failures = {"c": Failure.of(RetryLater(0, "busy"), ERROR)}
    decided = policy(max_deferrals=2).next_states({}, failures, {"c": 1}, {"c": 2}, NOW)
    assert (decided.retry_at, decided.deferred) == ({"c": None}, frozenset())
    assert decided.count(skip=["c"]) == {"completed": 0, "retried": 0, "deferred": 0, "failed": 0}


def test_a_batch_stopped_by_a_critical_error_runs_again_until_its_retries_are_spent() -> None:
    retries = policy(batch_retries=2)
    assert [retries.batch_retry_in(done) for done in range(3)] == [5, 15, None]
    spent = retries.failed_for_good(["a", "b"], ERROR)
    assert (spent.errors, spent.retry_at) == ({"a": ERROR, "b": ERROR}, {"a": None, "b": None})
