"""The run's progress display: a bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import io

from ctxbatch import ContextStore, Settings
from ctxbatch.pipeline.events import RunFinished, RunStarted
from ctxbatch.pipeline.progress import Progress, progress_line
from ctxbatch.pipeline.report import RunReport


def run_with(progress: Progress, report: RunReport, *messages: str) -> None:
    """The run's start and end as the loop announces them, with messages said in between."""
    progress.on_run_started(RunStarted("owner", "echo", Settings(), None, report))
    for message in messages:
        progress.say(message)
    progress.on_run_finished(RunFinished(report))


def test_the_line_shows_done_of_total_rate_and_failures() -> None:
    report = RunReport(completed=30, failed=10, retried=5)
    line = progress_line(report, 80)
    assert line.startswith("[" + "#" * 14 + "." * 14 + "]")
    assert "40/80 done" in line
    assert "failed 10  retried 5" in line


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
    # The last line is the final state: 2 done of the 2 reported plus the 6 still pending.
    assert "2/8 done" in lines[-1]
    assert "\r" not in stream.getvalue()


def test_on_a_terminal_it_redraws_one_line(store: ContextStore) -> None:
    stream = io.StringIO()
    report = RunReport(completed=1)
    run_with(Progress(store, stream, interactive=True, interval=0.01), report, "hello")
    text = stream.getvalue()
    assert "\r\x1b[Khello\n" in text
    assert text.endswith("\x1b[K\n")
