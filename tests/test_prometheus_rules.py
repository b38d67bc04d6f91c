"""ctxbatch/monitoring/prometheus-rules.yml: valid, shipped with the package, and right by promtool's unit tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest
import yaml

from ctxbatch.monitoring.metrics import METRIC_NAMES

RULES = resources.files("ctxbatch.monitoring") / "prometheus-rules.yml"
UNIT_TESTS = Path(__file__).parent / "prometheus" / "prometheus-rules.test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        # CI installs Debian's `prometheus` package (.ci/run): there the tests must run.
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing; .ci/run installs it with apt-get (Debian package `prometheus`)")
        pytest.skip("promtool is not installed (Debian/Ubuntu: apt-get install prometheus)")
    return found


def test_the_rules_file_ships_with_the_package() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    assert alerts == {
        "CtxbatchBacklogGrowing",
        "CtxbatchOldestPendingTooOld",
        "CtxbatchSuccessRateLow",
        "CtxbatchNoProgress",
        "CtxbatchLoopDown",
    }


def test_promtool_finds_the_rules_valid(promtool: str) -> None:
    with resources.as_file(RULES) as path:
        checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_pass_their_promtool_unit_tests(promtool: str) -> None:
    tested = subprocess.run([promtool, "test", "rules", str(UNIT_TESTS)], capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_rules_use_only_metrics_ctxbatch_serves() -> None:
    used = set(re.findall(r"\b(ctxbatch_[a-z_]+)", RULES.read_text()))
    assert used and used <= set(METRIC_NAMES)
