"""The worker plugin on a real LocalCluster of worker processes: setup() once per worker, teardown() at close."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctxbatch import ContextStore, Pipeline


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
