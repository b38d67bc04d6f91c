"""A batch's results as files: JSON Lines, CSV, one Parquet file, or a directory of Parquet files.

Each is written as it is read, in flat memory at any size: JSON Lines row by row, CSV and a Parquet
file a chunk of rows at a time (a Parquet row group each), a directory one file per partition of
`store.results_frame()`, each partition read and written by whoever runs its task.

Times are `iso_time` text in JSON Lines and CSV, and real timestamps in Parquet (UTC, milliseconds):
a Parquet reader (pandas, Dask, DuckDB, Spark) gets them as times without parsing anything. In CSV
and Parquet, payload, result and error are JSON text: payloads differ from row to row and a column
holds one type, so `df["payload"].map(json.loads)` makes them objects again.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ctxbatch.display import iso_time, json_default
from ctxbatch.io.columns import JSON_COLUMNS, TIME_COLUMNS, results_dataframe

if TYPE_CHECKING:
    import dask.dataframe as dd

CHUNK_ROWS = 10_000  # rows per CSV chunk and Parquet row group of a single file


@dataclass(frozen=True)
class Written:
    """What an export wrote: contexts, and files (1 unless a directory)."""

    contexts: int
    files: int = 1


def json_line(view: Mapping[str, Any]) -> str:
    """A context as one line of JSON, times as `iso_time`."""
    return json.dumps(view, default=json_default) + "\n"


def write_jsonl(views: Iterable[Mapping[str, Any]], path: Path) -> Written:
    with path.open("w", encoding="utf-8") as out:
        return Written(sum(out.write(json_line(view)) > 0 for view in views))


def write_csv(views: Iterable[Mapping[str, Any]], path: Path) -> Written:
    written = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        for number, chunk in enumerate(_chunks(views)):
            _csv_columns(chunk).to_csv(out, header=number == 0, index=False)
            written += len(chunk)
    return Written(written)


def write_parquet(views: Iterable[Mapping[str, Any]], path: Path) -> Written:
    """One Parquet file, a row group per chunk of rows, under the one schema every chunk has."""
    schema = parquet_schema()
    written = 0
    with pq.ParquetWriter(path, schema) as out:
        for chunk in _chunks(views):
            out.write_table(pa.Table.from_pandas(parquet_columns(chunk), schema=schema, preserve_index=False))
            written += len(chunk)
    return Written(written)


def write_parquet_parts(frame: dd.DataFrame, directory: Path) -> Written:
    """A directory of Parquet files, `part.N.parquet` for partition N of `frame` (results_frame()'s), N zero-padded.

    Refused (FileExistsError) when the directory holds anything: files of an earlier, larger export
    would be read back with this one's.
    """
    if directory.is_dir() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} is not empty; give a new or empty directory")
    directory.mkdir(parents=True, exist_ok=True)
    flat = frame.map_partitions(parquet_columns, meta=parquet_columns(frame._meta))
    # part.07 before part.10: a reader that lists files by name (pandas, pyarrow) keeps the batch's order.
    width = len(str(frame.npartitions - 1))
    flat.to_parquet(
        directory,
        write_index=False,
        schema=parquet_schema(),
        write_metadata_file=False,
        name_function=lambda number: f"part.{number:0{width}d}.parquet",
    )
    files = sorted(directory.glob("*.parquet"))
    return Written(sum(pq.read_metadata(file).num_rows for file in files), len(files))


def parquet_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A results frame as Parquet holds it: payload, result and error as JSON text.

    Held as Python text (object), not Arrow strings: pandas reads them back as plain text then, whose
    `.map(json.loads)` gives each row's own dict (an Arrow-string column's `.map` merges the dicts'
    keys into every row).
    """
    return frame.assign(**{name: _as_text(frame[name], _json_text) for name in JSON_COLUMNS})


def parquet_schema() -> pa.Schema:
    """The Arrow schema of every results file: the same whatever a chunk or partition holds."""
    schema = pa.Schema.from_pandas(parquet_columns(results_dataframe([])), preserve_index=False)
    for name in JSON_COLUMNS:  # empty, an object column has no type to infer
        schema = schema.set(schema.get_field_index(name), pa.field(name, pa.string()))
    return schema


def _csv_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """A results frame as CSV holds it: JSON text as in Parquet, and times as `iso_time` text."""
    return parquet_columns(frame).assign(**{name: _as_text(frame[name], iso_time) for name in TIME_COLUMNS})


def _as_text(column: pd.Series, text: Callable[[Any], str]) -> pd.Series:
    return pd.Series([None if _missing(v) else text(v) for v in column], index=column.index, dtype=object)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NaT


def _json_text(value: Any) -> str:
    return json.dumps(value, default=json_default)


def _chunks(views: Iterable[Mapping[str, Any]]) -> Iterator[pd.DataFrame]:
    rows = iter(views)
    while chunk := list(itertools.islice(rows, CHUNK_ROWS)):
        yield results_dataframe(chunk)
