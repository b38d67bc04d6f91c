"""Rich display: the HTML tables Jupyter shows (parsed, not grepped) and the one-line reprs elsewhere."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from ctxbatch.io import BatchStatus, ContextStore
from ctxbatch.pipeline import RunReport


class TableReader(HTMLParser):
    """Reads a two-column table into {label: value text} and collects the links."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, str] = {}
        self.links: list[str] = []
        self.caption = ""
        self._cells: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("th", "td", "caption"):
            self._in = tag
            if tag != "caption":
                self._cells.append("")
        elif tag == "a":
            self.links.append(dict(attrs)["href"] or "")
        elif tag == "tr":
            self._cells = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and len(self._cells) == 2:
            self.rows[self._cells[0]] = self._cells[1]
        if tag in ("th", "td", "caption"):
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "caption":
            self.caption += data
        elif self._in:
            self._cells[-1] += data


def read_table(markup: str) -> TableReader:
    reader = TableReader()
    reader.feed(markup)
    reader.close()
    return reader


def test_batch_status_is_the_design_json_and_a_table(store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {"i": i}} for i in range(3)], name="<three>")
    status = store.batch_status(batch_id)
    assert isinstance(status, BatchStatus)
    assert json.loads(json.dumps(status)) == dict(status)
    assert set(status) == {
        "batch_id",
        "name",
        "queue",
        "status",
        "counts",
        "created_at",
        "updated_at",
        "expires_at",
        "expired_at",
        "cancelled_at",
        "failed_at",
        "usage",
    }
    table = read_table(status._repr_html_())
    assert table.caption == "Batch status"
    assert table.rows["batch"] == batch_id
    assert table.rows["name"] == "<three>"  # escaped in the markup, read back as written
    assert table.rows["pending"] == "3" and table.rows["total"] == "3"
    assert table.rows["tokens"] == "0 (0 input, 0 output)"
    assert (
        repr(status)
        == f"<BatchStatus {batch_id} '<three>' pending: 0 completed, 0 failed, 3 pending, 0 processing of 3>"
    )


def test_run_report_table_links_the_dashboard() -> None:
    report = RunReport(completed=1200, failed=3, retried=5, batches=4, dashboard_link="http://127.0.0.1:8787/status")
    report.finished = report.started + 3.0
    report.worked = 2.0  # a batch in flight for 2 of its 3 s
    table = read_table(report._repr_html_())
    assert table.rows["completed"] == "1,200"
    assert table.rows["failed"] == "3"
    assert table.rows["contexts/s (working)"] == "602"
    assert (table.rows["working seconds"], table.rows["idle seconds"]) == ("2", "1")
    assert "http://127.0.0.1:8787/status" in table.links
    assert repr(report).startswith("<RunReport completed=1200 failed=3 retried=5")


def test_run_report_without_a_dashboard_shows_a_dash() -> None:
    table = read_table(RunReport()._repr_html_())
    assert table.rows["Dask dashboard"] == "\N{EN DASH}"
    assert table.links == []


def test_stats_render_as_a_table_and_stay_the_json(store: ContextStore) -> None:
    store.submit([{"payload": {"i": i}, "priority": 5} for i in range(4)])
    claim = store.claim(4, "loop")
    store.complete(claim, {cid: {"ok": True} for cid in claim.ids[:3]})
    stats = store.stats(window_seconds=60)
    assert json.loads(json.dumps(stats)) == dict(stats)
    table = read_table(stats._repr_html_())
    assert table.caption == "Stats"
    assert table.rows["completed"] == "3"
    assert table.rows["success rate"] == "100.0%"
    assert table.rows["in flight"] == "1"
    assert table.rows["pending high"] == "0"
    assert repr(stats).startswith("<Stats last 60s: 3 completed, 0 failed, ")
    assert "/s working (" in repr(stats) and "/s last 60 s, 0.050/s over 60 s, success 100.0%" in repr(stats)
