"""A run's progress in a Jupyter notebook: one display, updated in place, with the dashboard links.

The terminal's Progress, drawn differently: IPython's `display(..., display_id=True)` shows the
bar once and each tick's `.update()` redraws that same output, so a notebook gets one live bar
instead of a stream of lines. The loop adds it by itself when it runs inside a kernel.
"""

from __future__ import annotations

import html
import sys
from typing import Any

from ctxbatch.io import ContextStore
from ctxbatch.pipeline.events import RunFinished, RunStarted
from ctxbatch.pipeline.progress import Progress, Total, failures
from ctxbatch.pipeline.report import RunReport

UPDATE_SECONDS = 0.5


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not a terminal IPython, not plain Python)."""
    if "IPython" not in sys.modules:  # not imported: not in IPython, and no need to pay for importing it
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def progress_html(report: RunReport, total: Total, finished: bool = False) -> str:
    """A <progress> bar, the counts (as the terminal's line counts them), and the dashboard links."""
    done = report.completed + report.failed
    state = f"finished ({report.stopped_by or 'stopped'})" if finished else "running"
    links = {"Dask dashboard": report.dashboard_link, "ctxbatch page": report.page_link}
    anchors = " &middot; ".join(
        f'<a href="{html.escape(url)}" target="_blank">{name}</a>' for name, url in links.items() if url
    )
    return (
        f'<div class="ctxbatch-progress"><b>ctxbatch run</b> {state}: {html.escape(total.of(done))} &middot; '
        f"{report.rate:.1f}/s &middot; {failures(report)} &middot; deferred {report.deferred}<br>"
        f'<progress value="{done}" max="{max(total.whole, 1)}" style="width:28em"></progress>'
        f"{'<br>' + anchors if anchors else ''}</div>"
    )


class NotebookProgress(Progress):
    """Progress as one HTML display that each tick updates in place."""

    def __init__(self, store: ContextStore, interval: float = UPDATE_SECONDS) -> None:
        super().__init__(store, sys.stdout, interactive=False, interval=interval)
        self._handle: Any = None
        self._finished = False

    def on_run_started(self, event: RunStarted) -> None:
        from IPython.display import HTML, display

        self._finished = False
        self._handle = display(HTML(progress_html(event.report, Total())), display_id=True)
        super().on_run_started(event)

    def on_run_finished(self, event: RunFinished) -> None:
        self._finished = True
        super().on_run_finished(event)  # stops the ticks, then draws once more

    def _draw(self, report: RunReport, total: Total) -> None:
        from IPython.display import HTML

        if self._handle is not None:
            self._handle.update(HTML(progress_html(report, total, self._finished)))
