"""The `ctxbatch` command line against the session server: submit, status, results, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result
from conftest import Invoke, json_lines

from ctxbatch.cli import main
from ctxbatch.io import ContextStore

RECORDS = [{"payload": {"n": 1}, "priority": 5}, {"payload": {"n": 2}, "key": "second"}]
CTXBATCH = Path(sys.executable).with_name("ctxbatch")


def submitted(store: ContextStore, result: Result) -> str:
    """The batch id a successful submit printed, checked to be all it printed."""
    assert result.exit_code == 0, result.stderr
    batch_id = result.stdout.strip()
    assert result.stdout == f"{batch_id}\n"
    assert store.batches.find_one({"_id": batch_id}) is not None
    return batch_id


def assert_refused(result: Result, store: ContextStore, *fragments: str) -> None:
    """One line on stderr holding every fragment, exit code 1, no traceback, nothing stored."""
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.output
    assert store.batches.count_documents({}) == 0


# -- submit ---------------------------------------------------------------------------------


def test_submit_prints_only_the_batch_id(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    batch_id = submitted(store, ctxbatch("submit", json_lines(tmp_path / "in.jsonl", RECORDS)))
    assert store.batch_status(batch_id)["counts"]["total"] == 2


def write_json_array(path: Path) -> str:
    target = path.with_suffix(".json")
    target.write_text(json.dumps(RECORDS))
    return str(target)


def write_csv(path: Path) -> str:
    target = path.with_suffix(".csv")
    pd.DataFrame(
        {"payload": [json.dumps(r["payload"]) for r in RECORDS], "priority": [5, None], "key": [None, "second"]}
    ).to_csv(target, index=False)
    return str(target)


def write_parquet(path: Path) -> str:
    target = path.with_suffix(".parquet")
    table = pa.table(
        {"payload": [json.dumps(r["payload"]) for r in RECORDS], "priority": [5, None], "key": [None, "second"]}
    )
    pq.write_table(table, target)
    return str(target)


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda p: json_lines(p.with_suffix(".jsonl"), RECORDS), id="json-lines"),
        pytest.param(write_json_array, id="json-array"),
        pytest.param(write_csv, id="csv"),
        pytest.param(write_parquet, id="parquet"),
    ],
)
def test_submit_reads_every_format(
    ctxbatch: Invoke, store: ContextStore, tmp_path: Path, write: Callable[[Path], str]
) -> None:
    batch_id = submitted(store, ctxbatch("submit", write(tmp_path / "in")))
    frame = store.results(batch_id).sort_values("priority")
    assert frame[["priority", "payload"]].to_dict("records") == [
        {"priority": 5, "payload": {"n": 1}},
        {"priority": 50, "payload": {"n": 2}},
    ]
    assert store.get_context("second")["payload"] == {"n": 2}


@pytest.mark.parametrize("text", [json.dumps(RECORDS), "".join(json.dumps(r) + "\n" for r in RECORDS)])
def test_submit_reads_standard_input(ctxbatch: Invoke, store: ContextStore, text: str) -> None:
    batch_id = submitted(store, ctxbatch("submit", "-", input=text))
    assert store.batch_status(batch_id)["counts"]["total"] == 2


def test_submit_priority_applies_to_records_without_one(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    batch_id = submitted(store, ctxbatch("submit", "--priority", "9", json_lines(tmp_path / "in.jsonl", RECORDS)))
    assert sorted(store.results(batch_id)["priority"]) == [5, 9]


def test_submit_names_the_batch(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    batch_id = submitted(store, ctxbatch("submit", "--name", "nightly", json_lines(tmp_path / "in.jsonl", RECORDS)))
    assert store.batch_status(batch_id)["name"] == "nightly"


def test_submit_refuses_a_missing_file(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.jsonl")
    assert_refused(ctxbatch("submit", missing), store, missing, "no such file")


def test_submit_refuses_broken_json_naming_the_line(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + '\n{"payload": {"n": \n')
    assert_refused(ctxbatch("submit", str(path)), store, f"{path}:2:", "invalid JSON")


def test_submit_refuses_priority_500_naming_the_line(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    source = json_lines(tmp_path / "in.jsonl", [*RECORDS, {"payload": {}, "priority": 500}])
    assert_refused(ctxbatch("submit", source), store, f"{source}:3:", "priority", "500", "nothing was submitted")


def test_submit_refuses_a_payload_that_is_not_an_object(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    source = json_lines(tmp_path / "in.jsonl", [RECORDS[0], {"payload": "text"}])
    assert_refused(ctxbatch("submit", source), store, f"{source}:2:", "payload", "JSON object")


def test_submit_refuses_a_bad_csv_payload_naming_the_line(
    ctxbatch: Invoke, store: ContextStore, tmp_path: Path
) -> None:
    path = tmp_path / "in.csv"
    path.write_text('payload\n"{}"\n"[1, 2]"\n')
    assert_refused(ctxbatch("submit", str(path)), store, f"{path}:3:", "payload")


def test_submit_refuses_an_empty_file(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n")
    assert_refused(ctxbatch("submit", str(path)), store, str(path), "no contexts")


def test_submit_refuses_a_key_that_exists(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    store.submit([{"payload": {}, "key": "second"}])
    store.batches.delete_many({})  # so assert_refused can tell that nothing new was stored
    source = json_lines(tmp_path / "in.jsonl", RECORDS)
    assert_refused(ctxbatch("submit", source), store, f"{source}:2:", "key", "already exists")
    assert store.contexts.count_documents({}) == 1


# -- status and results ---------------------------------------------------------------------


@pytest.fixture
def batch_id(store: ContextStore) -> str:
    """A batch of two contexts: one completed, one failed."""
    batch = store.submit(RECORDS)
    claim = store.claim(2, "test")
    store.complete(claim, {claim.ids[0]: {"answer": 42}})
    store.fail(claim, {claim.ids[1]: {"type": "ValueError", "message": "bad", "traceback": ""}})
    return batch


def test_status_prints_the_batch_status(ctxbatch: Invoke, batch_id: str) -> None:
    result = ctxbatch("status", batch_id)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == f"batch {batch_id}: completed"
    assert "completed 1" in result.stdout and "failed 1" in result.stdout


def test_status_json_is_the_store_batch_status(ctxbatch: Invoke, store: ContextStore, batch_id: str) -> None:
    result = ctxbatch("status", batch_id, "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == store.batch_status(batch_id)


def test_status_of_an_unknown_batch_is_one_line(ctxbatch: Invoke) -> None:
    result = ctxbatch("status", "nope")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: no batch with id 'nope'"


def test_results_print_json_lines_by_default(ctxbatch: Invoke, store: ContextStore, batch_id: str) -> None:
    result = ctxbatch("results", batch_id)
    assert result.exit_code == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(store.results(batch_id)["id"])
    assert sorted(r["status"] for r in rows) == ["completed", "failed"]
    assert {json.dumps(r["result"]) for r in rows} == {json.dumps({"answer": 42}), "null"}


@pytest.mark.parametrize(
    ("suffix", "read"),
    [
        (".parquet", pd.read_parquet),
        (".jsonl", lambda p: pd.read_json(p, lines=True)),
        (".csv", pd.read_csv),
    ],
)
def test_results_write_a_file(
    ctxbatch: Invoke, batch_id: str, tmp_path: Path, suffix: str, read: Callable[[Path], pd.DataFrame]
) -> None:
    path = tmp_path / f"out{suffix}"
    result = ctxbatch("results", batch_id, "-o", str(path))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert f"wrote 2 contexts to {path}" in result.stderr
    frame = read(path)
    assert sorted(frame["status"]) == ["completed", "failed"]


def test_results_refuse_an_unknown_file_type(ctxbatch: Invoke, batch_id: str, tmp_path: Path) -> None:
    result = ctxbatch("results", batch_id, "-o", str(tmp_path / "out.txt"))
    assert result.exit_code == 2
    assert "--output" in result.stderr and ".parquet" in result.stderr


def test_an_unreachable_database_is_one_line(tmp_path: Path) -> None:
    uri = "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300"
    result = CliRunner().invoke(main, ["--mongo-uri", uri, "status", "0" * 24])
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot talk to MongoDB at mongodb://127.0.0.1:9/" in result.stderr


# -- the console script ---------------------------------------------------------------------


def run_ctxbatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CTXBATCH), *args], capture_output=True, text=True, timeout=60, check=False)


def test_the_console_script_submits_and_reports(
    mongo_uri: str, database: str, store: ContextStore, tmp_path: Path
) -> None:
    source = json_lines(tmp_path / "in.jsonl", RECORDS)
    submit = run_ctxbatch("--mongo-uri", mongo_uri, "--database", database, "submit", source)
    assert submit.returncode == 0, submit.stderr
    batch_id = submit.stdout.strip()
    status = run_ctxbatch("--mongo-uri", mongo_uri, "--database", database, "status", batch_id, "--json")
    assert json.loads(status.stdout)["counts"]["pending"] == 2


def test_the_console_script_reports_bad_input_without_a_traceback(
    mongo_uri: str, database: str, store: ContextStore, tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"payload": {"n": 1}, "priority": 500}\n')
    refused = run_ctxbatch("--mongo-uri", mongo_uri, "--database", database, "submit", str(path))
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        f"Error: {path}:1: priority: must be an integer from 0 to 100, got 500; nothing was submitted"
    ]
    assert store.batches.count_documents({}) == 0
