"""A run's own LocalCluster starts in a thread while the run prepares, its workers ready for partitions.

`ClusterStart` returns at once; the cluster's worker processes import the partition code as they
boot (not with their first partition) and carry the worker plugin; a start that fails is raised
where the run waits for it; and `ctxbatch run` refusing a bad engine leaves no cluster behind.
The run claims its first batch while its cluster starts, and gives it back if the cluster fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, small_run, until
from distributed import Client, LocalCluster

from ctxbatch import ContextStore, Pipeline
from ctxbatch.config import load_config
from ctxbatch.pipeline.cluster import ClusterStart
from ctxbatch.pipeline.worker import PLUGIN_NAME

pytestmark = pytest.mark.timeout(180)


def test_a_cluster_starts_in_a_thread_and_its_workers_boot_with_the_partition_code() -> None:
    settings = load_config({"dask": {"n_workers": 1, "processes": True, "dashboard_address": None}})
    release = threading.Event()

    def page() -> None:  # runs in the start's thread, before the cluster is made
        release.wait()

    # Given a start whose thread is held before it makes the cluster, the maker is already on its way
    start = ClusterStart(settings.dask, page)
    release.set()
    with start:
        client, cluster = start.started()
        # Then its worker process, which has run no task, has the partition code and the plugin
        assert isinstance(client, Client) and isinstance(cluster, LocalCluster)
        imported = client.run(lambda: "ctxbatch.pipeline.partition" in sys.modules)
        plugged = client.run(lambda dask_worker: PLUGIN_NAME in dask_worker.plugins)
        assert list(imported.values()) == [True] and list(plugged.values()) == [True]
    # And closing it closes the cluster
    assert cluster.status.name == "closed"


def test_a_failed_start_is_raised_where_the_run_waits_for_it() -> None:
    settings = load_config({"dask": {"n_workers": 1, "processes": False, "dashboard_address": None}})

    def page() -> None:
        raise RuntimeError("the page could not be loaded")

    with ClusterStart(settings.dask, page) as start, pytest.raises(RuntimeError, match="could not be loaded"):
        start.started()


def test_a_run_refusing_its_engine_leaves_no_cluster_behind(mongo_uri: str, database: str, tmp_path: Path) -> None:
    store = ContextStore(mongo_uri, database)
    store.submit([{"payload": {"i": 1}}])
    store.close()
    # The cluster starts before the engine is imported; the run fails on the engine, as before
    command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", mongo_uri, "--database", database]
    command += ["run", "--engine", "no_such_module_xyz:score", "--until-empty"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode != 0
    assert "no_such_module_xyz" in stderr and "Traceback" not in stderr, stderr
    # And it closed what it started: nothing of its session (its cluster's workers) is left running
    try:
        until(lambda: not _running_in_session(run.pid), "the run's cluster to be gone", timeout=30)
    finally:
        for pid in _running_in_session(run.pid):
            os.kill(pid, signal.SIGKILL)


def _running_in_session(session: int) -> list[int]:
    """The processes of a session that still run (an exited one awaiting its reaper does not)."""
    found = subprocess.run(["pgrep", "-s", str(session)], capture_output=True, text=True).stdout.split()
    running = []
    for pid in map(int, found):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state != "Z":
            running.append(pid)
    return running


class Heard:
    """The names of the run's events, in the order it told them."""

    def __init__(self) -> None:
        self.hooks: list[str] = []

    def __getattr__(self, hook: str) -> Any:
        if not hook.startswith("on_"):
            raise AttributeError(hook)
        return lambda event: self.hooks.append(hook)


def held_until_claimed(store: ContextStore, fail: bool = False) -> Callable[[], None]:
    """A page step for ClusterStart's thread: holds the cluster's start until some of the store's contexts
    are processing (the start fails when none are within 20 s), and then fails it if `fail`."""

    def processing() -> bool:
        return store.contexts.find_one({"status": {"$eq": "processing"}}) is not None

    def page() -> None:
        until(processing, "a context processing before the cluster started", timeout=20)
        if fail:
            raise RuntimeError("the cluster could not start")

    return page


def test_the_first_batch_is_claimed_while_the_cluster_starts(store: ContextStore) -> None:
    # Given 30 contexts and a run whose cluster does not start before some are processing
    batch = store.submit([{"payload": {"n": i}} for i in range(30)])
    settings = load_config({**small_run(), "dask": {"n_workers": 1, "processes": False, "dashboard_address": None}})
    heard = Heard()
    start = ClusterStart(settings.dask, held_until_claimed(store))
    # When it runs until the queue is empty
    report = Pipeline("echo", settings, store, start, subscribers=[heard]).run(until_empty=True)
    # Then its first batch was claimed before the cluster started, and told after the run's start
    assert report.completed == 30 and store.counts(batch)["completed"] == 30
    assert heard.hooks[0] == "on_run_started"
    assert heard.hooks[1:3] == ["on_sizing_decision", "on_batch_claimed"]


def test_a_batch_claimed_ahead_of_a_cluster_that_fails_is_given_back(store: ContextStore) -> None:
    # Given 30 contexts and a run whose cluster fails once some are processing
    batch = store.submit([{"payload": {"n": i}} for i in range(30)])
    settings = load_config({**small_run(), "dask": {"n_workers": 1, "processes": False, "dashboard_address": None}})
    start = ClusterStart(settings.dask, held_until_claimed(store, fail=True))
    # When it runs
    with pytest.raises(RuntimeError, match="could not start"):
        Pipeline("echo", settings, store, start).run(until_empty=True)
    # Then what it claimed is pending again, its try uncounted
    assert store.counts(batch)["pending"] == 30
    assert {d["attempts"] for d in store.contexts.find({}, {"attempts": 1})} == {0}
