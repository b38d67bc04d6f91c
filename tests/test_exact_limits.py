"""Exact exports, MongoDB's and JSON's limits before any write, and the submit command's messages."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

from ctxbatch.cli import main
from ctxbatch.errors import SubmitError
from ctxbatch.io import ContextStore
from ctxbatch.io.document_limits import MAX_DEPTH

AWKWARD = {
    "third": 1 / 3,
    "tiny": 2.718281828459045e-10,
    "negative_zero": -0.0,
    "largest": 1.7976931348623157e308,
    "beyond_double": 2**53 + 1,
    "unicode": "héllo ☃ 𝄞 \u2028",
    "nul": "a\x00b",
}


def invoke(mongo_uri: str, database: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--mongo-uri", mongo_uri, "--database", database, *args], input=input)


def nested(levels: int) -> dict[str, Any]:
    """A payload whose deepest object sits `levels` levels below the payload itself."""
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


def exact(value: Any) -> str:
    # json.dumps tells -0.0 from 0.0 and keeps every digit: equal text, equal values.
    return json.dumps(value, sort_keys=True)


def _read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line)["payload"] for line in path.read_text(encoding="utf-8").splitlines()]


def _read_csv(path: Path) -> list[Any]:
    return [json.loads(text) for text in pd.read_csv(path, keep_default_na=False)["payload"]]


def _read_parquet(path: Path) -> list[Any]:
    return [json.loads(text) for text in pq.read_table(path).column("payload").to_pylist()]


@pytest.mark.parametrize(
    ("suffix", "read"), [(".jsonl", _read_jsonl), (".csv", _read_csv), (".parquet", _read_parquet)]
)
def test_every_export_round_trips_awkward_values_exactly(
    mongo_uri: str, database: str, store: ContextStore, tmp_path: Path, suffix: str, read: Any
) -> None:
    batch_id = store.submit([{"payload": AWKWARD}])
    path = tmp_path / f"out{suffix}"
    result = invoke(mongo_uri, database, "results", batch_id, "-o", str(path))
    assert result.exit_code == 0, result.stderr
    assert [exact(p) for p in read(path)] == [exact(AWKWARD)]


def test_results_on_stdout_round_trip_awkward_values_exactly(
    mongo_uri: str, database: str, store: ContextStore
) -> None:
    batch_id = store.submit([{"payload": AWKWARD}])
    result = invoke(mongo_uri, database, "results", batch_id)
    assert [exact(json.loads(line)["payload"]) for line in result.stdout.splitlines()] == [exact(AWKWARD)]


def test_a_payload_at_mongodbs_depth_limit_is_stored(store: ContextStore) -> None:
    # The context document is level 1, its payload level 2: 98 more levels reach the limit of 100.
    store.submit([{"payload": nested(MAX_DEPTH - 2)}])


@pytest.mark.parametrize("levels", [MAX_DEPTH - 1, 500, 5000])
def test_a_payload_deeper_than_mongodb_allows_is_refused_naming_the_field(store: ContextStore, levels: int) -> None:
    with pytest.raises(SubmitError) as refused:
        store.submit([{"payload": {"x": 1}}, {"payload": nested(levels)}])
    assert refused.value.index == 1
    assert refused.value.field is not None and refused.value.field.startswith("payload.a.a")
    assert "100 levels" in refused.value.message
    assert store.contexts.count_documents({}) == 0


@pytest.mark.parametrize(
    ("payload", "field", "fragment"),
    [
        ({"x": [1, math.nan]}, "payload.x[1]", "NaN"),
        ({"x": {"y": math.inf}}, "payload.x.y", "inf"),
        ({"blob": b"\x00\xff"}, "payload.blob", "bytes"),
        ({"when": pd.Timestamp("2024-01-01")}, "payload.when", "ISO 8601"),
        ({"x": {"a\x00b": 1}}, "payload.x", "NUL"),
        ({"big": 2**64}, "payload.big", "64 bits"),
    ],
)
def test_a_value_json_or_mongodb_cannot_hold_is_refused_naming_the_field(
    store: ContextStore, payload: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(SubmitError) as refused:
        store.submit([{"payload": payload}])
    assert (refused.value.index, refused.value.field) == (0, field)
    assert fragment in refused.value.message


def test_the_cli_refuses_nan_naming_line_and_field(
    mongo_uri: str, database: str, store: ContextStore, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"payload": {"n": 1}}\n{"payload": {"n": NaN}}\n')
    result = invoke(mongo_uri, database, "submit", str(path))
    assert result.exit_code == 1
    assert f"{path}:2: payload.n:" in result.stderr and "NaN" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert store.contexts.count_documents({}) == 0


def test_the_cli_refuses_990_levels_in_one_line(mongo_uri: str, database: str, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"payload": ' + '{"a": ' * 990 + "{}" + "}" * 991 + "\n")
    result = invoke(mongo_uri, database, "submit", str(path))
    assert result.exit_code == 1
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert f"{path}:1" in result.stderr


def test_parquet_bytes_in_a_struct_payload_are_refused_naming_row_and_field(
    mongo_uri: str, database: str, store: ContextStore, tmp_path: Path
) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"payload": [{"blob": b"ok"}, {"blob": b"\x00\xff"}]}), path)
    result = invoke(mongo_uri, database, "submit", str(path))
    assert result.exit_code == 1
    assert f"{path}: row 0: payload.blob: bytes" in result.stderr
    assert store.contexts.count_documents({}) == 0


def test_a_directory_given_to_submit_is_named_as_one(mongo_uri: str, database: str, tmp_path: Path) -> None:
    result = invoke(mongo_uri, database, "submit", str(tmp_path))
    assert result.exit_code == 1
    assert "is a directory" in result.stderr


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_utf8_bom_is_accepted_by_the_cli_as_over_http(
    mongo_uri: str, database: str, store: ContextStore, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / f"in{suffix}"
    text = '{"payload": {"n": 1}}\n' if suffix == ".jsonl" else '[{"payload": {"n": 1}}]'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    result = invoke(mongo_uri, database, "submit", str(path))
    assert result.exit_code == 0, result.stderr
    assert store.contexts.count_documents({}) == 1


def test_a_utf8_bom_on_stdin_is_accepted(mongo_uri: str, database: str, store: ContextStore) -> None:
    result = invoke(mongo_uri, database, "submit", "-", input='\ufeff{"payload": {"n": 1}}\n')
    assert result.exit_code == 0, result.stderr
