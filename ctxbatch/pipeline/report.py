"""RunReport: what a run did, kept up to date while it runs (by the RunCounters subscriber).

Its rate is over the run's working time, the seconds it had a batch in flight; the rest of its wall
time is idle (a service loop waiting for work, a batch waiting to fill) and is stated apart
(issue 21: a run's summary had counted 60 s of idle waiting into its rate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ctxbatch.display import Link, html_table


@dataclass
class RunReport:
    completed: int = 0
    failed: int = 0
    retried: int = 0
    deferred: int = 0  # RetryLater: pending again, the try not counted
    lost: int = 0
    critical: int = 0
    batches: int = 0
    claimed: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    worked: float = 0.0  # seconds with a batch in flight, up to `busy_since`
    busy_since: float | None = None  # since when a batch has been in flight, while one is
    stopped_by: str | None = None
    dashboard_link: str | None = None
    page_link: str | None = None  # the ctxbatch page of that dashboard, when its scheduler serves it
    wanted_workers: int | None = None  # with `dask.adaptive`: the worker count the queue calls for
    scaled_to: int | None = None  # the worker count the run last scaled its own cluster to
    decisions: list[Any] = field(default_factory=list)
    # An async engine's limit on calls in flight per worker (address -> limit), as last reported
    engine_concurrency: dict[str, int] = field(default_factory=dict)

    @property
    def wall_seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def working_seconds(self) -> float:
        """Seconds with a batch in flight (claimed, running, or held for a retry)."""
        busy = 0.0 if self.busy_since is None else (self.finished or time.monotonic()) - self.busy_since
        return self.worked + busy

    @property
    def idle_seconds(self) -> float:
        """Wall time with no batch in flight: waiting for work, or for a batch to fill."""
        return max(self.wall_seconds - self.working_seconds, 0.0)

    def began_working(self, now: float) -> None:
        """A batch went in flight with none before it."""
        self.busy_since = now

    def stopped_working(self, now: float) -> None:
        """The last batch in flight is done (or the run is over)."""
        if self.busy_since is not None:
            self.worked += now - self.busy_since
            self.busy_since = None

    @property
    def rate(self) -> float:
        """Contexts settled (completed or failed for good) per second of working time."""
        working = self.working_seconds
        return (self.completed + self.failed) / working if working > 0 else 0.0

    def concurrency_line(self) -> str:
        """`37 + 41 = 78 calls in flight`: each worker's limit, and the window they make."""
        limits = list(self.engine_concurrency.values())
        return f"{' + '.join(map(str, limits))} = {sum(limits)} calls in flight"

    def summary_line(self) -> str:
        return (
            f"completed {self.completed}, failed {self.failed}, retried {self.retried}, deferred {self.deferred}, "
            f"batches {self.batches}, {self.rate:.1f} contexts/s over {self.working_seconds:.1f} s working, "
            f"{self.idle_seconds:.1f} s idle"
        )

    def __repr__(self) -> str:
        return (
            f"<RunReport completed={self.completed} failed={self.failed} retried={self.retried} "
            f"deferred={self.deferred} lost={self.lost} critical={self.critical} batches={self.batches} "
            f"working={self.working_seconds:.1f}s idle={self.idle_seconds:.1f}s rate={self.rate:.1f}/s>"
        )

    def _repr_html_(self) -> str:
        link = Link(self.dashboard_link) if self.dashboard_link else None
        rows = [
            ("completed", self.completed),
            ("failed", self.failed),
            ("retried", self.retried),
            ("deferred", self.deferred),
            ("lost", self.lost),
            ("critical", self.critical),
            ("batches", self.batches),
            ("working seconds", round(self.working_seconds, 1)),
            ("idle seconds", round(self.idle_seconds, 1)),
            ("contexts/s (working)", round(self.rate, 1)),
            ("stopped by", self.stopped_by or ("running" if self.finished is None else None)),
            ("Dask dashboard", link),
            ("ctxbatch page", Link(self.page_link) if self.page_link else None),
        ]
        if self.engine_concurrency:
            rows.append(("engine concurrency", self.concurrency_line()))
        if self.wanted_workers is not None:
            rows.append(("wanted workers", self.wanted_workers))
        if self.decisions:
            last = self.decisions[-1]
            rows.append(("last batch size", f"{last.size}: {last.reason}"))
        return html_table("RunReport", rows)
