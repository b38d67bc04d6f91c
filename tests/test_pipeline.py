"""The scheduler loop against the real embedded server and a real LocalCluster."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import Commands, small_run
from distributed import Client, get_task_stream

from ctxbatch import ContextStore, CtxbatchError, Pipeline, Subscriber
from ctxbatch.pipeline.cluster import check_reachable
from ctxbatch.pipeline.events import RunStarted, SizingDecision

CLUSTER = {"n_workers": 2}


def submit_numbered(store: ContextStore, count: int, **payload: Any) -> str:
    return store.submit([{"payload": {"i": i, **payload}} for i in range(count)])


def test_row_errors_are_isolated_to_their_rows(store: ContextStore, client: Client) -> None:
    # Given 20 contexts of which 3 make the engine raise, and no retries
    records = [{"payload": {"i": i, "bad": i in (3, 7, 11)}} for i in range(20)]
    batch_id = store.submit(records)
    # When the loop runs until the queue is empty
    report = Pipeline("tests.engines:fail_when_flagged", small_run(), store, client).run(until_empty=True)
    # Then the good rows completed and exactly the bad rows failed, each with its own error
    frame = store.results(batch_id)
    frame["i"] = frame.payload.map(lambda p: p["i"])
    failed = frame[frame.status == "failed"]
    assert sorted(failed.i) == [3, 7, 11]
    assert {e["type"] for e in failed.error} == {"ValueError"}
    assert all(f"bad row {i}" in e["message"] for i, e in zip(failed.i, failed.error, strict=True))
    assert (frame[frame.status == "completed"].attempts == 1).all()
    assert (report.completed, report.failed) == (17, 3)


@pytest.mark.parametrize("engine", ["tests.engines:async_fail_when_flagged", "tests.engines:batch_fail_when_flagged"])
def test_async_and_batch_engines_isolate_bad_rows(store: ContextStore, client: Client, engine: str) -> None:
    records = [{"payload": {"i": i, "bad": i % 6 == 0}} for i in range(24)]
    batch_id = store.submit(records)
    Pipeline(engine, small_run(batch_size=12), store, client).run(until_empty=True)
    frame = store.results(batch_id)
    bad = frame.payload.map(lambda p: p["bad"])
    assert (frame[bad].status == "failed").all()
    assert (frame[~bad].status == "completed").all()
    assert list(frame[~bad].result.map(lambda r: r["i"])) == list(frame[~bad].payload.map(lambda p: p["i"]))


def test_contexts_are_processed_most_urgent_first(store: ContextStore, client: Client, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    priorities = [50, 0, 100, 10, 5, 80, 0, 30]
    store.submit([{"payload": {"i": p, "calls_file": str(calls)}, "priority": p} for p in priorities])
    Pipeline("tests.engines:record_call", small_run(batch_size=1, max_parallel_batches=1), store, client).run(
        until_empty=True
    )
    assert [int(line) for line in calls.read_text().split()] == sorted(priorities)


def test_a_failed_row_is_retried_and_then_completes(store: ContextStore, client: Client, tmp_path: Path) -> None:
    batch_id = submit_numbered(store, 5, marker_dir=str(tmp_path))
    report = Pipeline("tests.engines:fail_first_attempt", small_run(retry={"context_retries": 2}), store, client).run(
        until_empty=True
    )
    frame = store.results(batch_id)
    assert (frame.status == "completed").all()
    assert (frame.attempts == 2).all()
    assert frame.error.isna().all()
    assert (report.retried, report.completed) == (5, 5)


def test_a_row_fails_for_good_once_its_retries_are_spent(store: ContextStore, client: Client) -> None:
    batch_id = store.submit([{"payload": {"i": 1, "bad": True}}])
    Pipeline("tests.engines:fail_when_flagged", small_run(retry={"context_retries": 2}), store, client).run(
        until_empty=True
    )
    row = store.results(batch_id).iloc[0]
    assert row.status == "failed"
    assert row.attempts == 3
    assert row.error["type"] == "ValueError"


def test_a_critical_error_retries_the_batch_which_then_completes(
    store: ContextStore, client: Client, tmp_path: Path
) -> None:
    batch_id = submit_numbered(store, 8, marker_dir=str(tmp_path))
    report = Pipeline("tests.engines:critical_first_time", small_run(batch_size=8), store, client).run(until_empty=True)
    frame = store.results(batch_id)
    assert (frame.status == "completed").all()
    assert report.critical == 1
    # A batch stopped by a critical error is not a try of its rows.
    assert (frame.attempts == 1).all()


def test_a_result_that_cannot_be_stored_fails_only_its_row(store: ContextStore, client: Client) -> None:
    batch_id = store.submit([{"payload": {"i": 1}}])
    Pipeline("tests.engines:unstorable", small_run(), store, client).run(until_empty=True)
    row = store.results(batch_id).iloc[0]
    assert row.status == "failed"
    assert row.error["type"] == "UnstorableResult"


def test_max_contexts_stops_claiming(store: ContextStore, client: Client) -> None:
    submit_numbered(store, 30)
    report = Pipeline("tests.engines:echo", small_run(batch_size=10), store, client).run(max_contexts=15)
    assert report.claimed == 15
    assert store.status_counts()["completed"] == 15
    assert store.status_counts()["pending"] == 15


def test_cancelled_contexts_are_not_processed_and_retry_requeues_failures(store: ContextStore, client: Client) -> None:
    cancelled = submit_numbered(store, 5)
    failing = store.submit([{"payload": {"i": i, "bad": True}} for i in range(3)])
    assert store.cancel(cancelled) == 5
    pipeline = Pipeline("tests.engines:fail_when_flagged", small_run(), store, client)
    pipeline.run(until_empty=True)
    assert store.batch_status(cancelled)["status"] == "cancelled"
    assert store.batch_status(failing)["counts"]["failed"] == 3
    assert store.retry(failing) == 3
    assert store.batch_status(failing)["counts"]["pending"] == 3
    assert set(store.results(failing).attempts) == {0}


def test_partition_tasks_are_named_for_the_dashboard(store: ContextStore, client: Client) -> None:
    submit_numbered(store, 20)
    with get_task_stream(client) as stream:
        Pipeline("tests.engines:echo", small_run(batch_size=20), store, client).run(until_empty=True)
    names = {task["key"][0] if isinstance(task["key"], tuple) else task["key"] for task in stream.data}
    assert any(name.startswith("ctxbatch-") and "-partition" in name for name in names)


def test_payloads_do_not_travel_through_the_loop(watched: ContextStore, commands: Commands, client: Client) -> None:
    # Given a loop whose own MongoClient is watched (workers open their own clients)
    submit_numbered(watched, 30, text="x" * 100)
    Pipeline("tests.engines:echo", small_run(batch_size=10), watched, client).run(until_empty=True)
    assert watched.status_counts()["completed"] == 30
    # Then every find the loop issued projected ids and bookkeeping only, never payloads
    projections = [find.get("projection") for find in commands.on("find")]
    assert projections
    assert all(p is not None and "payload" not in p for p in projections)


def test_a_loopback_database_is_refused_for_a_remote_cluster() -> None:
    with pytest.raises(CtxbatchError, match="cannot reach"):
        check_reachable("mongodb://127.0.0.1:27017", "tcp://10.1.2.3:8786")
    check_reachable("mongodb://127.0.0.1:27017", "tcp://127.0.0.1:8786")
    check_reachable("mongodb://db.internal:27017", "tcp://10.1.2.3:8786")


def test_adaptive_scaling_grows_the_owned_cluster_for_a_long_queue(store: ContextStore) -> None:
    # Given a queue that one worker would take many target durations to drain
    submit_numbered(store, 400, sleep=0.01)
    settings = small_run(batch_size=20, target_batch_seconds=0.1, max_parallel_batches=1)
    settings["dask"].update(processes=False, n_workers=1, adaptive={"minimum": 1, "maximum": 2})
    # When the loop runs on a LocalCluster of its own
    pipeline = Pipeline("tests.engines:nap", settings, store)
    report = pipeline.run(max_contexts=100)
    # Then it asked for the most workers its bounds allow, and scaled its cluster to them
    assert report.wanted_workers == 2
    assert report.scaled_to == 2


def test_a_batch_whose_retries_are_spent_fails_with_the_critical_error(store: ContextStore, client: Client) -> None:
    batch_id = submit_numbered(store, 4)
    report = Pipeline("tests.engines:always_critical", small_run(retry={"batch_retries": 2}), store, client).run(
        until_empty=True
    )
    frame = store.results(batch_id)
    assert (frame.status == "failed").all()
    assert {e["type"] for e in frame.error} == {"CriticalError"}
    assert report.critical == 3  # the first run and two retries


class _Planned(Subscriber):
    """Tells when the loop planned a batch, and how many contexts it had claimed by then."""

    def __init__(self) -> None:
        self.planned = threading.Event()
        self.claimed_then: int | None = None
        self._report: Any = None

    def on_run_started(self, event: RunStarted) -> None:
        self._report = event.report

    def on_sizing_decision(self, event: SizingDecision) -> None:
        self.claimed_then = self._report.claimed
        self.planned.set()


def test_a_loop_waits_for_a_full_batch_up_to_the_timeout(store: ContextStore, client: Client) -> None:
    # Given 4 of the 10 contexts a batch holds, and a generous timeout to fill it
    submit_numbered(store, 4)
    planned = _Planned()
    pipeline = Pipeline(
        "tests.engines:echo", small_run(batch_size=10, batch_timeout_seconds=30), store, client, subscribers=[planned]
    )
    running = threading.Thread(target=pipeline.run, kwargs={"max_contexts": 10})
    running.start()
    # When the other 6 arrive after the loop saw the 4 and planned a batch of 10, claiming nothing
    assert planned.planned.wait(timeout=60)
    assert planned.claimed_then == 0
    submit_numbered(store, 6)
    running.join(timeout=60)
    # Then one full batch took all ten
    assert not running.is_alive()
    assert (pipeline.report.batches, pipeline.report.completed) == (1, 10)


def test_a_run_with_many_failures_fires_the_success_rate_alert_once(
    store: ContextStore, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    # Given half the contexts failing for good, and the default rules evaluated often
    store.submit([{"payload": {"i": i, "bad": i % 2 == 0}} for i in range(200)])
    settings = {**small_run(batch_size=50), "monitoring": {"evaluate_every_seconds": 0.2}}
    settings["monitoring"]["alerts"] = [{"name": "CtxbatchSuccessRateLow", "metric": "success_rate", "below": 0.9}]
    with caplog.at_level("WARNING", logger="ctxbatch.monitoring"):
        Pipeline("tests.engines:fail_when_flagged", settings, store, client).run(until_empty=True)
    # Then one line says so, with the rate the database showed then: half of what had finished,
    # give or take the partitions settled at that moment (each settles on its own)
    alerts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alert firing:")]
    assert len(alerts) == 1, alerts
    line = r"alert firing: CtxbatchSuccessRateLow \(warning\): success_rate = ([\d.]+), below 0\.9"
    fired = re.fullmatch(line, alerts[0])
    assert fired and 0.3 <= float(fired[1]) <= 0.7, alerts


def test_a_progress_hook_that_raises_does_not_stop_the_run(store: ContextStore, client: Client) -> None:
    calls: list[int] = []

    def hook(report: Any) -> None:
        calls.append(report.completed)
        raise RuntimeError("a broken hook")

    submit_numbered(store, 20)
    report = Pipeline("tests.engines:echo", small_run(), store, client, on_progress=hook).run(until_empty=True)
    assert report.completed == 20
    assert calls


def test_an_empty_run_until_empty_starts_no_cluster(store: ContextStore) -> None:
    # Given an empty queue and a scheduler address nothing listens on (connecting would fail)
    settings = small_run()
    settings["dask"]["scheduler_address"] = "tcp://127.0.0.1:1"
    # When the loop runs until the queue is empty without a client of its own
    report = Pipeline("tests.engines:echo", settings, store).run(until_empty=True)
    # Then it stops at once, having connected to no cluster
    assert report.stopped_by == "empty"
    assert report.claimed == 0
