"""Engines that call a real local HTTP service: RetryLater defers a context without spending its
retries; `worker.context_timeout_seconds` bounds a call."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from distributed import Client
from service_app import Script, serve

from ctxbatch import ContextStore
from ctxbatch.pipeline import Pipeline
from ctxbatch.pipeline.isolate import run_partition
from ctxbatch.pipeline.partition import as_frame

CLUSTER = {"n_workers": 2}
FAST: dict[str, Any] = {
    "worker": {
        "batch_size": 10,
        "dynamic_batch_sizing": False,
        "max_parallel_batches": 2,
        "batch_timeout_seconds": 0,
        "lease_seconds": 30,
        "retry": {"batch_retries": 2, "backoff_seconds": [0], "context_retries": 1},
    },
    "dask": {"dashboard_address": None},
}


def config(**retry: Any) -> dict[str, Any]:
    settings = copy.deepcopy(FAST)
    settings["worker"]["retry"].update(retry)
    return settings


@pytest.mark.parametrize(
    "engine", ["tests.engines:call_service", "tests.engines:async_call_service", "tests.engines:batch_call_service"]
)
def test_a_service_that_says_retry_later_defers_contexts_without_spending_retries(
    store: ContextStore, client: Client, engine: str
) -> None:
    # Given a service that answers 429 + Retry-After: 1 to the first two calls for every payload,
    # and one retry per context (two 429s would fail a context if they counted as failures)
    script = Script(busy_first=2, retry_after="1")
    with serve(script) as url:
        batch = store.submit([{"payload": {"i": i, "url": url}} for i in range(20)])
        # When the loop runs until the queue is empty
        report = Pipeline(engine, config(), store, client).run(until_empty=True)
    # Then every context completed, deferred twice, its retries unspent
    assert (report.completed, report.failed) == (20, 0)
    docs = list(store.contexts.find({"batch_id": batch}))
    assert {(d["status"], d["attempts"], d["deferrals"]) for d in docs} == {("completed", 1, 2)}
    # And the service saw three calls per payload, each 429 honoured rather than hammered
    assert set(script.calls.values()) == {3}


def test_a_context_deferred_past_max_deferrals_fails_with_the_last_reason(store: ContextStore, client: Client) -> None:
    # Given a service that always answers 429, and at most two deferrals per context
    with serve(Script(busy_first=1_000, retry_after="0")) as url:
        batch = store.submit([{"payload": {"i": i, "url": url}} for i in range(5)])
        report = Pipeline("tests.engines:call_service", config(max_deferrals=2), store, client).run(until_empty=True)
    # Then each context failed after two deferrals, with RetryLater as its error, its retries unspent
    assert report.failed == 5
    docs = list(store.contexts.find({"batch_id": batch}))
    assert {(d["status"], d["attempts"], d["deferrals"], d["error"]["type"]) for d in docs} == {
        ("failed", 1, 2, "RetryLater")
    }


@pytest.mark.parametrize("engine", ["tests.engines:call_service", "tests.engines:async_call_service"])
def test_a_call_that_hangs_fails_its_context_with_a_timeout_and_the_others_complete(
    store: ContextStore, client: Client, engine: str
) -> None:
    # Given a service that never answers payload 3, and a timeout of half a second per call
    settings = config()
    settings["worker"]["context_timeout_seconds"] = 0.5
    with serve(Script(hang_on=3)) as url:
        batch = store.submit([{"payload": {"i": i, "url": url}} for i in range(10)])
        report = Pipeline(engine, settings, store, client).run(until_empty=True)
        # Then that context failed with a TimeoutError after its retry, and the others completed
        assert (report.completed, report.failed) == (9, 1)
        (hung,) = store.contexts.find({"batch_id": batch, "status": "failed"})
    assert (hung["payload"]["i"], hung["error"]["type"], hung["attempts"]) == (3, "TimeoutError", 2)
    assert "context_timeout_seconds" in hung["error"]["message"]
    # And the abandoned call, answered once the service stopped, wrote nothing
    assert "result" not in store.contexts.find_one({"_id": hung["_id"]})


def test_a_batch_engine_past_the_timeout_fails_its_partition_with_a_timeout() -> None:
    # Given a batch engine whose service never answers one row of the partition
    with serve(Script(hang_on=1)) as url:
        frame = as_frame(
            [{"_id": f"c{i}", "payload": {"i": i, "url": url}, "priority": 0, "attempts": 1} for i in range(4)]
        )
        outcome = run_partition("tests.engines:batch_call_service", frame, timeout=0.5)
    # Then every row of the partition failed with a TimeoutError, without bisecting
    assert outcome.results == {}
    assert {e["type"] for e in outcome.errors.values()} == {"TimeoutError"}
    assert len(outcome.errors) == 4
