"""Per-row isolation in one partition: row, async and batch engines; stored results; what stops a batch."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import engines
import numpy as np
import pandas as pd
import pytest
from pymongo.errors import AutoReconnect

from ctxbatch.errors import CriticalError
from ctxbatch.pipeline.engine import batch_engine
from ctxbatch.pipeline.isolate import MESSAGE_CHARS, TRACEBACK_CHARS, run_partition

BATCH = engines.batch_fail_when_flagged


def frame_of(payloads: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(len(payloads))],
            "payload": payloads,
            "priority": [50] * len(payloads),
            "attempts": [0] * len(payloads),
        }
    )


def rows(n: int, bad: set[int] = frozenset()) -> pd.DataFrame:  # type: ignore[assignment]
    return frame_of([{"i": i, "bad": i in bad} for i in range(n)])


@pytest.mark.parametrize(
    "engine", [engines.fail_when_flagged, engines.async_fail_when_flagged, engines.batch_fail_when_flagged]
)
def test_a_failing_row_fails_alone(engine: Any) -> None:
    outcome = run_partition(engine, rows(6, bad={2, 4}))

    assert outcome.results == {f"c{i}": {"i": i} for i in (0, 1, 3, 5)}
    assert sorted(outcome.errors) == ["c2", "c4"]


@pytest.mark.parametrize(
    "engine", [engines.fail_when_flagged, engines.async_fail_when_flagged, engines.batch_fail_when_flagged]
)
def test_a_failing_row_gets_type_message_and_traceback(engine: Any) -> None:
    error = run_partition(engine, rows(3, bad={1})).errors["c1"]

    # The batch engine's message is its own single-row call's: bisection ends on that row alone.
    assert (error["type"], error["message"]) == ("ValueError", "bad rows [1]" if engine is BATCH else "bad row 1")
    assert engine.__name__ in error["traceback"]


@pytest.mark.parametrize(("n", "bad"), [(64, {7}), (64, {0, 63}), (100, {3, 50, 51}), (1, {0}), (5, set())])
def test_bisection_finds_exactly_the_bad_rows_in_few_calls(n: int, bad: set[int]) -> None:
    calls = 0

    @batch_engine
    def engine(frame: pd.DataFrame) -> list[Any]:
        nonlocal calls
        calls += 1
        return engines.batch_fail_when_flagged(frame)

    outcome = run_partition(engine, rows(n, bad))

    assert set(outcome.errors) == {f"c{i}" for i in bad}
    assert len(outcome.results) == n - len(bad)
    # Each bad row costs at most two calls per halving: O(bad * log n), not O(n).
    assert calls <= 1 + 2 * len(bad) * math.ceil(math.log2(n)) if n > 1 else calls == 1


def test_a_batch_result_of_the_wrong_length_is_treated_as_a_raise() -> None:
    @batch_engine
    def short_by_one(frame: pd.DataFrame) -> list[Any]:
        return [{}] * (len(frame) - 1)

    outcome = run_partition(short_by_one, rows(4))

    assert outcome.results == {}
    assert {e["type"] for e in outcome.errors.values()} == {"BatchResultMismatch"}
    assert outcome.errors["c0"]["message"].endswith("short_by_one returned 0 results for 1 rows")


def test_a_batch_engine_may_return_a_series() -> None:
    @batch_engine
    def doubled(frame: pd.DataFrame) -> pd.Series:
        return frame["payload"].map(lambda p: p["i"] * 2)

    assert run_partition(doubled, rows(3)).results == {"c0": 0, "c1": 2, "c2": 4}


def test_a_batch_engine_may_return_a_dataframe_one_record_per_row() -> None:
    @batch_engine
    def scored(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"score": frame["priority"] * 2})

    assert run_partition(scored, rows(2)).results == {"c0": {"score": 100}, "c1": {"score": 100}}


def test_an_async_batch_engine_is_awaited() -> None:
    @batch_engine
    async def engine(frame: pd.DataFrame) -> list[Any]:
        await asyncio.sleep(0)
        return list(frame["priority"])

    assert run_partition(engine, rows(2)).results == {"c0": 50, "c1": 50}


def test_a_row_engine_returning_a_coroutine_fails_its_rows_with_advice() -> None:
    async def call(payload: dict[str, Any]) -> dict[str, Any]:
        return payload

    def engine(payload: dict[str, Any]) -> Any:
        return call(payload)

    error = run_partition(engine, rows(1)).errors["c0"]

    assert (error["type"], error["message"]) == (
        "UnstorableResult",
        "the engine returned a coroutine; declare it `async def` so that it is awaited",
    )


def test_the_async_engine_honours_the_concurrency_bound() -> None:
    in_flight = peak = 0

    async def engine(payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        in_flight -= 1
        return {}

    outcome = run_partition(engine, rows(20), concurrency=3)

    assert (peak, len(outcome.results)) == (3, 20)


def test_the_async_engine_runs_when_called_inside_an_event_loop() -> None:
    async def caller() -> int:
        return len(run_partition(engines.async_fail_when_flagged, rows(3)).results)

    assert asyncio.run(caller()) == 3


def test_an_unstorable_result_becomes_the_rows_error() -> None:
    outcome = run_partition(engines.unstorable, rows(2))

    assert outcome.results == {}
    assert outcome.errors["c0"]["type"] == "UnstorableResult"
    assert "BSON cannot store" in outcome.errors["c0"]["message"]


def test_only_the_unstorable_row_fails() -> None:
    def engine(payload: dict[str, Any]) -> Any:
        return object() if payload["i"] == 1 else {"i": payload["i"]}

    outcome = run_partition(engine, rows(3))

    assert (sorted(outcome.results), list(outcome.errors)) == (["c0", "c2"], ["c1"])


def test_a_result_over_16_mb_becomes_the_rows_error() -> None:
    def engine(payload: dict[str, Any]) -> Any:
        return "x" * (17 * 1024 * 1024) if payload["i"] == 0 else "small"

    outcome = run_partition(engine, rows(2))

    assert (outcome.errors["c0"]["type"], outcome.results) == ("UnstorableResult", {"c1": "small"})
    assert "must stay under 16 MB" in outcome.errors["c0"]["message"]


def test_results_are_converted_to_plain_python() -> None:
    def engine(payload: dict[str, Any]) -> Any:
        return {
            "int": np.int64(3),
            "array": np.array([1.5, 2.5]),
            "na": pd.NA,
            "nan": np.float64("nan"),
            "tuple": (1, "a"),
            "flag": np.bool_(True),
            "nested": [{"n": np.int32(1)}],
        }

    result = run_partition(engine, rows(1)).results["c0"]

    assert result == {
        "int": 3,
        "array": [1.5, 2.5],
        "na": None,
        "nan": None,
        "tuple": [1, "a"],
        "flag": True,
        "nested": [{"n": 1}],
    }
    assert (type(result["int"]), type(result["flag"]), type(result["nested"][0]["n"])) == (int, bool, int)


def test_a_critical_error_from_a_row_engine_stops_the_partition() -> None:
    seen: list[int] = []

    def engine(payload: dict[str, Any]) -> dict[str, Any]:
        seen.append(payload["i"])
        if payload["i"] == 2:
            raise CriticalError("backend gone")
        return {}

    with pytest.raises(CriticalError, match="backend gone"):
        run_partition(engine, rows(5))
    assert seen == [0, 1, 2]


def test_a_critical_error_from_an_async_engine_cancels_the_other_rows() -> None:
    async def engine(payload: dict[str, Any]) -> dict[str, Any]:
        if payload["i"] == 0:
            raise CriticalError("backend gone")
        await asyncio.sleep(3600)  # only cancellation ends these
        return {}

    with pytest.raises(CriticalError, match="backend gone"):
        run_partition(engine, rows(6), concurrency=4)


def test_a_critical_error_from_a_batch_engine_is_not_bisected() -> None:
    calls = 0

    @batch_engine
    def engine(frame: pd.DataFrame) -> list[Any]:
        nonlocal calls
        calls += 1
        raise CriticalError("backend gone")

    with pytest.raises(CriticalError):
        run_partition(engine, rows(8))
    assert calls == 1


def test_losing_the_database_is_not_a_row_error() -> None:
    def engine(payload: dict[str, Any]) -> dict[str, Any]:
        raise AutoReconnect("connection reset")

    with pytest.raises(AutoReconnect):
        run_partition(engine, rows(2))


def test_the_critical_test_engine_fails_only_the_first_time(tmp_path: Any) -> None:
    frame = frame_of([{"i": 0, "marker_dir": str(tmp_path)}])
    with pytest.raises(CriticalError):
        run_partition(engines.critical_first_time, frame)
    assert run_partition(engines.critical_first_time, frame).results == {"c0": {"i": 0}}


def test_a_long_traceback_and_message_are_clipped() -> None:
    def deep(depth: int) -> None:
        if depth == 0:
            raise ValueError("x" * 100_000)
        deep(depth - 1)

    def engine(payload: dict[str, Any]) -> None:
        deep(200)

    error = run_partition(engine, rows(1)).errors["c0"]

    assert len(error["message"]) <= MESSAGE_CHARS
    assert len(error["traceback"]) <= TRACEBACK_CHARS + 4
    assert error["traceback"].count('File "') <= 8


def test_an_empty_partition_calls_no_engine() -> None:
    def engine(payload: dict[str, Any]) -> None:
        raise AssertionError("called")

    outcome = run_partition(engine, rows(0))

    assert (outcome.results, outcome.errors) == ({}, {})
