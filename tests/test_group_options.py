"""`--mongo-uri`, `--database` and `--config` before the command or after it, for every command (issue 21)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner, Result
from conftest import json_lines

from ctxbatch.cli import main
from ctxbatch.io import ContextStore


def ctxbatch(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def command_paths(group: click.Group = main, above: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command and group under `ctxbatch`, as the words that name it."""
    for name, command in group.commands.items():
        yield (*above, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, (*above, name))


def test_status_takes_the_database_after_the_command(mongo_uri: str, database: str, store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {"n": 1}}])
    result = ctxbatch("status", batch_id, "--json", "--mongo-uri", mongo_uri, "--database", database)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["pending"] == 1


def test_run_takes_mongo_uri_after_the_command(mongo_uri: str, database: str, store: ContextStore) -> None:
    # README's `ctxbatch run --scheduler-address ... --mongo-uri ...`, on an empty queue (it stops at once)
    result = ctxbatch("run", "--engine", "echo", "--until-empty", "--mongo-uri", mongo_uri, "--database", database)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("completed 0,")


def test_config_after_the_command_is_read(mongo_uri: str, database: str, store: ContextStore, tmp_path: Path) -> None:
    # Given a config that names this test's database
    config = tmp_path / "ctxbatch.yaml"
    config.write_text(yaml.safe_dump({"mongo": {"uri": mongo_uri, "database": database}}))
    # When a submit takes it after the command
    result = ctxbatch("submit", json_lines(tmp_path / "in.jsonl", [{"payload": {}}]), "--config", str(config))
    # Then the batch is in that database
    assert result.exit_code == 0, result.output
    assert store.batch_status(result.stdout.strip())["counts"]["total"] == 1


def test_after_the_command_beats_the_environment(mongo_uri: str, database: str, store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {}}])
    env = {"CTXBATCH_DATABASE": "not_this_one"}
    result = ctxbatch("--mongo-uri", mongo_uri, "status", batch_id, "--database", database, env=env)
    assert result.exit_code == 0, result.output


def test_the_same_value_in_both_places_is_accepted(mongo_uri: str, database: str, store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {}}])
    result = ctxbatch("--database", database, "status", batch_id, "--database", database, "--mongo-uri", mongo_uri)
    assert result.exit_code == 0, result.output


def test_two_different_values_are_refused_naming_both(mongo_uri: str) -> None:
    result = ctxbatch("--mongo-uri", mongo_uri, "--database", "a", "status", "x", "--database", "b")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == (
        "Error: --database is given twice, as 'a' and as 'b'; give it once, before the command or after it"
    )
    assert "Traceback" not in result.output


@pytest.mark.parametrize("path", list(command_paths()), ids=" ".join)
def test_every_command_takes_the_group_options_after_it(path: tuple[str, ...]) -> None:
    result = ctxbatch(*path, "--mongo-uri", "mongodb://h", "--database", "d", "--config", "c.yaml", "--help")
    assert result.exit_code == 0, result.output
    assert all(flag in result.stdout for flag in ("--mongo-uri", "--database", "--config"))
