"""The stats where users read them: `ctxbatch stats` and `top`, `GET /api/stats`, and the queue's metrics."""

from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result
from conftest import finished_at, settled_burst
from prometheus_client.parser import text_string_to_metric_families

from ctxbatch.cli import main
from ctxbatch.io import ContextStore, utcnow
from ctxbatch.monitoring import terminal

ERROR = {"type": "ValueError", "message": "bad", "traceback": ""}


@pytest.fixture
def worked(store: ContextStore) -> str:
    """A batch with 3 completed, 1 failed and 2 pending contexts; its id."""
    batch_id = store.submit([{"payload": {"i": i}, "priority": 5} for i in range(6)])
    claim = store.claim(4, "loop")
    store.settle(claim, results=dict.fromkeys(claim.ids[:3], 1), errors={claim.ids[3]: ERROR}, retry_at=None)
    return batch_id


@pytest.fixture
def burst(store: ContextStore) -> None:
    """100 contexts (1 failed) claimed 100 s ago and finished over the next 10 s: 10/s while working."""
    ids = settled_burst(store, 100)
    began = utcnow() - dt.timedelta(seconds=100)
    finished_at(store, ids, began, [began + dt.timedelta(seconds=1 + i // 10) for i in range(100)])


def cli(mongo_uri: str, database: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--mongo-uri", mongo_uri, "--database", database, *args])


def without_times(stats: dict[str, Any]) -> dict[str, Any]:
    """The stats less what moves between two reads (ages and percentiles stay; seconds pass)."""
    return {k: v for k, v in stats.items() if k != "oldest_pending_seconds"}


# -- ctxbatch stats and top -------------------------------------------------------------------


def test_stats_json_is_the_stores_stats(mongo_uri: str, database: str, store: ContextStore, worked: str) -> None:
    result = cli(mongo_uri, database, "stats", "--json", "--window", "120")
    assert result.exit_code == 0, result.stderr
    assert without_times(json.loads(result.stdout)) == without_times(store.stats(window_seconds=120))


def test_stats_of_a_batch_print_its_counts_for_a_person(mongo_uri: str, database: str, worked: str) -> None:
    result = cli(mongo_uri, database, "stats", worked)
    assert result.exit_code == 0, result.stderr
    assert f"batch {worked}, last 300 s" in result.stdout
    assert "completed 3  failed 1  retried 0" in result.stdout
    assert "success 75.0%" in result.stdout
    assert "queue       high 2  medium 0  low 0" in result.stdout


def test_stats_label_the_rate_while_working_over_the_last_minute_and_over_the_window(
    mongo_uri: str, database: str, burst: None
) -> None:
    result = cli(mongo_uri, database, "stats")
    assert result.exit_code == 0, result.stderr
    assert "  throughput  10/s working (10 s), 0/s last 60 s, 0.333/s over 300 s\n" in result.stdout
    figures = json.loads(cli(mongo_uri, database, "stats", "--json").stdout)
    assert figures["throughput_per_second"] == pytest.approx(100 / 300)  # as it was: over the window
    assert (figures["working_seconds"], figures["working_throughput_per_second"]) == (10.0, 10.0)
    assert (figures["recent_seconds"], figures["recent_throughput_per_second"]) == (60.0, 0.0)


def test_top_labels_the_rates_too(mongo_uri: str, database: str, store: ContextStore, burst: None) -> None:
    result = cli(mongo_uri, database, "top", "--interval", "0.01", "-n", "1")
    assert result.exit_code == 0, result.stderr
    assert "rate_working=10/s working_seconds=10 rate_last_60s=0/s rate_window=0.333/s" in result.stdout
    screen = Terminal()
    terminal.top(store.stats, screen, interval=0.01, refreshes=1)
    assert "throughput  10/s working (10 s), 0/s last 60 s, 0.333/s over 300 s" in screen.getvalue()


def test_stats_of_an_unknown_batch_is_one_line_and_exit_1(mongo_uri: str, database: str, store: ContextStore) -> None:
    result = cli(mongo_uri, database, "stats", "nope")
    assert result.exit_code == 1
    assert result.stderr == "Error: no batch with id 'nope'\n"
    assert "Traceback" not in result.output


@pytest.mark.parametrize("window", ["0", "-1", "nan", "inf", "soon"])
def test_a_bad_window_is_a_usage_error(mongo_uri: str, database: str, window: str) -> None:
    result = cli(mongo_uri, database, "stats", "--window", window)
    assert result.exit_code == 2
    assert "--window" in result.stderr and "Traceback" not in result.output


def test_top_writes_one_line_per_refresh_off_a_terminal(mongo_uri: str, database: str, worked: str) -> None:
    result = cli(mongo_uri, database, "top", "--interval", "0.01", "-n", "3")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert all("completed=3 failed=1" in line and "pending=2" in line for line in lines)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_top_redraws_in_place_on_a_terminal(store: ContextStore, worked: str) -> None:
    screen = Terminal()
    shown = terminal.top(store.stats, screen, interval=0.01, refreshes=2)
    assert shown == 2
    frames = screen.getvalue().split(terminal.CLEAR_SCREEN)
    assert frames[0] == "" and len(frames) == 3
    assert all("completed 3  failed 1" in frame for frame in frames[1:])


# -- GET /api/stats ---------------------------------------------------------------------------


def test_api_stats_answer_the_stores_stats(api: httpx.Client, store: ContextStore, worked: str) -> None:
    answer = api.get("/api/stats", params={"window": 60})
    assert answer.status_code == 200
    assert without_times(answer.json()) == without_times(store.stats(window_seconds=60))


def test_api_stats_answer_the_working_and_recent_rates(api: httpx.Client, burst: None) -> None:
    figures = api.get("/api/stats").json()
    assert figures["throughput_per_second"] == pytest.approx(100 / 300)
    assert (figures["working_seconds"], figures["working_throughput_per_second"]) == (10.0, 10.0)
    assert (figures["recent_seconds"], figures["recent_throughput_per_second"]) == (60.0, 0.0)


def test_api_stats_of_a_batch(api: httpx.Client, store: ContextStore, worked: str) -> None:
    store.submit([{"payload": {}}])
    answer = api.get("/api/stats", params={"batch_id": worked})
    assert answer.status_code == 200
    assert answer.json()["queue_length"] == {"high": 2, "medium": 0, "low": 0}


def test_api_stats_of_an_unknown_batch_is_404(api: httpx.Client) -> None:
    answer = api.get("/api/stats", params={"batch_id": "nope"})
    assert answer.status_code == 404
    assert "nope" in answer.json()["error"]


@pytest.mark.parametrize("window", ["0", "-3", "nan", "inf", "soon", str(10**9)])
def test_api_stats_refuse_a_bad_window_with_422(api: httpx.Client, window: str) -> None:
    answer = api.get("/api/stats", params={"window": window})
    assert answer.status_code == 422
    assert answer.json()["problems"][0]["field"] == "window"


# -- the database's metrics, the same in serve and in the loop --------------------------------


def test_metrics_report_the_age_of_the_oldest_pending_context_per_level(
    api: httpx.Client, store: ContextStore, worked: str
) -> None:
    families = {f.name: f for f in text_string_to_metric_families(api.get("/metrics").text)}
    ages = {s.labels["level"]: s.value for s in families["ctxbatch_oldest_pending_seconds"].samples}
    assert set(ages) == {"high", "medium", "low"}
    assert ages["high"] >= 0 and ages["medium"] == ages["low"] == 0
    queue = {(s.labels["level"], s.labels["status"]): s.value for s in families["ctxbatch_queue_length"].samples}
    assert queue[("high", "pending")] == 2
