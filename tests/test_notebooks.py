"""The notebooks of notebooks/ run in a real IPython kernel against the test server, and tell their story."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from tests.notebook_kernel import NOTEBOOKS, execute, outputs, use_this_python

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def kernel_env(
    mongo_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """The kernel inherits the environment: this Python, and the test's server by URI, not by a guess."""
    monkeypatch.setenv("CTXBATCH_MONGO_URI", mongo_uri)
    for name, value in use_this_python(tmp_path_factory.mktemp("jupyter")).items():
        monkeypatch.setenv(name, value)
    yield
    with MongoClient(mongo_uri) as client:
        client.drop_database("notebook")


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path: Path) -> None:
    # Outputs hold ids, ports and timings that change on every run; README says how to produce them.
    cells = json.loads(path.read_text())["cells"]
    for cell in cells:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: clear its outputs"


def test_quickstart_runs_with_one_progress_display_updated_in_place(
    kernel_env: None, mongo_uri: str, tmp_path: Path
) -> None:
    notebook, messages = execute("quickstart.ipynb", tmp_path)
    # The story: 3,000 contexts submitted and settled, a few failed, the report as a table
    with MongoClient(mongo_uri) as client:
        grouped = client["notebook"]["contexts"].aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])
        counts = {row["_id"]: row["n"] for row in grouped}
    assert counts["completed"] + counts["failed"] == 3000 and counts["failed"] > 0
    assert "<b>RunReport</b>" in "\n".join(outputs(notebook, "text/html"))
    progress = [
        m
        for m in messages
        if m["header"]["msg_type"] in ("display_data", "update_display_data")
        and "ctxbatch-progress" in m["content"]["data"].get("text/html", "")
    ]
    # One display, then updates of that same display: not a stream of new outputs
    assert progress[0]["header"]["msg_type"] == "display_data"
    assert len(progress) >= 2 and {m["header"]["msg_type"] for m in progress[1:]} == {"update_display_data"}
    assert len({m["content"]["transient"]["display_id"] for m in progress}) == 1
    stored = [text for text in outputs(notebook, "text/html") if "ctxbatch-progress" in text]
    assert len(stored) == 1 and "finished (empty)" in stored[0]  # the notebook keeps the last state, once
    # with both dashboard links, clickable
    assert re.search(r'<a href="http://[^"]+/status"', stored[0])
    assert re.search(r'<a href="http://[^"]+/ctxbatch"', stored[0])


def test_engines_notebook_runs_each_kind_and_finds_the_bad_row(kernel_env: None, tmp_path: Path) -> None:
    notebook, _ = execute("engines.ipynb", tmp_path)
    reports = [t for t in outputs(notebook) if t.startswith("<RunReport")]
    assert len(reports) == 4  # row, async, batch, and the run on the notebook's own cluster
    assert "completed=299 failed=1" in reports[2]  # bisection isolated the one bad row
    assert "this partition holds a bad text" in "\n".join(outputs(notebook))


def test_monitoring_notebook_plots_the_run_from_the_database(kernel_env: None, tmp_path: Path) -> None:
    notebook, _ = execute("monitoring.ipynb", tmp_path)
    plots = outputs(notebook, "image/png")
    assert len(plots) == 4  # throughput and latency, the histogram, batch sizes, the queue by level
    tables = "\n".join(outputs(notebook, "text/html"))
    assert "<b>Stats</b>" in tables and "<b>RunReport</b>" in tables
    report = next(t for t in outputs(notebook) if t.startswith("<RunReport"))
    assert "failed=0 " not in report
