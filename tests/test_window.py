"""An async engine's window stays full with no tuning: batches follow the workers' limits on calls in
flight, partitions of every batch feed them at once, and rows that fail alone do not shrink batches."""

from __future__ import annotations

import logging
import re
import statistics
from typing import Any

import pytest
from distributed import Client
from service_app import Script, serve

from ctxbatch import ContextStore, Pipeline, Subscriber
from ctxbatch.monitoring.page import headline
from ctxbatch.monitoring.snapshot import read_snapshot
from ctxbatch.pipeline.events import EngineConcurrency

# Worker processes: a service in the test process must not share its GIL with the workers calling it, or
# its latency is theirs (the limits learn from it).
CLUSTER = {"n_workers": 2, "processes": True}


def only_the_url(url: str, **worker: Any) -> dict[str, Any]:
    """What a new user sets: the service's URL (and no dashboard, in a test)."""
    return {"http": {"url": url, "timeout_seconds": 10}, "worker": worker, "dask": {"dashboard_address": None}}


class Limits(Subscriber):
    def __init__(self) -> None:
        self.seen: list[EngineConcurrency] = []

    def on_engine_concurrency(self, event: EngineConcurrency) -> None:
        self.seen.append(event)


def test_with_only_the_url_set_the_http_engine_fills_the_service(store: ContextStore, client: Client) -> None:
    # Given a service taking 50 ms a call that counts the calls it holds at once
    script = Script(latency=0.05)
    limits = Limits()
    with serve(script) as url:
        store.submit([{"payload": {"i": i}} for i in range(1200)])
        pipeline = Pipeline("http", only_the_url(url), store, client, subscribers=[limits])
        report = pipeline.run(until_empty=True)
    assert report.completed == 1200
    # Then it held at least 32 at once, with the default batch sizes of 10 to 20 left as they are
    assert script.most_inside >= 32
    # And each worker's limit was told: to subscribers, in the report, and in each sizing decision
    assert limits.seen and limits.seen[-1].auto
    assert set(report.engine_concurrency) == set(client.scheduler_info()["workers"])
    assert report.engine_concurrency == limits.seen[-1].limits
    assert report.decisions[0].inputs["window"] >= 32
    assert all(decision.size >= decision.inputs["window"] > 0 for decision in report.decisions)
    # And in the gauge ctxbatch_engine_concurrency, and on the dashboard page (from the decisions stored)
    assert pipeline.monitor is not None
    registry = pipeline.monitor.metrics.registry
    for worker, limit in report.engine_concurrency.items():
        assert registry.get_sample_value("ctxbatch_engine_concurrency", {"worker": worker}) == limit
    window = report.decisions[-1].inputs["window"]
    assert f"engine concurrency <b>{window}</b> calls in flight" in headline(read_snapshot(store, 300, 10))


def test_configured_batch_sizes_that_cap_the_window_are_kept_and_said_once(
    store: ContextStore, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the seed's sample sizes (batches of at most 20, 3 in flight) under a fixed concurrency of 64
    worker = {"batch_size": 10, "max_batch_size": 20, "max_parallel_batches": 3, "engine_concurrency": 64}
    with serve(Script()) as url, caplog.at_level(logging.WARNING, logger="ctxbatch"):
        store.submit([{"payload": {"i": i}} for i in range(100)])
        report = Pipeline("http", only_the_url(url, **worker), store, client).run(until_empty=True)
    # Then the sizes are honoured, and the run said in one line that they cap the window
    assert report.completed == 100
    assert max(decision.size for decision in report.decisions) <= 20
    capped = [r.getMessage() for r in caplog.records if "cap the engine's calls in flight" in r.getMessage()]
    assert len(capped) == 1
    assert "at 60 (largest batch 20 x max_parallel_batches 3), under the 128" in capped[0]


def test_bad_rows_and_first_try_429s_neither_shrink_the_batches_nor_the_window(
    store: ContextStore, client: Client
) -> None:
    # Given the same 4,000 contexts run twice against a 20 ms service, with the batch sizes left to the
    # loop, short retry backoffs, and a fixed 32 calls per worker: what is looked at is the sizer and the
    # window, not a limit learnt from a service that shares this machine's two cores with everything
    # else here. (What they cost in time is measured in benchmarks/service.py; a wall-clock ratio here
    # failed whenever other work shared the machine.)
    def run(script: Script) -> tuple[list[int], list[int], list[str], int, int]:
        with serve(script) as url:
            store.submit([{"payload": {"i": i}} for i in range(4000)])
            settings = only_the_url(url, engine_concurrency=32, retry={"backoff_seconds": [0.1]})
            report = Pipeline("http", settings, store, client).run(until_empty=True)
        assert report.completed + report.failed == 4000
        sizes = [decision.size for decision in report.decisions]
        windows = [decision.as_row().get("window") or 0 for decision in report.decisions]
        reasons = [decision.reason for decision in report.decisions]
        return sizes, windows, reasons, report.failed, report.deferred

    clean_sizes, clean_windows, _, _, _ = run(Script(latency=0.02))
    # When 3% of the rows always fail (500) and 10% are answered 429 on their first try
    sizes, windows, reasons, failed, deferred = run(Script(latency=0.02, busy_every=10, fail_every=33))
    assert failed == 122 and deferred >= 400
    # Then no decision shrinks the batches for the failures or the 429s, the batches are about as large
    # as in the clean run (the dynamic sizer doubles as it climbs: one step more or less in either
    # run is the machine's noise, not the bad rows), and the window is as wide
    assert not [r for r in reasons if re.search(r"fail|error|429|defer", r)], reasons
    assert statistics.median(sizes) >= 0.5 * statistics.median(clean_sizes), (sizes, clean_sizes)
    assert max(windows) == max(clean_windows) == 64
