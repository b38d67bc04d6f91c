"""A run's progress in a Jupyter notebook: one display, updated in place, with the dashboard links.

IPython's `display(..., display_id=True)` shows it once and `.update()` redraws that same output,
so a notebook gets one live bar instead of a stream of lines. Outside a kernel nothing is shown.
"""

from __future__ import annotations

import html
import time
from typing import Any

from ctxbatch.pipeline.report import RunReport

# Redraw at most this often: a display message per partition would flood the notebook.
UPDATE_SECONDS = 0.5


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not a terminal IPython, not plain Python)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def progress_html(report: RunReport, total: int, links: dict[str, str], finished: bool = False) -> str:
    """A <progress> bar, the counts, and the dashboard links."""
    done = report.completed + report.failed
    state = f"finished ({report.stopped_by})" if finished else "running"
    anchors = " &middot; ".join(
        f'<a href="{html.escape(url)}" target="_blank">{html.escape(name)}</a>' for name, url in links.items()
    )
    return (
        f'<div class="ctxbatch-progress"><b>ctxbatch run</b> {state}: {done:,}/{total:,} done &middot; '
        f"{report.rate:.1f}/s &middot; failed {report.failed:,} &middot; retried {report.retried:,}<br>"
        f'<progress value="{done}" max="{max(total, 1)}" style="width:28em"></progress>'
        f"{'<br>' + anchors if anchors else ''}</div>"
    )


class NotebookProgress:
    """Shows one display for the run and redraws it (throttled) as partitions finish."""

    def __init__(self) -> None:
        self.links: dict[str, str] = {}
        self._handle: Any = None
        self._total = 0
        self._drawn = 0.0

    def start(self, report: RunReport, total: int, links: dict[str, str]) -> None:
        from IPython.display import HTML, display

        self.links = links
        self._total = total
        self._handle = display(HTML(progress_html(report, total, links)), display_id=True)
        self._drawn = time.monotonic()

    def update(self, report: RunReport, waiting: int, finished: bool = False) -> None:
        """Redraw with `waiting` contexts still pending or processing (the total never shrinks)."""
        if self._handle is None:
            return
        self._total = max(self._total, report.completed + report.failed + waiting)
        now = time.monotonic()
        if not finished and now - self._drawn < UPDATE_SECONDS:
            return
        from IPython.display import HTML

        self._handle.update(HTML(progress_html(report, self._total, self.links, finished)))
        self._drawn = now
