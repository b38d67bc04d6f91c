"""Live progress of a run: a bar on a terminal, plain periodic log lines otherwise (a subscriber)."""

from __future__ import annotations

import threading
from typing import TextIO

from ctxbatch.io import ContextStore
from ctxbatch.pipeline.events import RunFinished, RunStarted, Subscriber
from ctxbatch.pipeline.report import RunReport

BAR_WIDTH = 28


def progress_line(report: RunReport, total: int) -> str:
    """`[#####.....] 1200/3000 done  812.5/s  failed 12  retried 30  deferred 4`."""
    done = report.completed + report.failed
    filled = int(BAR_WIDTH * done / total) if total else BAR_WIDTH
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} done  {report.rate:.1f}/s  "
        f"failed {report.failed}  retried {report.retried}  deferred {report.deferred}"
    )


class Progress(Subscriber):
    """Ticks in a thread from the run's start to its end: `Pipeline(..., subscribers=[Progress(store, stream)])`."""

    def __init__(
        self,
        store: ContextStore,
        stream: TextIO,
        interactive: bool | None = None,
        interval: float | None = None,
    ) -> None:
        self._store = store
        self._stream = stream
        self._interactive = stream.isatty() if interactive is None else interactive
        self._interval = interval or (0.5 if self._interactive else 10.0)
        self._report = RunReport()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._total = 0
        self._thread: threading.Thread | None = None

    def on_run_started(self, event: RunStarted) -> None:
        self._report, self._total = event.report, 0
        self._done.clear()
        self._thread = threading.Thread(target=self._tick_until_done, name="ctxbatch-progress", daemon=True)
        self._thread.start()

    def on_run_finished(self, event: RunFinished) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._show()
        if self._interactive:
            self._stream.write("\n")
            self._stream.flush()

    def _tick_until_done(self) -> None:
        while not self._done.wait(self._interval):
            self._show()

    def say(self, message: str) -> None:
        """A line of its own above the bar (the bar is drawn again on the next tick)."""
        with self._lock:
            self._stream.write(f"\r\x1b[K{message}\n" if self._interactive else f"{message}\n")
            self._stream.flush()

    def _show(self) -> None:
        try:
            counts = self._store.status_counts()
        except Exception:  # a progress line is never worth stopping a run for
            return
        report = self._report
        # Done plus still waiting; never shrinking, as the database runs a little ahead of the report.
        self._total = max(self._total, report.completed + report.failed + counts["pending"] + counts["processing"])
        self._draw(report, self._total)

    def _draw(self, report: RunReport, total: int) -> None:
        line = progress_line(report, total)
        with self._lock:
            self._stream.write(f"\r{line}\x1b[K" if self._interactive else f"{line}\n")
            self._stream.flush()
