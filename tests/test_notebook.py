"""The example notebook runs as written (its code cells, in order, against the test server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.fixture
def notebook_database(mongo_uri: str) -> Iterator[None]:
    yield
    with MongoClient(mongo_uri) as client:
        client.drop_database("notebook")


def test_the_quickstart_notebook_runs(mongo_uri: str, notebook_database: None) -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    namespace: dict[str, object] = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{NOTEBOOK.name}", "exec"), namespace)
    report = namespace["report"]
    assert report.completed + report.failed == 3000  # type: ignore[attr-defined]
    assert len(namespace["decisions"]) >= 1  # type: ignore[arg-type]
