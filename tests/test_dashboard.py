"""The ctxbatch page of the Dask dashboard: the hook into distributed, a run's own cluster, the preload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from distributed import Client, LocalCluster

from ctxbatch import ContextStore, Pipeline
from ctxbatch.config import load_config
from ctxbatch.io import utcnow
from ctxbatch.io.alert_state import AlertBook
from ctxbatch.monitoring import dask_pages
from ctxbatch.monitoring.dashboard import DashboardSource, show_page
from ctxbatch.monitoring.dask_pages import page_link
from ctxbatch.monitoring.decisions import recent_decisions
from ctxbatch.monitoring.snapshot import batches_in_flight, firing_alerts
from ctxbatch.pipeline.cluster import ClusterStart, dask_client

ROOT = Path(__file__).resolve().parents[1]
START_SECONDS = 60


def test_distributed_still_has_the_hook() -> None:
    # Fails loudly (DashboardHookChanged names what moved) when a distributed release changes the
    # page registry, the template or the theme that ctxbatch/monitoring/dask_pages.py relies on.
    applications, env, _theme = dask_pages.check()
    assert applications[dask_pages.PAGE] and applications[dask_pages.INDIVIDUAL]
    assert env.get_template("simple.html")
    import distributed.dashboard.scheduler as dashboard

    # The "More..." menu is built from the registry's /individual-* routes.
    assert "connect" in dir(dashboard) and "template_variables" in dir(dashboard)


def dashboard_base(link: str) -> str:
    return link.rsplit("/", 1)[0]


def test_a_run_that_starts_its_cluster_serves_and_announces_the_page(store: ContextStore) -> None:
    said: list[str] = []
    settings = load_config({"dask": {"n_workers": 1, "processes": False}})
    start = ClusterStart(settings.dask, lambda: show_page)
    with dask_client(settings.dask, store, start, said.append) as (client, _cluster):
        base = dashboard_base(client.dashboard_link)
        page = httpx.get(f"{base}/ctxbatch", timeout=30)
        plots = httpx.get(f"{base}/individual-plots.json", timeout=30).json()
        status = httpx.get(f"{base}/status", timeout=30).text
        bare = httpx.get(f"{base}/individual-ctxbatch", timeout=30)
        source = client.run_on_scheduler(lambda dask_scheduler: repr(dask_scheduler.plugins[DashboardSource.name]))
        link = page_link(client)
    assert link == f"{base}/ctxbatch"
    assert said == [f"Dask dashboard: {base}/status"]  # the run adds the ctxbatch line (below)
    assert page.status_code == 200 and "ctxbatch" in page.text and "bokeh" in page.text.lower()
    assert 'href="info"' in page.text  # inside Dask's navigation bar
    assert plots["Individual Ctxbatch"] == "/individual-ctxbatch"  # what JupyterLab's extension lists
    assert 'href="individual-ctxbatch"' in status  # the "More..." menu
    assert bare.status_code == 200
    assert store.database_name in source


def test_a_run_joining_a_cluster_leaves_its_scheduler_alone(store: ContextStore) -> None:
    with (
        LocalCluster(n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        said: list[str] = []
        settings = load_config({"dask": {"scheduler_address": cluster.scheduler_address}})
        with dask_client(settings.dask, store, None, said.append):
            pass
        assert page_link(client) is None
    assert said == [f"Dask dashboard: {client.dashboard_link}"]


def test_show_page_points_an_existing_scheduler_at_the_database(store: ContextStore) -> None:
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        url = show_page(client, store)
        page = httpx.get(url, timeout=30)
        source = client.run_on_scheduler(lambda dask_scheduler: repr(dask_scheduler.plugins[DashboardSource.name]))
    assert url == f"{dashboard_base(client.dashboard_link)}/ctxbatch"
    assert page.status_code == 200
    assert f"database={store.database_name!r}" in source


@pytest.fixture
def scheduler_process(mongo_uri: str, database: str, tmp_path: Path) -> Iterator[Any]:
    """`dask scheduler --preload ctxbatch.monitoring.dashboard`, as README shows it; killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*preload_args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
        scheduler_file = tmp_path / "scheduler.json"
        command = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"]
        command += ["--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)]
        command += ["--preload", "ctxbatch.monitoring.dashboard", *preload_args]
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        started.append(process)
        deadline = time.monotonic() + START_SECONDS
        while not scheduler_file.exists() or not scheduler_file.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dask scheduler did not start: {process.communicate()[1].decode()[-2000:]}")
            time.sleep(0.1)
        return dict(json.loads(scheduler_file.read_text()))

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for_page(url: str) -> httpx.Response:
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            return httpx.get(url, timeout=10)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_the_preload_adds_the_page_to_an_external_scheduler(
    scheduler_process: Any, store: ContextStore, mongo_uri: str
) -> None:
    # Given `dask scheduler --preload ctxbatch.monitoring.dashboard --mongo-uri URI --database NAME`
    info = scheduler_process("--mongo-uri", mongo_uri, "--database", store.database_name)
    base = f"http://127.0.0.1:{info['services']['dashboard']}"
    # Then its dashboard serves the page, and the scheduler reads this test's database
    assert wait_for_page(f"{base}/ctxbatch").status_code == 200
    with Client(info["address"], timeout=30) as client:
        source = client.run_on_scheduler(lambda dask_scheduler: repr(dask_scheduler.plugins[DashboardSource.name]))
    assert f"database={store.database_name!r}" in source


def test_the_preload_reads_the_database_from_the_environment(
    scheduler_process: Any, store: ContextStore, mongo_uri: str
) -> None:
    env = {"CTXBATCH_MONGO_URI": mongo_uri, "CTXBATCH_DATABASE": store.database_name}
    info = scheduler_process(env=env)
    with Client(info["address"], timeout=30) as client:
        source = client.run_on_scheduler(lambda dask_scheduler: repr(dask_scheduler.plugins[DashboardSource.name]))
    assert f"database={store.database_name!r}" in source


def test_batches_in_flight_count_the_leases_of_every_loop(store: ContextStore) -> None:
    store.submit([{"payload": {"i": i}} for i in range(30)])
    store.claim(10, "loop-a")
    store.claim(5, "loop-b")
    in_flight = batches_in_flight(store)
    assert (in_flight.batches, in_flight.contexts) == (2, 15)


def test_a_run_announces_both_links_and_publishes_its_sizing_decisions(store: ContextStore) -> None:
    store.submit([{"payload": {"text": "a b c"}} for _ in range(25)])
    said: list[str] = []
    config = {"dask": {"n_workers": 1, "processes": False}, "worker": {"batch_timeout_seconds": 0}}
    pipeline = Pipeline("text", config, store, announce=said.append)
    report = pipeline.run(until_empty=True)
    assert report.completed == 25
    base = said[0].removeprefix("Dask dashboard: ").removesuffix("/status")
    assert said[:2] == [f"Dask dashboard: {base}/status", f"ctxbatch: {base}/ctxbatch"]
    assert report.page_link == f"{base}/ctxbatch"
    # Every decision of the loop is in the database, where the page of any scheduler reads it
    published = recent_decisions(store, window_seconds=60)
    assert [(d["batch"], d["size"], d["reason"]) for d in published] == [
        (d.batch, d.size, d.reason) for d in report.decisions
    ]
    assert {d["owner"] for d in published} == {pipeline.owner}


def test_the_page_lists_the_alerts_firing_from_the_database(store: ContextStore) -> None:
    book = AlertBook(store.db)
    now = utcnow()
    assert book.fire("success_rate_low", None, "loop-a", 0.5, now)
    assert book.fire("no_progress", None, "loop-b", 120.0, now)
    book.resolve(book.states()["no_progress"], "loop-b", 0.0, now)
    alerts = firing_alerts(store)
    assert [(a["alertname"], a["loop"], a["value"]) for a in alerts] == [("success_rate_low", "loop-a", 0.5)]
