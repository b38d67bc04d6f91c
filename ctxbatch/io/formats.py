"""Reading submissions from files: JSON Lines, a JSON array, CSV with a `payload` column, Parquet.

Each reader returns the records and where each came from ("contexts.jsonl:17"), so a refused
record is reported at the user's line, not at an index they would have to count to.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxbatch.errors import InputError


@dataclass(frozen=True)
class Submission:
    records: list[Any]
    locate: Callable[[int], str]


def _json_lines(text: str, name: str) -> Submission:
    records, lines = [], []
    # Split on "\n" only: splitlines() also breaks at U+2028 and the like, legal inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{name}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        lines.append(number)
    return Submission(records, lambda i: f"{name}:{lines[i]}")


def _json_array(text: str, name: str) -> Submission:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(records, list):
        raise InputError(f"{name}: expected a JSON array of contexts, got a JSON {type(records).__name__}")
    return Submission(records, lambda i: f"{name}: item {i}")


def _csv(text: str, name: str) -> Submission:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "payload" not in reader.fieldnames:
        raise InputError(f"{name}:1: a CSV submission needs a 'payload' column of JSON objects")
    records: list[Any] = []
    lines: list[int] = []
    last = reader.line_num  # the header's last line
    for row in reader:
        # A quoted field may span lines: a record starts on the line after the previous one ended.
        line, last = last + 1, reader.line_num
        lines.append(line)
        record: dict[str, Any] = {}
        for column, value in row.items():
            if value in (None, "") and column != "payload":
                continue
            if column == "payload":
                try:
                    record["payload"] = json.loads(value or "")
                except json.JSONDecodeError as exc:
                    raise InputError(f"{name}:{line}: payload is not valid JSON: {exc.msg}") from None
            elif column == "priority":
                record["priority"] = _csv_integer(value, f"{name}:{line}: priority")
            else:
                record[str(column)] = value
        records.append(record)
    return Submission(records, lambda i: f"{name}:{lines[i]}")


def _csv_integer(value: str, where: str) -> int:
    # Read as a float: pandas writes an int column with a gap as floats, and "5.0" is 5.
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise InputError(f"{where} must be an integer, got {value!r}")
    return int(number)


def _parquet(path: Path, name: str) -> Submission:
    import pyarrow
    import pyarrow.parquet

    try:
        table = pyarrow.parquet.read_table(path)
    except (OSError, pyarrow.ArrowException) as exc:
        raise InputError(f"{name}: not a readable Parquet file: {exc}") from None
    if "payload" not in table.column_names:
        raise InputError(f"{name}: a Parquet submission needs a 'payload' column")
    records = []
    # Straight to Python values: through pandas, an int column with a gap (or a struct field
    # some rows lack) comes back as floats, and a priority of 3.0 is refused.
    for row in table.to_pylist():
        record = {k: v for k, v in row.items() if v is not None}
        if isinstance(record.get("payload"), str):
            # Not JSON: left as a string, which validation then names.
            with contextlib.suppress(json.JSONDecodeError):
                record["payload"] = json.loads(record["payload"])
        records.append(record)
    return Submission(records, lambda i: f"{name}: row {i}")


def read_submission(source: str) -> Submission:
    """Records from a file path, or from standard input when `source` is '-'."""
    if source == "-":
        text = sys.stdin.read()
        name = "<stdin>"
        return _json_array(text, name) if text.lstrip().startswith("[") else _json_lines(text, name)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{source}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return _parquet(path, source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: cannot read: {exc}") from None
    if suffix == ".csv":
        return _csv(text, source)
    if suffix == ".json" or text.lstrip().startswith("["):
        return _json_array(text, source)
    return _json_lines(text, source)
