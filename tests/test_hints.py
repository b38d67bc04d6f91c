"""Every command ctxbatch prints for a user to run works as printed (issue 21): each one is run here.

A printed command is split as a shell splits it and run by the real CLI, in the environment the
command that printed it ran in (as the user's next command would be).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from conftest import servers_for
from pymongo import MongoClient

from ctxbatch.cli import main
from ctxbatch.io import ContextStore, embedded

DEMO_DATABASE = "ctxbatch_demo"


def ctxbatch(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def run_printed(command: str) -> Result:
    """`ctxbatch ...` as printed, split as a shell splits it, run by the real CLI."""
    words = shlex.split(command)
    assert words[0] == "ctxbatch", command
    return ctxbatch(*words[1:])


def printed_after(output: str, lead: str) -> str:
    """The command on the line that starts with `lead`."""
    lines = [line for line in output.splitlines() if line.startswith(lead)]
    assert len(lines) == 1, output
    return lines[0].removeprefix(lead)


@pytest.fixture
def demo_database(mongo_uri: str) -> Iterator[str]:
    """The demo's own database on the session server, empty before the test and dropped after it."""
    client: MongoClient[dict[str, object]]
    with MongoClient(mongo_uri) as client:
        client.drop_database(DEMO_DATABASE)
        yield DEMO_DATABASE
        client.drop_database(DEMO_DATABASE)


def assert_shows_the_batch(shown: Result, batch_id: str, count: int) -> None:
    assert shown.exit_code == 0, shown.output
    rows = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(rows) == count
    assert {row["batch_id"] for row in rows} == {batch_id}


def test_the_demos_hint_shows_its_results(demo_database: str) -> None:
    # Given the demo as README's Quick start runs it: no options
    demo = ctxbatch("demo", "--count", "20")
    assert demo.exit_code == 0, demo.output
    batch_id = json.loads(demo.stdout)["batch_id"]
    # When its closing hint is run as printed
    hint = printed_after(demo.stderr, "see the results with: ")
    # Then it shows the demo's batch, from the demo's database
    assert_shows_the_batch(run_printed(hint), batch_id, 20)


def test_the_demos_hint_carries_the_uri_it_was_given(demo_database: str, mongo_uri: str, home: Path) -> None:
    # Given a demo told its database by URI (after the command), in a CTXBATCH_HOME with no server:
    # a command not given the URI would find (and start) an empty embedded server there
    demo = ctxbatch("demo", "--count", "20", "--mongo-uri", mongo_uri)
    assert demo.exit_code == 0, demo.output
    batch_id = json.loads(demo.stdout)["batch_id"]
    hint = printed_after(demo.stderr, "see the results with: ")
    # Then the hint reaches the demo's batch all the same
    assert_shows_the_batch(run_printed(hint), batch_id, 20)
    assert not embedded.status().running


def test_db_starts_hint_stops_the_server(home: Path) -> None:
    started = ctxbatch("db", "start")
    assert started.exit_code == 0, started.output
    hint = started.stderr.split("; stop it with `")[1].split("`")[0]
    stopped = run_printed(hint)
    assert stopped.exit_code == 0, stopped.output
    assert stopped.stderr == "stopped the embedded database\n"
    assert servers_for(home) == []


def test_the_no_engine_error_names_what_to_add(mongo_uri: str, database: str, store: ContextStore) -> None:
    run = ["run", "--until-empty", "--mongo-uri", mongo_uri, "--database", database]
    refused = ctxbatch(*run)
    assert refused.exit_code == 2
    assert refused.stderr.splitlines()[-1] == (
        "Error: no engine: pass --engine module:callable or set `engine:` in the config"
    )
    followed = ctxbatch(*run, "--engine", "echo")
    assert followed.exit_code == 0, followed.output
