"""A small version of each fault-injection scenario of benchmarks/chaos.py: nothing lost, duplicated or unexpected."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import chaos  # benchmarks/ is not a package: on sys.path above

SMALL = 150


@pytest.mark.timeout(300)
@pytest.mark.parametrize("scenario", chaos.SCENARIOS)
def test_a_fault_costs_nothing_but_reruns(scenario: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTXBATCH_MONGO_URI", raising=False)
    figures = chaos.run_scenario(scenario, SMALL)
    assert (figures.lost, figures.duplicated, figures.unexpected) == (0, 0, 0), figures
    assert figures.calls_per_context >= 1
