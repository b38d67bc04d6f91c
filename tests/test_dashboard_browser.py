"""The /ctxbatch page of a running loop, loaded in headless Chromium: Bokeh drew its plots, with data.

Chromium is a system package (Debian's `chromium`; `.ci/run` installs it). Without it this test
skips on a developer's machine, and fails under CI=true, where it must run.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import finished_at, settled_burst, until
from distributed import Client, LocalCluster

from ctxbatch import ContextStore, Pipeline
from ctxbatch.io import utcnow
from ctxbatch.monitoring.dashboard import show_page
from tests.browser import Browser, painted

pytestmark = pytest.mark.timeout(150)

# Rows per named data source of the page's Bokeh document, and how many hold a real number.
SOURCES_JS = """(() => {
  if (!window.Bokeh || !Bokeh.documents.length) return null;
  const found = {};
  for (const model of Bokeh.documents[0].all_models) {
    if (!model.name || !model.get_length) continue;
    const columns = Object.entries(model.data).filter(([key]) => key !== "at" && key !== "level");
    const numbers = columns.flatMap(([, values]) => Array.from(values))
      .filter(v => typeof v === "number" && isFinite(v) && v > 0);
    found[model.name] = {rows: model.get_length() || 0, positive: numbers.length};
  }
  return found;
})()"""
PLOTS = ("throughput", "tokens", "latency", "success", "queue", "batch_size", "in_flight")


@pytest.fixture
def running_loop(store: ContextStore) -> Iterator[str]:
    """A loop on its own LocalCluster working through a queue; yields the page address it announced."""
    # Rows of 20 ms on two workers: the run lasts well beyond the test, so the queue never drains.
    # Each result reports a chat completion's usage, for the tokens per second.
    store.submit([{"payload": {"i": i, "sleep": 0.02}, "priority": (i * 37) % 101} for i in range(4000)])
    said: list[str] = []
    config = {
        "dask": {"n_workers": 2},
        "worker": {
            "min_batch_size": 20,
            "max_batch_size": 200,
            "batch_size": 20,
            "target_batch_seconds": 1,
            "batch_timeout_seconds": 0,
        },
    }
    pipeline = Pipeline("tests.engines:nap_with_usage", config, store, announce=said.append)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            pipeline.run()
        except BaseException as exc:  # shown by the test, not lost in a thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="dashboard-loop")
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not any(line.startswith("ctxbatch: ") for line in said):
            assert not failure, failure
            assert time.monotonic() < deadline, f"the loop announced no page: {said}"
            time.sleep(0.1)
        yield next(line for line in said if line.startswith("ctxbatch: ")).removeprefix("ctxbatch: ")
    finally:
        pipeline.stop(now=True)
        thread.join(timeout=60)
    assert not thread.is_alive() and not failure, failure


def test_the_page_of_a_running_loop_draws_its_plots_with_data(chromium: str, running_loop: str, tmp_path: Any) -> None:
    with Browser(chromium) as browser:
        # When the page of the running loop is open in the browser
        browser.open(running_loop)

        # Then Bokeh's document holds data in every plot...
        def every_plot_has_data() -> Any:
            sources = browser.evaluate(SOURCES_JS)
            ready = sources and all(sources.get(name, {}).get("positive", 0) > 0 for name in PLOTS)
            # two reads of the batches in flight: a line to draw, not a lone point
            ready = ready and sources["in_flight"]["rows"] >= 2
            return sources if ready else None

        try:
            sources = until(every_plot_has_data, "data in every plot", timeout=60, every=0.25)
        except AssertionError:
            (tmp_path / "page.png").write_bytes(browser.screenshot())
            raise
        assert sources["queue"]["rows"] == 3  # one bar per priority level
        # ...and drew it: each plot colour is on the page (a first bucket is one marker of ~30 pixels)
        png = browser.screenshot()
        (tmp_path / "page.png").write_bytes(png)
        colours = painted(png)
        assert all(count > 20 for count in colours.values()), colours
        assert "ctxbatch" in browser.evaluate("document.title")


# The text of the page's headline, as the browser's Bokeh document holds it.
HEADLINE_JS = """(() => {
  if (!window.Bokeh || !Bokeh.documents.length) return null;
  for (const model of Bokeh.documents[0].all_models) {
    if (typeof model.text === "string" && model.text.includes("throughput")) return model.text;
  }
  return null;
})()"""


def test_the_headline_shows_the_rate_while_working_and_over_the_last_minute(
    chromium: str, store: ContextStore, tmp_path: Any
) -> None:
    # Given a burst of 100 contexts, claimed 100 s ago and finished over the next 10 s
    ids = settled_burst(store, 100)
    began = utcnow() - dt.timedelta(seconds=100)
    finished_at(store, ids, began, [began + dt.timedelta(seconds=1 + i // 10) for i in range(100)])
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster,
        Client(cluster) as client,
        Browser(chromium) as browser,
    ):
        # When its page is open
        browser.open(show_page(client, store))
        try:
            text = until(lambda: browser.evaluate(HEADLINE_JS), "the headline", timeout=60, every=0.25)
        except AssertionError:
            (tmp_path / "page.png").write_bytes(browser.screenshot())
            raise
    # Then the headline shows 10/s while working and nothing in the last minute, not 100 / 600 s
    plain = re.sub("<[^>]+>", "", text)
    assert "throughput 10/s working (10.00 s), 0/s last 60 s" in plain
