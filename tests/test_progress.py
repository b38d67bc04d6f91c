"""The run's progress display (a bar on a terminal, log lines elsewhere) and its closing summary."""

from __future__ import annotations

import io
import re
import signal
from collections.abc import Callable
from typing import Any

from conftest import Loop, small_run, until
from distributed import Client

from ctxbatch import ContextStore, Pipeline, Settings, Subscriber
from ctxbatch.pipeline.events import BatchClaimed, RunFinished, RunStarted
from ctxbatch.pipeline.progress import Progress, Total, progress_line
from ctxbatch.pipeline.report import RunReport

SUMMARY = re.compile(r"batches \d+, ([\d.]+) contexts/s over ([\d.]+) s working, ([\d.]+) s idle$")


def run_with(progress: Progress, report: RunReport, *messages: str) -> None:
    """The run's start and end as the loop announces them, with messages said in between."""
    progress.on_run_started(RunStarted("owner", "echo", Settings(), None, report))
    for message in messages:
        progress.say(message)
    progress.on_run_finished(RunFinished(report))


def test_the_line_shows_done_of_total_rate_failures_and_deferrals_apart() -> None:
    report = RunReport(completed=30, failed=10, retried=5, deferred=4)
    line = progress_line(report, Total(queued=75, arrived=5))
    assert line.startswith("[" + "#" * 14 + "." * 14 + "]")
    assert "40/75 done (+5 arrived)" in line
    # every failed try, whether it runs again or not; a deferral is no failure
    assert line.endswith("failures 15 (failed 10, retried 5)  deferred 4")


def test_with_nothing_arrived_the_line_shows_the_queued_total_alone() -> None:
    assert " 3/8 done  " in progress_line(RunReport(completed=3), Total(queued=8))


def test_off_a_terminal_it_writes_whole_lines_and_messages_between_them(store: ContextStore) -> None:
    store.submit([{"payload": {"i": i}} for i in range(6)])
    stream = io.StringIO()
    report = RunReport(completed=2)
    run_with(
        Progress(store, stream, interactive=False, interval=0.01),
        report,
        "Dask dashboard: http://127.0.0.1:8787/status",
    )
    lines = stream.getvalue().splitlines()
    assert "Dask dashboard: http://127.0.0.1:8787/status" in lines
    # The last line is the final state: 2 done of the 6 queued when the run started.
    assert "2/6 done" in lines[-1]
    assert "\r" not in stream.getvalue()


def test_on_a_terminal_it_redraws_one_line(store: ContextStore) -> None:
    stream = io.StringIO()
    report = RunReport(completed=1)
    run_with(Progress(store, stream, interactive=True, interval=0.01), report, "hello")
    text = stream.getvalue()
    assert "\r\x1b[Khello\n" in text
    assert text.endswith("\x1b[K\n")


class SubmitOnFirstClaim(Subscriber):
    """Submits `records` once the run claimed its first batch: contexts that arrive while it runs."""

    def __init__(self, store: ContextStore, records: list[dict[str, Any]]) -> None:
        self.store, self.records = store, records

    def on_batch_claimed(self, event: BatchClaimed) -> None:
        if self.records:
            self.store.submit(self.records)
            self.records = []


def test_the_total_is_what_was_queued_at_the_start_and_arrivals_are_shown_apart(
    store: ContextStore, client: Client
) -> None:
    # Given 40 contexts queued, and 5 more that arrive once the run is going
    store.submit([{"payload": {"i": i}} for i in range(40)])
    stream = io.StringIO()
    progress = Progress(store, stream, interactive=False, interval=0.01)
    arrivals = SubmitOnFirstClaim(store, [{"payload": {"i": i}} for i in range(5)])
    # When a run works through them
    Pipeline("tests.engines:echo", small_run(), store, client, subscribers=[arrivals, progress]).run(until_empty=True)
    lines = stream.getvalue().splitlines()
    # Then every line counts against the 40 queued at the start, however far the database ran ahead
    assert lines and all(re.search(r" \d+/40 done", line) for line in lines), lines
    # and the last one says what arrived
    assert " 45/40 done (+5 arrived) " in lines[-1]


def test_failures_show_as_they_happen_not_only_once_their_retries_are_spent(
    store: ContextStore, client: Client
) -> None:
    # Given 30 contexts of which 3 fail every try, retried once a second later
    store.submit([{"payload": {"i": i, "bad": i % 10 == 0}} for i in range(30)])
    stream = io.StringIO()
    progress = Progress(store, stream, interactive=False, interval=0.02)
    settings = small_run(retry={"context_retries": 1, "backoff_seconds": [1]})
    # When a run works through them
    report = Pipeline("tests.engines:fail_when_flagged", settings, store, client, subscribers=[progress]).run(
        until_empty=True
    )
    assert (report.completed, report.failed, report.retried) == (27, 3, 3)
    lines = stream.getvalue().splitlines()
    # Then while the bad rows waited for their retry, the line already counted their failures
    assert any(line.endswith("failures 3 (failed 0, retried 3)  deferred 0") for line in lines[:-1]), lines
    # and at the end, every failed try: the first of each, and the second that failed it for good
    assert " 30/30 done " in lines[-1] and lines[-1].endswith("failures 6 (failed 3, retried 3)  deferred 0")


def test_a_service_run_states_its_idle_time_apart_from_its_working_time(
    store: ContextStore, loops: Callable[..., Loop]
) -> None:
    # Given a run as a service (no --until-empty) on an empty queue, one worker thread
    settings = small_run()
    settings["dask"].update(n_workers=1, threads_per_worker=1, processes=False)
    loop = loops(settings, "tests.engines:nap")
    # When it has waited for work: its first progress line comes 10 s after it started, nothing claimed
    assert loop.stderr is not None
    first = next(line for line in iter(loop.stderr.readline, "") if line.startswith("["))
    assert " 0/0 done " in first
    # and then 40 contexts of 50 ms arrive, are done, and it is stopped
    store.submit([{"payload": {"i": i, "sleep": 0.05}} for i in range(40)])
    until(lambda: store.status_counts()["completed"] == 40, "the 40 contexts done")
    loop.send_signal(signal.SIGTERM)
    _, err = loop.communicate(timeout=60)
    assert loop.returncode == 0, err
    # Then its summary's rate is over the time it worked, and the waiting is stated apart
    summary = next(line for line in reversed(err.splitlines()) if line.startswith("completed "))
    assert summary.startswith("completed 40, failed 0, retried 0, deferred 0, "), summary
    found = SUMMARY.search(summary)
    assert found, summary
    rate, working, idle = map(float, found.groups())
    assert idle >= 10.0
    # 40 over the working seconds, as printed to a tenth (at least 2 s of naps: never near zero)
    assert 40 / (working + 0.05) - 0.05 <= rate <= 40 / (working - 0.05) + 0.05
