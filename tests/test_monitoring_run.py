"""Monitoring on real loops: `ctxbatch run --metrics-port` scraped, stats across two loops, alerts end to end."""

from __future__ import annotations

import signal
import socket
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from conftest import DEADLINE_SECONDS, free_port, until
from distributed import Client
from prometheus_client.parser import text_string_to_metric_families
from receiver import WebhookReceiver, dead_url
from test_stats import by_hand

from ctxbatch import ContextStore, Pipeline, Subscriber
from ctxbatch.cli import main
from ctxbatch.monitoring.metrics import METRIC_NAMES


def settings(**monitoring: Any) -> dict[str, Any]:
    return {
        "worker": {
            "batch_size": 5,
            "dynamic_batch_sizing": False,
            "max_parallel_batches": 2,
            "batch_timeout_seconds": 0,
            "lease_seconds": 30,
            "retry": {"batch_retries": 1, "backoff_seconds": [0], "context_retries": 1},
        },
        # Threads, not processes: two loops with process clusters would crowd two cores.
        "dask": {"processes": False, "n_workers": 1, "threads_per_worker": 2, "dashboard_address": None},
        "monitoring": {"default_alerts": False, "evaluate_every_seconds": 0.2, **monitoring},
    }


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Each sample of the page by name, then by its labels."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def outcome(samples: dict[str, Any], name: str) -> float:
    return samples["ctxbatch_contexts_processed_total"][(("outcome", name),)]


# -- the metrics of a running loop ------------------------------------------------------------


def test_a_running_loops_metrics_count_what_the_database_holds(store: ContextStore, loops: Any) -> None:
    # Given 30 contexts of which 6 fail on every try (one retry each), and a loop serving metrics
    batch_id = store.submit([{"payload": {"i": i, "bad": i % 5 == 0}} for i in range(30)])
    port = free_port()
    loop = loops(settings(), "tests.engines:fail_when_flagged", "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"

    # When the work is done (the database says so) and the loop has counted it
    until(lambda: store.batch_status(batch_id)["status"] == "completed", "the batch completed")
    counts = store.batch_status(batch_id)["counts"]
    samples = until(
        lambda: (page := scrape(url)) and outcome(page, "completed") + outcome(page, "failed") == 30 and page,
        "the loop counted every context",
    )

    # Then its counters equal the database's figures, and every metric of the issue is there
    retried = sum(d["attempts"] - 1 for d in store.contexts.find({"batch_id": {"$eq": batch_id}}))
    assert (outcome(samples, "completed"), outcome(samples, "failed")) == (counts["completed"], counts["failed"])
    assert (counts["completed"], counts["failed"], retried) == (24, 6, 6)
    assert outcome(samples, "retried") == retried and outcome(samples, "lost") == 0
    assert samples["ctxbatch_context_latency_seconds_count"][()] == counts["completed"]
    assert samples["ctxbatch_processing_seconds_count"][()] == counts["completed"]
    assert samples["ctxbatch_batch_seconds_count"][()] >= 6
    assert samples["ctxbatch_batches_in_flight"][()] == 0
    assert samples["ctxbatch_queue_length"][(("level", "medium"), ("status", "pending"))] == 0
    assert samples["ctxbatch_database_up"][()] == 1
    served = {name.removesuffix("_count").removesuffix("_total") for name in samples}
    # (No alert fired, and a row engine has no limit on calls in flight: those two have no samples yet.)
    unsampled = {"ctxbatch_alerts_firing", "ctxbatch_engine_concurrency"}
    assert {name.removesuffix("_total") for name in METRIC_NAMES} <= served | unsampled

    # And SIGTERM ends it as usual
    loop.send_signal(signal.SIGTERM)
    _, err = loop.communicate(timeout=DEADLINE_SECONDS)
    assert loop.returncode == 0, err
    assert f"serving the loop's Prometheus metrics at http://127.0.0.1:{port}/metrics" in err


def test_the_schedulers_own_metrics_page_shows_the_run_with_a_local_cluster(store: ContextStore) -> None:
    # Given a run that starts its own LocalCluster with a dashboard
    store.submit([{"payload": {"i": i}} for i in range(10)])
    pages: list[str] = []

    class ScrapeScheduler(Subscriber):
        def on_run_started(self, event: Any) -> None:
            self.link = event.dashboard_link

        def on_batch_finished(self, event: Any) -> None:
            if not pages:
                pages.append(httpx.get(self.link.replace("/status", "/metrics"), timeout=5).text)

    config = settings()
    config["dask"]["dashboard_address"] = ":0"
    Pipeline("tests.engines:echo", config, store, subscribers=[ScrapeScheduler()]).run(until_empty=True)

    # Then distributed's scheduler page had the run's metrics next to its own
    assert "dask_scheduler_workers" in pages[0]
    assert 'ctxbatch_contexts_processed_total{outcome="completed"}' in pages[0]


# -- stats across two loops -------------------------------------------------------------------


def test_stats_equal_the_documents_when_two_loops_did_the_work(store: ContextStore, loops: Any) -> None:
    batch_id = store.submit([{"payload": {"i": i, "bad": i % 7 == 0, "sleep": 0.1}} for i in range(70)])
    first, second = (loops(settings(), "tests.engines:nap_then_fail_when_flagged", "--until-empty") for _ in range(2))
    for loop in (first, second):
        _, err = loop.communicate(timeout=110)
        assert loop.returncode == 0, err
    owners = {d["lease"]["owner"] for d in store.contexts.find({"batch_id": {"$eq": batch_id}})}
    assert len(owners) == 2  # both loops settled contexts

    expected = by_hand(store)
    stats = store.stats(window_seconds=600)
    assert {k: stats[k] for k in expected} == expected
    assert (stats["completed"], stats["failed"], stats["retried"]) == (60, 10, 10)
    assert store.stats(batch_id, window_seconds=600) == {**stats, "oldest_pending_seconds": None}


# -- alerts on real runs ----------------------------------------------------------------------


def test_a_stalled_queue_fires_seconds_since_progress_and_resolves_when_it_moves(
    store: ContextStore, client: Client, receiver: WebhookReceiver, tmp_path: Path
) -> None:
    # Given an engine that blocks until released, and a rule on seconds_since_progress
    release = tmp_path / "release"
    store.submit([{"payload": {"i": i, "release": str(release)}} for i in range(4)])
    stalled = {"name": "Stalled", "metric": "seconds_since_progress", "above": 1, "severity": "critical"}
    pipeline = Pipeline(
        "tests.engines:wait_for_release", settings(alerts=[stalled], webhook_url=receiver.url), store, client
    )
    running = threading.Thread(target=pipeline.run, kwargs={"until_empty": True})
    running.start()
    try:
        # When the queue makes no progress, the alert fires
        receiver.wait_for(lambda bodies: len(bodies) >= 1)
        assert receiver.statuses() == [("firing", "Stalled")]
        assert receiver.bodies[0]["alerts"][0]["labels"]["severity"] == "critical"
    finally:
        # And once the engine moves again and the queue drains, it resolves
        release.touch()
        running.join(DEADLINE_SECONDS)
    assert not running.is_alive()
    receiver.wait_for(lambda bodies: len(bodies) >= 2)
    assert receiver.statuses() == [("firing", "Stalled"), ("resolved", "Stalled")]
    assert store.status_counts()["completed"] == 4


def test_a_dead_webhook_does_not_stop_the_run(
    store: ContextStore, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    store.submit([{"payload": {"i": i}} for i in range(20)])
    always = {"name": "Always", "metric": "queue_length", "above": -1}
    with caplog.at_level("WARNING", logger="ctxbatch.monitoring"):
        report = Pipeline("tests.engines:echo", settings(alerts=[always], webhook_url=dead_url()), store, client).run(
            until_empty=True
        )
    assert (report.completed, report.stopped_by) == (20, "empty")
    messages = [r.getMessage() for r in caplog.records]
    assert "alert firing: Always (warning): queue_length = 20, above -1" in messages
    assert any(m.startswith("alert webhook http://127.0.0.1:") and "failed" in m for m in messages)


def test_two_loops_send_one_alert_not_two(store: ContextStore, loops: Any, receiver: WebhookReceiver) -> None:
    # Given two loops with the same rule, which holds from the start
    store.submit([{"payload": {"i": i, "sleep": 0.02}} for i in range(40)])
    always = {"name": "Always", "metric": "queue_length", "above": -1}
    config = settings(alerts=[always], webhook_url=receiver.url)
    errs = []
    for loop in [loops(config, "tests.engines:nap", "--until-empty") for _ in range(2)]:
        _, err = loop.communicate(timeout=110)
        assert loop.returncode == 0, err
        errs.append(err)
    # Then one of them recorded the alert and sent it; the other did neither
    assert receiver.statuses() == [("firing", "Always")]
    assert sum(err.count("alert firing: Always") for err in errs) == 1


def test_a_metrics_port_that_is_taken_is_one_line_and_exit_1(mongo_uri: str, database: str) -> None:
    ContextStore(mongo_uri, database).submit([{"payload": {}}])  # an empty run would stop before serving
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--mongo-uri", mongo_uri, "--database", database, "run", "--engine", "echo", "--until-empty"]
        result = CliRunner().invoke(main, [*args, "--metrics-port", str(port)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"Error: monitoring.metrics_port: cannot serve on 127.0.0.1:{port}: "
    )
    assert "Traceback" not in result.output
