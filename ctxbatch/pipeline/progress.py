"""Live progress of a run: a bar on a terminal, plain periodic log lines otherwise (a subscriber).

What the line says (issue 21: its total moved while a run went, and `failed 0` showed until the
end with 3% bad rows):
- the total is what the run's queues held when it started (pending or processing), and the
  contexts that arrived in them since, shown apart: `566/996 done (+5 arrived)`;
- failures are counted as their partitions are written, whether the context is retried or failed
  for good: `failures 20 (failed 3, retried 17)`; deferrals (RetryLater) are not failures, and are
  counted apart.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TextIO

from ctxbatch.io import ContextStore, Status
from ctxbatch.pipeline.events import RunFinished, RunStarted, Subscriber
from ctxbatch.pipeline.report import RunReport

BAR_WIDTH = 28
# Counted in this order: a claim between the two counts then leaves its contexts out, not in twice.
WAITING = (Status.PROCESSING, Status.PENDING)


@dataclass(frozen=True)
class Total:
    """What a run has to do: its queues' contexts waiting when it started, and those that arrived since."""

    queued: int = 0
    arrived: int = 0

    @property
    def whole(self) -> int:
        return self.queued + self.arrived

    def of(self, done: int) -> str:
        """`566/996 done (+5 arrived)`."""
        return f"{done}/{self.queued} done" + (f" (+{self.arrived} arrived)" if self.arrived else "")


def failures(report: RunReport) -> str:
    """`failures 20 (failed 3, retried 17)`: every failed try so far, for good or to run again."""
    return f"failures {report.failed + report.retried} (failed {report.failed}, retried {report.retried})"


def progress_line(report: RunReport, total: Total) -> str:
    """`[#####.....] 1200/3000 done (+5 arrived)  812.5/s  failures 42 (failed 12, retried 30)  deferred 4`."""
    done = report.completed + report.failed
    filled = min(int(BAR_WIDTH * done / total.whole), BAR_WIDTH) if total.whole else BAR_WIDTH
    return (
        f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {total.of(done)}  {report.rate:.1f}/s  "
        f"{failures(report)}  deferred {report.deferred}"
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
        self._queues: list[str] = []
        self._start: tuple[int, int] | None = None  # (waiting, all) in the run's queues when it started
        self._total = Total()
        self._thread: threading.Thread | None = None

    def on_run_started(self, event: RunStarted) -> None:
        self._report, self._total = event.report, Total()
        self._queues = list(event.settings.worker.queues)
        self._start = None
        self._read_start()  # before the first claim: the loop tells every subscriber before it claims
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

    def _read_start(self) -> None:
        try:
            self._start = (self._store.in_queues(self._queues, WAITING), self._store.in_queues(self._queues))
        except Exception:  # a progress line is never worth stopping a run for: the next tick tries again
            return

    def _show(self) -> None:
        try:
            if self._start is None:
                self._read_start()
            if self._start is not None:
                waiting, held = self._start
                # Contexts are never deleted: whatever the queues hold beyond what they held then arrived since.
                self._total = Total(waiting, max(self._store.in_queues(self._queues) - held, self._total.arrived))
        except Exception:  # a progress line is never worth stopping a run for
            pass
        self._draw(self._report, self._total)

    def _draw(self, report: RunReport, total: Total) -> None:
        line = progress_line(report, total)
        with self._lock:
            self._stream.write(f"\r{line}\x1b[K" if self._interactive else f"{line}\n")
            self._stream.flush()
