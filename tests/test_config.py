from __future__ import annotations

import re
from pathlib import Path

import pytest

from ctxbatch import ConfigError, load_config

SEED = Path(__file__).resolve().parents[1] / "samples" / "seed-config.yaml"


def test_seed_block_loads_unchanged_with_comments() -> None:
    settings = load_config(SEED)
    assert settings.worker.batch_size == 10
    assert settings.worker.priorities.ranges() == {"high": (0, 10), "medium": (11, 50), "low": (51, 100)}
    assert settings.worker.retry.backoff_seconds == [5, 15, 30]


def test_every_value_has_a_default() -> None:
    settings = load_config(None)
    assert settings.worker.lease_seconds == 300
    assert settings.worker.retry.context_retries == 3
    assert settings.mongo.uri is None and settings.mongo.database == "ctxbatch"
    assert settings.api.max_contexts_per_request == 10_000


@pytest.mark.parametrize(
    ("data", "key", "problem"),
    [
        ({"worker": {"batch_sise": 3}}, "worker.batch_sise", "unknown key"),
        ({"wroker": {}}, "wroker", "unknown key"),
        ({"worker": {"batch_size": "ten"}}, "worker.batch_size", "integer"),
        ({"worker": {"batch_size": 0}}, "worker.batch_size", "greater than or equal to 1"),
        ({"worker": {"min_batch_size": 30, "max_batch_size": 20}}, "worker", "min_batch_size"),
        ({"worker": {"priorities": {"levels": {"a": "0-10", "b": "5-100"}}}}, "worker.priorities.levels", "overlaps"),
        ({"worker": {"priorities": {"levels": {"a": "0-10", "b": "12-100"}}}}, "worker.priorities.levels", "11"),
        ({"worker": {"priorities": {"levels": {"a": "0-90"}}}}, "worker.priorities.levels", "91-100"),
        ({"worker": {"priorities": {"levels": {"a": "x-y"}}}}, "worker.priorities.levels", "range"),
        ({"worker": {"retry": {"backoff_seconds": [-1]}}}, "worker.retry.backoff_seconds", ">= 0"),
        ({"dask": {"adaptive": {"minimum": 5, "maximum": 2}}}, "dask.adaptive", "minimum"),
    ],
)
def test_bad_values_are_refused_naming_the_key(data: dict, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(data)
    assert caught.value.key == key
    assert problem in str(caught.value)


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "nope.yaml"))):
        load_config(tmp_path / "nope.yaml")


def test_a_yaml_error_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("worker: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_backoff_repeats_its_last_period() -> None:
    retry = load_config({"worker": {"retry": {"backoff_seconds": [1, 2]}}}).worker.retry
    assert [retry.backoff(a) for a in (1, 2, 3, 7)] == [1, 2, 2, 2]


def test_engine_concurrency_takes_a_number_or_auto_within_ordered_bounds() -> None:
    assert load_config({"worker": {"engine_concurrency": "auto"}}).worker.engine_concurrency == "auto"
    assert load_config({"worker": {"rate_limit_per_second": 20}}).worker.rate_limit_per_second == 20
    with pytest.raises(ConfigError, match="engine_concurrency"):
        load_config({"worker": {"engine_concurrency": 0}})
    with pytest.raises(ConfigError, match="engine_concurrency"):
        load_config({"worker": {"engine_concurrency": "fast"}})
    with pytest.raises(ConfigError, match="min_engine_concurrency"):
        load_config(
            {"worker": {"engine_concurrency": "auto", "min_engine_concurrency": 9, "max_engine_concurrency": 8}}
        )
    with pytest.raises(ConfigError, match="rate_limit_per_second"):
        load_config({"worker": {"rate_limit_per_second": 0}})
