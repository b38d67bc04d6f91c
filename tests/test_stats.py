"""store.stats() and store.timeline(): figures read from the documents, equal to ones worked out by hand."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import finished_at, settled_burst

from ctxbatch import BatchNotFound
from ctxbatch.io import ContextStore, Stats, utcnow
from ctxbatch.io.schema import epoch_ms
from ctxbatch.io.stats import percentiles

ERROR = {"type": "ValueError", "message": "bad", "traceback": ""}


def settle_by_two_loops(store: ContextStore, batch_id: str) -> None:
    """Two loops share the queue: one completes what it claims, the other fails one and retries one."""
    first = store.claim(4, "loop-a")
    store.complete(first, dict.fromkeys(first.ids, "ok"))
    second = store.claim(4, "loop-b")
    retried, failed, *done = second.ids
    store.settle(
        second,
        results=dict.fromkeys(done, "ok"),
        errors={retried: ERROR, failed: ERROR},
        retry_at={retried: utcnow(), failed: None},
    )
    again = store.claim(1, "loop-a")
    assert again.ids == [retried]
    store.complete(again, {retried: "ok"})


def by_hand(store: ContextStore, **match: Any) -> dict[str, Any]:
    """The stats of every finished context, worked out from the documents themselves."""
    docs = [d for d in store.contexts.find(match) if d["status"] in ("completed", "failed")]
    # Latency and processing times are those of the completed contexts (the wait for a result).
    latency = [(d["finished_at"] - d["created_at"]).total_seconds() for d in docs if d["status"] == "completed"]
    processing = [(d["finished_at"] - d["started_at"]).total_seconds() for d in docs if d["status"] == "completed"]

    def pct(values: list[float]) -> dict[str, float]:
        return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (50, 95, 99)}

    completed = sum(d["status"] == "completed" for d in docs)
    return {
        "completed": completed,
        "failed": len(docs) - completed,
        "retried": sum(d["attempts"] - 1 for d in docs),
        "success_rate": completed / len(docs),
        "latency_seconds": pct(latency),
        "processing_seconds": pct(processing),
    }


def test_percentiles_of_milliseconds_are_numpys_to_the_last_bit() -> None:
    # Given samples of durations in whole milliseconds, as the documents' times give them
    rng = np.random.default_rng(1)
    samples = [list(rng.integers(1, 60, size=rng.integers(1, 12)) / 1000) for _ in range(5_000)]
    # Then each percentile is numpy's, rounded alike: computed in another order, about one sample in
    # 50 landed on the other side of a rounding to 3 places
    for values in samples:
        expected = {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (50, 95, 99)}
        assert percentiles(values) == expected, sorted(values)


def test_stats_equal_the_figures_worked_out_from_the_documents(store: ContextStore) -> None:
    # Given contexts settled by two loops, and two still waiting
    batch_id = store.submit([{"payload": {"i": i}, "priority": 5 if i < 9 else 60} for i in range(10)])
    settle_by_two_loops(store, batch_id)

    stats = store.stats(window_seconds=600)

    expected = by_hand(store)
    assert {k: stats[k] for k in expected} == expected
    assert stats["window_seconds"] == 600
    assert stats["throughput_per_second"] == pytest.approx((expected["completed"] + expected["failed"]) / 600)
    assert stats["queue_length"] == {"high": 1, "medium": 0, "low": 1}
    assert stats["in_flight"] == 0


def test_stats_are_a_dict_that_serialises_to_the_issues_json(store: ContextStore) -> None:
    store.submit([{"payload": {}}])
    stats = store.stats()
    assert isinstance(stats, Stats) and isinstance(stats, dict)
    assert list(json.loads(json.dumps(stats))) == [
        "window_seconds",
        "completed",
        "failed",
        "retried",
        "expired",
        "throughput_per_second",
        "working_seconds",
        "working_throughput_per_second",
        "recent_seconds",
        "recent_throughput_per_second",
        "tokens_per_second",
        "tokens",
        "success_rate",
        "latency_seconds",
        "processing_seconds",
        "queue_length",
        "oldest_pending_seconds",
        "in_flight",
        "queues",
    ]


def test_with_nothing_finished_the_rates_and_percentiles_are_null(store: ContextStore) -> None:
    store.submit([{"payload": {}}])
    stats = store.stats()
    assert stats["success_rate"] is None
    assert stats["working_seconds"] is None and stats["working_throughput_per_second"] is None
    assert stats["throughput_per_second"] == stats["recent_throughput_per_second"] == 0
    assert stats["latency_seconds"] == {"p50": None, "p95": None, "p99": None}
    assert stats["completed"] == stats["failed"] == 0


def test_the_working_rate_is_over_the_time_work_was_done_not_the_whole_window(store: ContextStore) -> None:
    # Given a burst of 100 contexts (one failed): claimed 100 s ago, finished over the next 10 s,
    # a partition of 10 at a time (as partitions are written), the first 1 s after the claim
    ids = settled_burst(store, 100)
    began = utcnow() - dt.timedelta(seconds=100)
    finish = [began + dt.timedelta(seconds=1 + i // 10) for i in range(100)]
    finished_at(store, ids, began, finish)

    stats = store.stats(window_seconds=300)

    # Then the window's average counts its idle time, the working rate does not
    assert stats["throughput_per_second"] == pytest.approx(100 / 300)
    assert stats["working_seconds"] == 10.0  # from the claim to the last finish
    assert stats["working_throughput_per_second"] == pytest.approx(100 / 10)
    # and nothing finished in the last minute
    assert (stats["recent_seconds"], stats["recent_throughput_per_second"]) == (60.0, 0.0)


def test_the_recent_rate_counts_the_last_minute_whatever_the_window(store: ContextStore) -> None:
    ids = settled_burst(store, 30)
    now = utcnow()
    finished_at(store, ids[:10], now - dt.timedelta(seconds=130), [now - dt.timedelta(seconds=120)] * 10)
    finished_at(store, ids[10:], now - dt.timedelta(seconds=40), [now - dt.timedelta(seconds=30)] * 20)
    stats = store.stats(window_seconds=3600)
    assert stats["recent_throughput_per_second"] == pytest.approx(20 / 60)
    assert stats["throughput_per_second"] == pytest.approx(30 / 3600)
    assert stats["working_seconds"] == 100.0  # first to last: the gap between the bursts is in it


def test_the_working_time_starts_no_earlier_than_the_window(store: ContextStore) -> None:
    # Given contexts claimed 10 minutes ago, finished 30 s ago
    ids = settled_burst(store, 5)
    now = utcnow()
    finished_at(store, ids, now - dt.timedelta(minutes=10), [now - dt.timedelta(seconds=30)] * 5)
    # Then over the last minute, they were worked on for that minute's first 30 s
    stats = store.stats(window_seconds=60)
    assert stats["working_seconds"] == pytest.approx(30, abs=2)
    assert stats["working_throughput_per_second"] == pytest.approx(5 / 30, rel=0.1)


def test_contexts_finished_in_one_write_of_one_moment_have_no_working_time(store: ContextStore) -> None:
    ids = settled_burst(store, 3)
    now = utcnow() - dt.timedelta(seconds=5)
    finished_at(store, ids, now, [now] * 3)  # claimed and finished in the same millisecond
    stats = store.stats()
    assert stats["working_seconds"] is None and stats["working_throughput_per_second"] is None
    assert stats["completed"] + stats["failed"] == 3


def test_oldest_pending_seconds_is_the_age_of_the_oldest_waiting_context(store: ContextStore) -> None:
    assert store.stats()["oldest_pending_seconds"] is None
    store.submit([{"payload": {}}])
    an_hour_ago = utcnow() - dt.timedelta(hours=1)
    # A whole-document replace stores a date as a date on nx-27017 (see store.py's note).
    store.contexts.replace_one({}, {**store.contexts.find_one({}), "created_at": an_hour_ago})  # type: ignore[dict-item]
    assert store.stats()["oldest_pending_seconds"] == pytest.approx(3600, abs=60)


def test_contexts_in_flight_are_counted(store: ContextStore) -> None:
    store.submit([{"payload": {}} for _ in range(3)])
    store.claim(2, "loop")
    assert store.stats()["in_flight"] == 2


def test_contexts_finished_before_the_window_are_left_out(store: ContextStore) -> None:
    store.submit([{"payload": {}} for _ in range(3)])
    claim = store.claim(3, "loop")
    store.complete(claim, dict.fromkeys(claim.ids, 1))
    ten_minutes_ago = epoch_ms(utcnow() - dt.timedelta(minutes=10))
    store.contexts.update_one({"_id": claim.ids[0]}, {"$set": {"finished_ms": ten_minutes_ago}})
    assert store.stats(window_seconds=300)["completed"] == 2
    assert store.stats(window_seconds=900)["completed"] == 3


def test_stats_of_one_batch_count_that_batch_only(store: ContextStore) -> None:
    first = store.submit([{"payload": {}} for _ in range(2)])
    second = store.submit([{"payload": {}} for _ in range(3)])
    claim = store.claim(5, "loop")
    store.complete(claim, dict.fromkeys(claim.ids, 1))
    store.submit([{"payload": {}}])
    assert store.stats(first)["completed"] == 2
    assert store.stats(second)["completed"] == 3
    assert store.stats(second)["queue_length"] == {"high": 0, "medium": 0, "low": 0}
    assert store.stats()["queue_length"]["medium"] == 1


def test_a_failed_context_sent_back_by_retry_leaves_the_stats(store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {}}])
    claim = store.claim(1, "loop")
    store.fail(claim, {claim.ids[0]: ERROR}, None)
    assert store.stats()["failed"] == 1
    store.retry(batch_id)
    assert store.stats()["failed"] == 0


def test_stats_of_an_unknown_batch_raise_batch_not_found(store: ContextStore) -> None:
    with pytest.raises(BatchNotFound):
        store.stats("no-such-batch")


@pytest.mark.parametrize("window", [0, -5, float("nan"), float("inf"), "300"])
def test_a_window_that_is_not_a_positive_number_is_refused(store: ContextStore, window: Any) -> None:
    with pytest.raises(ValueError, match="window_seconds must be a positive number"):
        store.stats(window_seconds=window)


def test_the_timeline_has_one_row_per_bucket_with_the_counts_of_each(store: ContextStore) -> None:
    store.submit([{"payload": {}} for _ in range(5)])
    claim = store.claim(5, "loop")
    store.settle(claim, results=dict.fromkeys(claim.ids[:4], 1), errors={claim.ids[4]: ERROR}, retry_at=None)
    # One context finished two buckets ago.
    store.contexts.update_one(
        {"_id": claim.ids[0]}, {"$set": {"finished_ms": epoch_ms(utcnow() - dt.timedelta(seconds=150))}}
    )

    timeline = store.timeline(window_seconds=600, bucket_seconds=60)

    assert list(timeline.columns) == [
        "completed",
        "failed",
        "throughput",
        "tokens_per_second",
        "latency_p50",
        "latency_p95",
    ]
    assert len(timeline) == 10 and timeline.index.is_monotonic_increasing
    assert isinstance(timeline.index, pd.DatetimeIndex) and str(timeline.index.tz) == "UTC"
    assert timeline["completed"].tolist() == [0] * 7 + [1, 0, 3]
    assert timeline["failed"].tolist() == [0] * 9 + [1]
    assert timeline["throughput"].iloc[-1] == pytest.approx(4 / 60)
    assert timeline["latency_p50"].iloc[:7].isna().all() and timeline["latency_p50"].iloc[-1] >= 0


def test_a_timeline_of_too_many_buckets_is_refused(store: ContextStore) -> None:
    with pytest.raises(ValueError, match="at most"):
        store.timeline(window_seconds=86400, bucket_seconds=1)
