"""The ctxbatch dashboard page: a Bokeh document of plots that follows the database every few seconds.

Throughput (with the tokens per second its results reported, on an axis of their own), latency
p50/p95 and success rate over time (the timeline), the queue by priority level,
the batch size each loop chose (its reason on hover and beside the plot), the batches in flight and
the alerts firing. Reads run in the page source's thread, never on the scheduler's event loop; the
plots are updated on the document's next tick. Each data source has a name (`throughput`,
`latency`, ...) so that a browser test can ask Bokeh what each plot holds.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from typing import Any, cast

from bokeh.document import Document, without_document_lock
from bokeh.layouts import column, gridplot, row
from bokeh.models import ColumnDataSource, DataRange1d, FactorRange, HoverTool, LinearAxis
from bokeh.models.widgets.markups import Div
from bokeh.models.widgets.tables import DataTable, TableColumn
from bokeh.plotting import figure

from ctxbatch.display import iso_time
from ctxbatch.io.stats import per_second
from ctxbatch.monitoring.snapshot import Snapshot

log = logging.getLogger("ctxbatch.monitoring")

REFRESH_MS = 2000
HEIGHT = 220
ALERT_COLUMNS = ("alertname", "since", "value", "loop")
BLUE, ORANGE, GREEN, RED, PURPLE = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"


def _figure(title: str, y_label: str, **kwargs: Any) -> Any:
    return figure(
        title=title,
        height=HEIGHT,
        sizing_mode="stretch_width",
        x_axis_type="datetime",
        y_axis_label=y_label,
        tools="pan,wheel_zoom,box_zoom,reset,save",
        toolbar_location="above",
        **kwargs,
    )


class DashboardView:
    """The page's figures and their data sources; `show(snapshot)` replaces what they hold."""

    def __init__(self, levels: list[str]) -> None:
        self.levels = levels
        self.sources = {
            name: ColumnDataSource(data, name=name)
            for name, data in {
                "throughput": {"at": [], "throughput": []},
                "tokens": {"at": [], "tokens_per_second": []},
                "latency": {"at": [], "p50": [], "p95": []},
                "success": {"at": [], "success_rate": []},
                "queue": {"level": levels, "pending": [0] * len(levels)},
                "batch_size": {"at": [], "size": [], "partitions": [], "owner": [], "reason": []},
                "in_flight": {"at": [], "batches": [], "contexts": []},
                "alerts": {name: [] for name in ALERT_COLUMNS},
            }.items()
        }
        self.headline = Div(text="Waiting for the first reading...", sizing_mode="stretch_width")
        self.reason = Div(text="", width=260)
        self.alerts_note = Div(text="")
        self.layout = column(
            self.headline, self._grid(), row(self._alerts_table(), self.alerts_note), sizing_mode="stretch_width"
        )

    def _grid(self) -> Any:
        s = self.sources
        throughput = _figure("Throughput", "contexts/s")
        per_second = {"x": "at", "y": "throughput", "source": s["throughput"], "legend_label": "contexts/s"}
        contexts = [
            throughput.line(**per_second, color=BLUE, line_width=2),
            # Markers too: a bucket between two empty ones is a point, not a line.
            throughput.scatter(**per_second, color=BLUE, size=6),
        ]
        self._tokens_axis(throughput, contexts)
        latency = _figure("Latency (submitted to finished)", "seconds", x_range=throughput.x_range)
        for name, color in (("p50", BLUE), ("p95", ORANGE)):
            latency.line("at", name, source=s["latency"], color=color, line_width=2, legend_label=name)
            latency.scatter("at", name, source=s["latency"], color=color, size=6, legend_label=name)
        latency.legend.location = "top_left"
        success = _figure("Success rate", "completed / finished", x_range=throughput.x_range, y_range=(0, 1.05))
        success.line("at", "success_rate", source=s["success"], color=GREEN, line_width=2)
        success.scatter("at", "success_rate", source=s["success"], color=GREEN, size=7)
        queue = figure(
            title="Queue length by priority level (pending)",
            x_range=FactorRange(factors=self.levels),
            y_range=DataRange1d(start=0),
            height=HEIGHT,
            sizing_mode="stretch_width",
            tools="save",
            toolbar_location="above",
        )
        queue.vbar(x="level", top="pending", source=s["queue"], width=0.7, color=ORANGE)
        sizes = _figure("Batch size chosen (every loop)", "contexts per batch")
        sizes.scatter("at", "size", source=s["batch_size"], size=7, color=BLUE)
        sizes.step("at", "size", source=s["batch_size"], color=BLUE, alpha=0.4, mode="after")
        sizes.add_tools(
            HoverTool(
                tooltips=[("size", "@size in @partitions partitions"), ("loop", "@owner"), ("why", "@reason")],
                formatters={"@at": "datetime"},
            )
        )
        in_flight = _figure("Batches in flight", "batches", y_range=DataRange1d(start=0))
        in_flight.step("at", "batches", source=s["in_flight"], color=RED, line_width=2, mode="after")
        in_flight.scatter("at", "batches", source=s["in_flight"], color=RED, size=5)
        return gridplot(
            [
                [throughput, latency],
                [success, queue],
                [row(sizes, self.reason, sizing_mode="stretch_width"), in_flight],
            ],
            sizing_mode="stretch_width",
            merge_tools=False,
        )

    def _tokens_axis(self, throughput: Any, contexts: list[Any]) -> None:
        """Tokens per second on the throughput plot, against an axis on its right; each axis fits its own lines."""
        throughput.y_range = DataRange1d(start=0, renderers=contexts)
        tokens_range = DataRange1d(start=0)
        throughput.extra_y_ranges = {"tokens": tokens_range}
        throughput.add_layout(LinearAxis(y_range_name="tokens", axis_label="tokens/s"), "right")
        per_second = {"x": "at", "y": "tokens_per_second", "source": self.sources["tokens"], "y_range_name": "tokens"}
        tokens_range.renderers = [
            throughput.line(**per_second, color=PURPLE, line_width=2, legend_label="tokens/s"),
            throughput.scatter(**per_second, color=PURPLE, size=6, legend_label="tokens/s"),
        ]
        throughput.legend.location = "top_left"

    def _alerts_table(self) -> DataTable:
        columns = [TableColumn(field=name, title=name) for name in ALERT_COLUMNS]
        return DataTable(source=self.sources["alerts"], columns=columns, height=120, width=800, index_position=None)

    def show(self, snapshot: Snapshot) -> None:
        """Replace every plot's data with the snapshot's."""
        stats, timeline = snapshot.stats, snapshot.timeline
        at = list(timeline.index) if len(timeline) else []
        if len(timeline):
            finished = timeline["completed"] + timeline["failed"]
            success = (timeline["completed"] / finished.where(finished > 0)).astype(float)
            self.sources["throughput"].data = {"at": at, "throughput": list(timeline["throughput"])}
            self.sources["tokens"].data = {"at": at, "tokens_per_second": list(timeline["tokens_per_second"])}
            self.sources["latency"].data = {
                "at": at,
                "p50": list(timeline["latency_p50"]),
                "p95": list(timeline["latency_p95"]),
            }
            self.sources["success"].data = {"at": at, "success_rate": list(success)}
        queue = stats.get("queue_length", {})
        self.sources["queue"].data = {"level": self.levels, "pending": [queue.get(level, 0) for level in self.levels]}
        decisions = snapshot.decisions
        self.sources["batch_size"].data = {
            key: [d.get(key) for d in decisions] for key in ("at", "size", "partitions", "owner", "reason")
        }
        history = snapshot.in_flight_history or [(snapshot.at, snapshot.in_flight.batches, snapshot.in_flight.contexts)]
        self.sources["in_flight"].data = {
            "at": [at for at, _, _ in history],
            "batches": [batches for _, batches, _ in history],
            "contexts": [contexts for _, _, contexts in history],
        }
        alerts = snapshot.alerts
        self.sources["alerts"].data = {
            key: ["" if a.get(key) is None else str(a[key]) for a in alerts] for key in ALERT_COLUMNS
        }
        self.alerts_note.text = "" if alerts else "<i>No alerts firing.</i>"
        last = decisions[-1] if decisions else None
        self.reason.text = (
            f"<b>Last decision</b> ({html.escape(str(last.get('owner')))}):<br>size {last.get('size')} "
            f"in {last.get('partitions')} partitions<br><i>{html.escape(str(last.get('reason')))}</i>"
            if last
            else "<i>No sizing decisions in the window yet.</i>"
        )
        self.headline.text = headline(snapshot)


def headline(snapshot: Snapshot) -> str:
    """One line of the figures that matter now."""
    stats = snapshot.stats
    latency = stats.get("latency_seconds") or {}
    rate = stats.get("success_rate")

    def seconds(value: Any) -> str:
        return "-" if value is None else f"{value:.2f} s"

    tokens = stats.get("tokens") or {}
    # Over the time work was done and over the last minute: the window's average counts idle time too.
    parts = [
        f"throughput <b>{per_second(stats.get('working_throughput_per_second'))}</b> working "
        f"({seconds(stats.get('working_seconds'))}), "
        f"<b>{per_second(stats.get('recent_throughput_per_second'))}</b> last {stats['recent_seconds']:g} s",
        f"tokens <b>{tokens.get('total', 0):,}</b> (<b>{stats.get('tokens_per_second', 0):,.1f}/s</b>)",
        f"success <b>{'-' if rate is None else f'{rate:.1%}'}</b>",
        f"latency p50 <b>{seconds(latency.get('p50'))}</b> p95 <b>{seconds(latency.get('p95'))}</b>",
        f"pending <b>{sum((stats.get('queue_length') or {}).values()):,}</b>",
        f"expired <b>{stats.get('expired', 0):,}</b>",
        f"in flight <b>{snapshot.in_flight.batches}</b> batches ({snapshot.in_flight.contexts:,} contexts)",
        f"alerts firing <b>{len(snapshot.alerts)}</b>",
    ]
    window = engine_window(snapshot.decisions)
    if window:
        parts.append(f"engine concurrency <b>{window}</b> calls in flight allowed")
    span = stats.get("window_seconds")
    updated = iso_time(snapshot.at)
    figures = " &middot; ".join(parts)
    return f"<h3 style='margin:4px 0'>ctxbatch</h3>{figures}<br><small>last {span} s, updated {updated}</small>"


def engine_window(decisions: list[dict[str, Any]]) -> int:
    """Async engine calls in flight the workers allow, summed over the loops (each loop's newest decision)."""
    newest = {d.get("owner"): d.get("window") for d in decisions}  # oldest first: the last one wins
    return sum(int(window) for window in newest.values() if window)


def build(doc: Document, levels: list[str], read: Callable[[], Any]) -> DashboardView:
    """Fill `doc` with the page; `read()` is an awaitable that returns a Snapshot (run off the event loop)."""
    view = DashboardView(levels)
    doc.add_root(view.layout)
    busy = False
    tab = doc.session_context  # None outside a server

    def show(update: Callable[[], None]) -> None:
        # The tab may have gone while the database was read: its session destroyed, its document
        # emptied of callbacks. Nothing to show then (an update would raise).
        if tab is None or not tab.destroyed:
            doc.add_next_tick_callback(update)

    @without_document_lock
    async def refresh() -> None:
        nonlocal busy
        if busy:  # a slow database: skip a tick rather than pile reads up
            return
        busy = True
        try:
            snapshot = await read()
        except Exception as exc:  # the page says what went wrong; the scheduler goes on
            log.warning("the ctxbatch dashboard could not read the database: %s", exc)
            message = f"<b>Could not read the database</b>: {html.escape(str(exc))}"
            show(lambda: setattr(view.headline, "text", message))
            return
        finally:
            busy = False
        show(lambda: view.show(snapshot))

    # Bokeh runs coroutine callbacks; its type hints know only plain ones.
    doc.add_next_tick_callback(cast(Any, refresh))
    doc.add_periodic_callback(cast(Any, refresh), REFRESH_MS)
    return view
