"""The worker plugin on a real LocalCluster: setup() once per worker, teardown() at close; async ones on
the worker's engine loop."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from conftest import local_cluster, small_run
from distributed import Client
from engines import HungTeardown

from ctxbatch import ContextStore, Pipeline
from ctxbatch.pipeline import worker
from ctxbatch.pipeline.engine import resolve_engine

CLUSTER = {"n_workers": 2}


def test_engine_setup_runs_once_per_worker_and_teardown_at_close(
    store: ContextStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an engine whose setup() and teardown() leave a file each, and a run with its own
    # LocalCluster of 2 worker processes
    monkeypatch.setenv("CTXBATCH_TEST_MARKERS", str(tmp_path))
    store.submit([{"payload": {"i": i}} for i in range(60)])
    settings = {
        "worker": {"batch_size": 6, "dynamic_batch_sizing": False, "batch_timeout_seconds": 0},
        "dask": {"n_workers": 2, "threads_per_worker": 1, "processes": True, "dashboard_address": None},
    }
    partitions: list[int] = []
    pipeline = Pipeline("tests.engines:with_setup", settings, store, on_progress=lambda r: partitions.append(1))
    # When it drains the queue in many partitions, and closes its cluster
    report = pipeline.run(until_empty=True)
    assert report.completed == 60
    assert len(partitions) >= 10
    # Then each worker set the engine up exactly once, and tore it down when it closed
    setups = sorted(p.name.split("-")[1] for p in tmp_path.glob("setup-*"))
    teardowns = sorted(p.name.split("-")[1] for p in tmp_path.glob("teardown-*"))
    assert len(setups) == 2
    assert len(set(setups)) == 2  # two processes
    assert teardowns == setups


def test_an_async_setup_runs_on_the_loop_the_engine_calls_run_on(store: ContextStore, client: Client) -> None:
    # Given an async engine whose async setup() records its loop, and whose calls fail on any other loop
    store.submit([{"payload": {"i": i}} for i in range(40)])
    # When two workers run it over many partitions
    report = Pipeline("tests.engines:loop_bound", small_run(), store, client).run(until_empty=True)
    # Then every call ran on the loop its worker's setup ran on
    assert (report.completed, report.failed) == (40, 0)


def test_an_async_teardown_runs_on_the_engine_loop_when_the_worker_closes(
    store: ContextStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run of an engine whose async teardown() leaves a file when it runs on its setup's loop
    monkeypatch.setenv("CTXBATCH_TEST_MARKERS", str(tmp_path))
    store.submit([{"payload": {"i": i}} for i in range(20)])
    with local_cluster(n_workers=1) as own:
        report = Pipeline("tests.engines:loop_bound", small_run(), store, own).run(until_empty=True)
        assert report.completed == 20
        assert list(tmp_path.glob("async-teardown-*")) == []
    # When its cluster closes, then the worker tore the engine down on that loop, before stopping it
    assert len(list(tmp_path.glob("async-teardown-*"))) == 1


def test_a_hung_async_teardown_is_left_and_logged_and_the_worker_closes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a worker's resources with an engine set up whose async teardown() never ends
    monkeypatch.setattr(worker, "TEARDOWN_SECONDS", 0.2)
    resources = worker.WorkerResources()
    resources.setup()
    resources.ready(resolve_engine(HungTeardown()))
    # When the worker closes, then it closes, saying which teardown it left unfinished
    with caplog.at_level(logging.WARNING, logger="ctxbatch.pipeline.worker"):
        resources.teardown()
    assert "teardown() did not finish: not done within 0.2 s" in caplog.text
    assert resources._engines == {}
