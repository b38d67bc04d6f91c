"""One timestamp format wherever ctxbatch prints or exports a time (issue 21, item 5).

ISO 8601 in UTC, milliseconds always, `Z`: `2026-12-05T19:51:54.000Z`. Before, a moment on a whole
second printed as `19:51:54+00:00` beside `19:51:21.623000+00:00`, and `pd.to_datetime` refused the
column unless told `format='ISO8601'`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import Invoke, http_client

from ctxbatch.cli import main
from ctxbatch.config import Settings
from ctxbatch.display import iso_time
from ctxbatch.io import ContextStore
from ctxbatch.io.alert_state import AlertBook
from ctxbatch.monitoring.page import headline
from ctxbatch.monitoring.snapshot import read_snapshot
from ctxbatch.service import create_app
from ctxbatch.service.security import TOKEN_VARIABLE

ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
WHOLE_SECOND = dt.datetime(2026, 12, 5, 19, 51, 54, tzinfo=dt.UTC)
SHOWN_WHOLE_SECOND = "2026-12-05T19:51:54.000Z"
CONTEXT_TIMES = ("next_attempt_at", "created_at", "started_at", "finished_at")


def times_in(value: Any) -> list[str]:
    """Every time in a JSON value: the values of its fields named `*_at`, at any depth, but null."""
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k.endswith("_at") and v is not None and not isinstance(v, dict)]
        return found + [t for v in value.values() if isinstance(v, dict | list) for t in times_in(v)]
    if isinstance(value, list):
        return [t for item in value for t in times_in(item)]
    return []


def assert_one_format(times: list[Any]) -> None:
    """All in the one format, and a column of them parsed by pandas with no format given."""
    assert times, "no times to check"
    assert [t for t in times if not (isinstance(t, str) and ISO_TIME.fullmatch(t))] == []
    parsed = pd.to_datetime(pd.Series(times))
    assert str(parsed.dt.tz) == "UTC"


def on_a_whole_second(store: ContextStore, collection: str, doc_id: str) -> None:
    """Set a document's `created_at` to a whole second (written whole: a `$set` date is text on nx-27017)."""
    found = store.db[collection].find_one({"_id": doc_id})
    assert found is not None
    store.db[collection].replace_one({"_id": doc_id}, {**found, "created_at": WHOLE_SECOND})


@pytest.fixture
def batch_id(store: ContextStore) -> str:
    """A cancelled batch with a deadline: one context completed, one failed, one cancelled; the batch and
    its first context created on a whole second, the moment `isoformat()` wrote without a fraction."""
    batch = store.submit([{"payload": {"n": n}} for n in range(3)], completion_window="24h")
    claim = store.claim(2, "test")
    store.complete(claim, {claim.ids[0]: {"answer": 42}})
    store.fail(claim, {claim.ids[1]: {"type": "ValueError", "message": "bad", "traceback": ""}})
    store.cancel(batch)
    on_a_whole_second(store, "batches", batch)
    on_a_whole_second(store, "contexts", claim.ids[0])
    return batch


# -- the one function ------------------------------------------------------------------------


def test_a_whole_second_keeps_its_milliseconds() -> None:
    assert iso_time(WHOLE_SECOND) == SHOWN_WHOLE_SECOND


def test_microseconds_are_cut_to_milliseconds_as_mongodb_keeps_them() -> None:
    assert iso_time(WHOLE_SECOND.replace(microsecond=623_999)) == "2026-12-05T19:51:54.623Z"


def test_another_zone_is_shown_in_utc() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    assert iso_time(dt.datetime(2026, 12, 5, 20, 51, 54, 5000, tzinfo=paris)) == "2026-12-05T19:51:54.005Z"


def test_a_naive_moment_is_taken_as_utc_as_pymongo_gives_them() -> None:
    assert iso_time(dt.datetime(2026, 12, 5, 19, 51, 54)) == SHOWN_WHOLE_SECOND


# -- the command line -------------------------------------------------------------------------


def test_results_json_lines_have_one_format(ctxbatch: Invoke, batch_id: str, tmp_path: Path) -> None:
    printed = ctxbatch("results", batch_id)
    assert printed.exit_code == 0, printed.stderr
    path = tmp_path / "out.jsonl"
    assert ctxbatch("results", batch_id, "-o", str(path)).exit_code == 0
    for text in (printed.stdout, path.read_text()):
        rows = [json.loads(line) for line in text.splitlines()]
        for column in CONTEXT_TIMES:
            assert_one_format([row[column] for row in rows if row[column] is not None])
        assert SHOWN_WHOLE_SECOND in {row["created_at"] for row in rows}


def test_results_csv_has_one_format(ctxbatch: Invoke, batch_id: str, tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    assert ctxbatch("results", batch_id, "-o", str(path)).exit_code == 0
    frame = pd.read_csv(path)
    for column in CONTEXT_TIMES:
        assert_one_format(frame[column].dropna().tolist())
        pd.to_datetime(frame[column])  # the column as read, missing times and all
    assert SHOWN_WHOLE_SECOND in set(frame["created_at"])


def test_results_parquet_keeps_real_timestamps_in_utc_to_the_millisecond(
    ctxbatch: Invoke, batch_id: str, tmp_path: Path
) -> None:
    path = tmp_path / "out.parquet"
    assert ctxbatch("results", batch_id, "-o", str(path)).exit_code == 0
    schema = pq.read_schema(path)
    assert {schema.field(column).type for column in CONTEXT_TIMES} == {pa.timestamp("ms", tz="UTC")}
    assert pd.Timestamp(WHOLE_SECOND) in set(pd.read_parquet(path)["created_at"])


def test_status_json_has_one_format(ctxbatch: Invoke, batch_id: str) -> None:
    shown = json.loads(ctxbatch("status", batch_id, "--json").stdout)
    assert set(times_in(shown)) >= {shown["created_at"], shown["expires_at"], shown["cancelled_at"]}
    assert_one_format(times_in(shown))
    assert shown["created_at"] == SHOWN_WHOLE_SECOND


def test_status_text_shows_the_deadline_in_the_one_format(ctxbatch: Invoke, batch_id: str) -> None:
    (line,) = [line for line in ctxbatch("status", batch_id).stdout.splitlines() if "expires at" in line]
    assert_one_format([line.split("expires at ")[1]])


def test_top_stamps_each_line_in_the_one_format(mongo_uri: str, database: str, batch_id: str) -> None:
    shown = CliRunner().invoke(main, ["--mongo-uri", mongo_uri, "--database", database, "top", "-n", "1"])
    assert shown.exit_code == 0, shown.stderr
    assert_one_format([shown.stdout.split()[0]])


# -- the HTTP API, over a socket -----------------------------------------------------------


@pytest.fixture
def http(store: ContextStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    with http_client(create_app(store, Settings())) as client:
        yield client


def test_a_batch_over_http_has_one_format(http: httpx.Client, batch_id: str) -> None:
    one = http.get(f"/api/batches/{batch_id}").json()
    listed = http.get("/api/batches").json()
    assert_one_format(times_in(one) + times_in(listed))
    assert one["created_at"] == SHOWN_WHOLE_SECOND


def test_contexts_over_http_have_one_format(http: httpx.Client, batch_id: str) -> None:
    page = http.get(f"/api/batches/{batch_id}/results").json()
    lines = http.get(f"/api/batches/{batch_id}/results", headers={"Accept": "application/x-ndjson"}).text
    streamed = [json.loads(line) for line in lines.splitlines()]
    one = http.get(f"/api/contexts/{page['contexts'][0]['id']}").json()
    assert_one_format(times_in(page) + times_in(streamed) + times_in(one))
    assert SHOWN_WHOLE_SECOND in {row["created_at"] for row in streamed}


# -- the dashboard and alerts --------------------------------------------------------------


def test_the_dashboard_says_when_it_was_updated_in_the_one_format(store: ContextStore, batch_id: str) -> None:
    snapshot = replace(read_snapshot(store, 300, 10), at=WHOLE_SECOND)
    assert headline(snapshot).endswith(f"updated {SHOWN_WHOLE_SECOND}</small>")


def test_an_alert_records_when_it_started_in_the_one_format(store: ContextStore) -> None:
    book = AlertBook(store.connection)
    assert book.fire("QueueBacklog", None, "loop-1", 5.0, WHOLE_SECOND)
    assert book.states()["QueueBacklog"].starts_at == SHOWN_WHOLE_SECOND
