"""`ctxbatch batches`: the newest batches first, filtered as `GET /api/batches` filters them, as a table or its JSON."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import Invoke, serving

from ctxbatch.config import Settings
from ctxbatch.io import ContextStore, Status
from ctxbatch.service import create_app
from ctxbatch.service.security import TOKEN_VARIABLE

CTXBATCH = Path(sys.executable).with_name("ctxbatch")


@pytest.fixture
def three(store: ContextStore) -> list[str]:
    """Three batches, oldest first: `first` (2 pending), `urgent` in queue `fast`, and `dropped` (cancelled)."""
    first = store.submit([{"payload": {"i": 1}}, {"payload": {"i": 2}}], name="first")
    urgent = store.submit([{"payload": {"i": 3}}], name="urgent", queue="fast")
    dropped = store.submit([{"payload": {"i": 4}}], name="dropped")
    store.cancel(dropped)
    return [first, urgent, dropped]


@pytest.fixture
def api_url(store: ContextStore, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    with serving(create_app(store, Settings())) as url:
        yield url


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["--status", "pending"],
        ["--queue", "fast"],
        ["--queue", "default", "--status", "cancelled"],
        ["--limit", "2"],
    ],
)
def test_batches_json_is_what_get_api_batches_answers(
    ctxbatch: Invoke, three: list[str], api_url: str, options: list[str]
) -> None:
    result = ctxbatch("batches", "--json", *options)
    assert result.exit_code == 0, result.stderr
    query = dict(zip(options[::2], options[1::2], strict=True))
    answer = httpx.get(f"{api_url}/api/batches", params={k.removeprefix("--"): v for k, v in query.items()})
    assert answer.status_code == 200
    assert json.loads(result.stdout) == answer.json()
    assert answer.json()["batches"]  # each filter here keeps some


def test_batches_are_listed_newest_first_and_filtered(ctxbatch: Invoke, three: list[str]) -> None:
    first, urgent, dropped = three

    def listed(*options: str) -> list[str]:
        result = ctxbatch("batches", "--json", *options)
        assert result.exit_code == 0, result.stderr
        return [batch["batch_id"] for batch in json.loads(result.stdout)["batches"]]

    assert listed() == [dropped, urgent, first]
    assert listed("--limit", "1") == [dropped]
    assert listed("--queue", "fast") == [urgent]
    assert listed("--queue", "default") == [dropped, first]
    assert listed("--status", "pending") == [urgent, first]
    assert listed("--status", "cancelled", "--queue", "fast") == []


def test_batches_print_a_table_of_id_name_queue_status_counts_and_created(
    mongo_uri: str, database: str, store: ContextStore, three: list[str]
) -> None:
    first, urgent, dropped = three
    command = [str(CTXBATCH), "--mongo-uri", mongo_uri, "--database", database, "batches"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "QUEUE", "STATUS", "COUNTS", "CREATED"]
    # Each column starts where its header does
    starts = [header.index(name) for name in ("NAME", "QUEUE", "STATUS", "COUNTS", "CREATED")]
    assert [[row[start - 2 : start] for start in starts] for row in rows] == [["  "] * 5] * 3
    created = {batch_id: store.batch_status(batch_id)["created_at"] for batch_id in three}
    assert [re.split(r"  +", row) for row in rows] == [
        [dropped, "dropped", "default", "cancelled", "1 cancelled of 1", created[dropped]],
        [urgent, "urgent", "fast", "pending", "1 pending of 1", created[urgent]],
        [first, "first", "default", "pending", "2 pending of 2", created[first]],
    ]


def test_no_batches_is_said_on_stderr(ctxbatch: Invoke, three: list[str]) -> None:
    result = ctxbatch("batches", "--queue", "slow")
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "no batches in queue slow\n"


@pytest.mark.parametrize(("option", "value"), [("--status", "done"), ("--limit", "0"), ("--limit", "many")])
def test_a_bad_option_is_one_error_line_and_exit_2(ctxbatch: Invoke, option: str, value: str) -> None:
    result = ctxbatch("batches", option, value)
    assert result.exit_code == 2
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and option in errors[0], result.stderr
    if option == "--status":
        assert all(f"'{status.value}'" in errors[0] for status in Status)
    assert "Traceback" not in result.output
