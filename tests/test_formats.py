"""Reading submissions from files and stdin: what each format yields and where a problem is reported."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctxbatch import InputError
from ctxbatch.io.formats import Submission, read_submission

RECORDS = [{"payload": {"n": 1}, "priority": 5}, {"payload": {"n": 2, "tags": ["a"]}, "key": "k2"}]


def read(source: str) -> Submission:
    """read_submission() with its records read to the end (where a problem with them is raised)."""
    submission = read_submission(source)
    return Submission(list(submission.records), submission.locate)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_json_lines_yield_one_record_per_line(tmp_path: Path) -> None:
    source = write(tmp_path, "in.jsonl", "".join(json.dumps(r) + "\n" for r in RECORDS))
    assert read(source).records == RECORDS


def test_json_lines_locate_records_by_line_skipping_blank_lines(tmp_path: Path) -> None:
    source = write(tmp_path, "in.jsonl", f"\n{json.dumps(RECORDS[0])}\n\n{json.dumps(RECORDS[1])}\n")
    assert read(source).locate(1) == f"{source}:4"


def test_json_lines_keep_a_line_separator_inside_a_string(tmp_path: Path) -> None:
    # U+2028 is a line break to str.splitlines() but an ordinary character inside a JSON string.
    record = {"payload": {"text": "one\u2028two\x85three"}}
    source = write(tmp_path, "in.jsonl", json.dumps(record, ensure_ascii=False) + "\r\n")
    assert read(source).records == [record]


def test_broken_json_lines_name_the_line(tmp_path: Path) -> None:
    source = write(tmp_path, "in.jsonl", json.dumps(RECORDS[0]) + '\n{"payload": {\n')
    with pytest.raises(InputError, match=rf"^{re.escape(source)}:2: invalid JSON"):
        read(source)


def test_a_json_array_yields_its_items(tmp_path: Path) -> None:
    source = write(tmp_path, "in.json", json.dumps(RECORDS, indent=2))
    submission = read(source)
    assert submission.records == RECORDS
    assert submission.locate(1) == f"{source}: item 1"


def test_a_json_file_that_is_not_an_array_is_refused(tmp_path: Path) -> None:
    source = write(tmp_path, "in.json", json.dumps(RECORDS[0]))
    with pytest.raises(InputError, match="expected a JSON array"):
        read(source)


def test_a_broken_json_array_names_the_line(tmp_path: Path) -> None:
    source = write(tmp_path, "in.json", '[\n  {"payload": {}},\n  {"payload": \n]')
    with pytest.raises(InputError, match=rf"^{re.escape(source)}:4: invalid JSON"):
        read(source)


def test_csv_payload_column_is_parsed_as_json_and_priority_as_an_integer(tmp_path: Path) -> None:
    source = write(tmp_path, "in.csv", 'payload,priority,key\n"{""n"": 1}",5,\n"{""n"": 2}",,k2\n')
    assert read(source).records == [
        {"payload": {"n": 1}, "priority": 5},
        {"payload": {"n": 2}, "key": "k2"},
    ]


def test_csv_records_are_located_by_their_line(tmp_path: Path) -> None:
    source = write(tmp_path, "in.csv", 'payload\n"{""n"": 1}"\n"{""n"": 2}"\n')
    assert read(source).locate(1) == f"{source}:3"


def test_csv_records_after_a_multiline_field_are_located_by_their_line(tmp_path: Path) -> None:
    source = write(tmp_path, "in.csv", 'payload\n"{""n"":\n 1}"\n"{""n"": 2}"\n')
    assert read(source).locate(1) == f"{source}:4"


def test_csv_without_a_payload_column_is_refused(tmp_path: Path) -> None:
    source = write(tmp_path, "in.csv", "text,priority\nhello,5\n")
    with pytest.raises(InputError, match="'payload' column"):
        read(source)


def test_csv_with_a_broken_payload_names_the_line(tmp_path: Path) -> None:
    source = write(tmp_path, "in.csv", 'payload\n"{""n"": 1}"\n{oops\n')
    with pytest.raises(InputError, match=rf"^{re.escape(source)}:3: payload is not valid JSON"):
        read(source)


def test_csv_with_a_word_for_a_priority_names_the_line(tmp_path: Path) -> None:
    source = write(tmp_path, "in.csv", 'payload,priority\n"{}",high\n')
    with pytest.raises(InputError, match=rf"^{re.escape(source)}:2: priority must be an integer"):
        read(source)


def test_parquet_with_a_json_text_payload_column(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    table = pa.table({"payload": [json.dumps(r["payload"]) for r in RECORDS], "priority": [5, None]})
    pq.write_table(table, path)
    submission = read(str(path))
    assert submission.records == [{"payload": {"n": 1}, "priority": 5}, {"payload": {"n": 2, "tags": ["a"]}}]
    assert submission.locate(1) == f"{path}: row 1"


def test_parquet_priorities_stay_integers_when_some_are_missing(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"payload": ["{}", "{}"], "priority": pa.array([7, None], pa.int64())}), path)
    assert [type(r.get("priority")) for r in read(str(path)).records] == [int, type(None)]


def test_parquet_with_a_struct_payload_keeps_its_integers(tmp_path: Path) -> None:
    # A struct column has one schema for all rows: a key that one row lacks is null there.
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"payload": [{"n": 1}, {"m": 2}]}), path)
    assert read(str(path)).records == [{"payload": {"n": 1, "m": None}}, {"payload": {"n": None, "m": 2}}]


def test_parquet_without_a_payload_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a"]}), path)
    with pytest.raises(InputError, match="'payload' column"):
        read(str(path))


def test_a_file_named_parquet_that_is_not_parquet_is_refused(tmp_path: Path) -> None:
    source = write(tmp_path, "in.parquet", json.dumps(RECORDS[0]))
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read(source)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.jsonl: no such file"):
        read(str(tmp_path / "nope.jsonl"))


def test_a_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"payload": {"t": "\xff"}}\n')
    with pytest.raises(InputError, match=r"in.jsonl:1: not UTF-8"):
        read(str(path))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("".join(json.dumps(r) + "\n" for r in RECORDS), id="json-lines"),
        pytest.param(json.dumps(RECORDS), id="json-array"),
    ],
)
def test_stdin_takes_json_lines_or_a_json_array(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    submission = read("-")
    assert submission.records == RECORDS
    assert submission.locate(0).startswith("<stdin>")


def test_csv_priorities_written_as_floats_by_pandas_are_integers(tmp_path: Path) -> None:
    source = write(tmp_path, "in.csv", 'payload,priority\n"{}",5.0\n"{}",\n')
    assert read(source).records == [{"payload": {}, "priority": 5}, {"payload": {}}]


def test_csv_with_a_fractional_priority_names_the_line(tmp_path: Path) -> None:
    source = write(tmp_path, "in.csv", 'payload,priority\n"{}",5.5\n')
    with pytest.raises(InputError, match=rf"^{re.escape(source)}:2: priority must be an integer, got '5.5'"):
        read(source)
