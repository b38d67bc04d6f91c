"""Token usage on a real run: each batch's sum, the stats, the loop's `ctxbatch_tokens_total{kind}` and the page."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import pytest
from conftest import small_run
from distributed import Client
from engines import tokens_of
from test_monitoring_run import scrape

from ctxbatch import ContextStore, Pipeline, Subscriber
from ctxbatch.monitoring.page import DashboardView, headline
from ctxbatch.monitoring.snapshot import read_snapshot
from ctxbatch.pipeline.events import PartitionFinished, RunFinished

CLUSTER = {"n_workers": 2}


def expected(rows: range, bad: Collection[int] = ()) -> dict[str, int]:
    """The tokens openai_answer reports for these payloads, leaving out the failed ones, summed by hand."""
    found = [tokens_of(i) for i in rows if i not in bad]
    return {kind: sum(t[n] for t in found) for n, kind in enumerate(("input", "output", "total"))}


class Scrape(Subscriber):
    """Scrapes the loop's metrics page when the run is over (it is served until the run returns)."""

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None
        self.samples: dict[str, Any] = {}
        self.usage: list[dict[str, int]] = []

    def on_partition_finished(self, event: PartitionFinished) -> None:
        self.usage.append(event.usage)

    def on_run_finished(self, event: RunFinished) -> None:
        assert self.pipeline is not None and self.pipeline.monitor is not None and self.pipeline.monitor.url
        self.samples = scrape(self.pipeline.monitor.url)


def test_a_run_sums_each_batchs_usage_counts_its_tokens_and_shows_them(store: ContextStore, client: Client) -> None:
    # Given two batches whose results report usage in OpenAI's shapes (chat, batch lines, Responses,
    # embeddings), three rows that fail, and a loop serving its metrics
    bad = {5, 17, 22}
    first = store.submit([{"payload": {"i": i, "bad": i in bad}} for i in range(24)])
    second = store.submit([{"payload": {"i": i}} for i in range(24, 40)])
    settings = small_run(batch_size=7)
    settings["monitoring"] = {"metrics_port": 0, "default_alerts": False}
    scrape_at_end = Scrape()
    pipeline = Pipeline("tests.engines:openai_answer", settings, store, client, subscribers=[scrape_at_end])
    scrape_at_end.pipeline = pipeline

    # When the loop runs until the queue is empty
    report = pipeline.run(until_empty=True)
    assert (report.completed, report.failed) == (37, 3)

    # Then each batch's status holds the usage of its completed results, summed exactly
    assert store.batch_status(first)["usage"] == expected(range(24), bad)
    assert store.batch_status(second)["usage"] == expected(range(24, 40))
    everything = expected(range(40), bad)
    # And the loop counted the same tokens, by kind
    tokens = scrape_at_end.samples["ctxbatch_tokens_total"]
    assert {labels[0][1]: value for labels, value in tokens.items()} == everything
    assert {kind: sum(u.get(kind, 0) for u in scrape_at_end.usage) for kind in everything} == everything
    # And the stats of the window count them too, as tokens per second
    stats = store.stats(window_seconds=600)
    assert stats["tokens"] == everything
    assert stats["tokens_per_second"] == everything["total"] / 600 > 0

    # And the dashboard page shows them: in its headline, and as a line on the throughput plot
    snapshot = read_snapshot(store, 600, 15)
    assert f"tokens <b>{everything['total']:,}</b> (<b>{everything['total'] / 600:,.1f}/s</b>)" in headline(snapshot)
    view = DashboardView(list(store.levels))
    view.show(snapshot)
    per_second = view.sources["tokens"].data["tokens_per_second"]
    assert sum(per_second) * 15 == pytest.approx(everything["total"])
