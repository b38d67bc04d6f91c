"""Reading submissions from files: JSON Lines, a JSON array, CSV with a `payload` column, Parquet.

Each reader returns the records and where each came from ("contexts.jsonl:17"), so a refused
record is reported at the user's line, not at an index they would have to count to.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import itertools
import json
import math
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ctxbatch.errors import InputError
from ctxbatch.io.document_limits import MAX_DEPTH

PARQUET_ROWS = 5_000
TOO_DEEP = f"nests too deeply to be JSON MongoDB can store (its limit is {MAX_DEPTH} levels)"


@dataclass(frozen=True)
class Submission:
    """The records (streamed as they are read, for JSON Lines, CSV and Parquet) and where each came from."""

    records: Iterable[Any]
    locate: Callable[[int], str]


def _json_lines(lines: Iterable[bytes], name: str) -> Submission:
    # Read line by line, split on b"\n" only: str.splitlines() also breaks at U+2028 and the like,
    # legal inside JSON strings. The line of each record is kept, 4 bytes a record.
    numbers = array("L")

    def records() -> Iterator[Any]:
        for number, raw in enumerate(lines, start=1):
            try:
                line = (raw.removeprefix(codecs.BOM_UTF8) if number == 1 else raw).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{name}:{number}: not UTF-8: {exc.reason}") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{name}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            except RecursionError:
                raise InputError(f"{name}:{number}: {TOO_DEEP}") from None
            numbers.append(number)
            yield record

    return Submission(records(), lambda i: f"{name}:{numbers[i]}")


def _json_array(text: str, name: str) -> Submission:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise InputError(f"{name}: {TOO_DEEP}") from None
    if not isinstance(records, list):
        raise InputError(f"{name}: expected a JSON array of contexts, got a JSON {type(records).__name__}")
    return Submission(records, lambda i: f"{name}: item {i}")


def _csv(stream: TextIO, name: str) -> Submission:
    reader = csv.DictReader(stream)
    if not reader.fieldnames or "payload" not in reader.fieldnames:
        raise InputError(f"{name}:1: a CSV submission needs a 'payload' column of JSON objects")
    numbers = array("L")

    def records() -> Iterator[Any]:
        last = reader.line_num  # the header's last line
        with stream:
            for row in reader:
                # A quoted field may span lines: a record starts on the line after the previous one ended.
                line, last = last + 1, reader.line_num
                numbers.append(line)
                yield _csv_record(row, f"{name}:{line}")

    return Submission(records(), lambda i: f"{name}:{numbers[i]}")


def _csv_record(row: dict[str | Any, str | Any], where: str) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for column, value in row.items():
        if value in (None, "") and column != "payload":
            continue
        if column == "payload":
            try:
                record["payload"] = json.loads(value or "")
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: payload is not valid JSON: {exc.msg}") from None
            except RecursionError:
                raise InputError(f"{where}: payload {TOO_DEEP}") from None
        elif column == "priority":
            record["priority"] = _csv_integer(value, f"{where}: priority")
        else:
            record[str(column)] = value
    return record


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
        parquet = pyarrow.parquet.ParquetFile(path)
    except (OSError, pyarrow.ArrowException) as exc:
        raise InputError(f"{name}: not a readable Parquet file: {exc}") from None
    if "payload" not in parquet.schema_arrow.names:
        raise InputError(f"{name}: a Parquet submission needs a 'payload' column")

    def records() -> Iterator[Any]:
        # Straight to Python values, a row group at a time: through pandas, an int column with a gap
        # (or a struct field some rows lack) comes back as floats, and a priority of 3.0 is refused.
        try:
            for batch in parquet.iter_batches(batch_size=PARQUET_ROWS):
                for row in batch.to_pylist():
                    record = {k: v for k, v in row.items() if v is not None}
                    if isinstance(record.get("payload"), str):
                        # Not JSON: left as a string, which validation then names.
                        with contextlib.suppress(json.JSONDecodeError, RecursionError):
                            record["payload"] = json.loads(record["payload"])
                    yield record
        except (OSError, pyarrow.ArrowException) as exc:
            raise InputError(f"{name}: not a readable Parquet file: {exc}") from None

    return Submission(records(), lambda i: f"{name}: row {i}")


def _stdin(name: str) -> Submission:
    binary = getattr(sys.stdin, "buffer", None)
    # A replaced sys.stdin (a notebook's, a test's) may be text only.
    lines = iter(binary) if binary is not None else (line.encode("utf-8") for line in sys.stdin)
    # The first line that is not blank tells a JSON array from JSON Lines.
    head: list[bytes] = []
    for line in lines:
        head.append(line)
        if line.removeprefix(codecs.BOM_UTF8).strip():
            break
    if b"".join(head).removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):
        try:
            text = b"".join([*head, *lines]).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InputError(f"{name}: not UTF-8: {exc.reason}") from None
        return _json_array(text, name)
    return _json_lines(itertools.chain(head, lines), name)


def read_submission(source: str) -> Submission:
    """Records from a file path, or from standard input when `source` is '-'.

    JSON Lines, CSV and Parquet are read as the records are asked for, so memory stays flat
    whatever the size of the input; a JSON array is read whole.
    """
    if source == "-":
        return _stdin("<stdin>")
    path = Path(source)
    if path.is_dir():
        raise InputError(f"{source}: is a directory; give a file of contexts (or - for standard input)")
    if not path.is_file():
        raise InputError(f"{source}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return _parquet(path, source)
    try:
        if suffix == ".csv":
            # A UTF-8 BOM is dropped, as the HTTP API does.
            return _csv(path.open(encoding="utf-8-sig", newline=""), source)
        with path.open("rb") as peek:
            start = peek.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()
        if suffix == ".json" or start.startswith(b"["):
            return _json_array(path.read_text(encoding="utf-8-sig"), source)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: cannot read: {exc}") from None
    return _json_lines(_lines_of(path, source), source)


def _lines_of(path: Path, name: str) -> Iterator[bytes]:
    try:
        with path.open("rb") as stream:
            yield from stream
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc}") from None
