"""README's `ctxbatch` command lines work as shown (issue 21): every one is parsed by the real CLI,
and the cheap ones run against the test server.

Each bash block of README is an example of its own: its commands run in order, in the current
directory of the test, on a database of their own that holds a batch from the start (the BATCH_ID
of a block that submits nothing); a `submit` makes the batch id it prints the BATCH_ID of the
commands after it. README's notation is read as a reader reads it: `[...]` is optional (filled
in), `a|b` inside a word offers alternatives and so does `cmd | other` when `other` is a command of
the same group (`db start | stop`): each one is tried. `cat FILE | ctxbatch ...` feeds the file,
`VAR=value` sets the environment. Placeholders and the example hosts become local ones.

Parsed only (click makes every context, checking each command, option, argument and value, and runs
nothing): `run`, `demo` and `serve` start a Dask cluster or serve until stopped (tests/test_hints.py
runs the demo), and `db stop` would stop the server every test shares.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import ROOT, json_lines

from ctxbatch.cli import main
from ctxbatch.io import ContextStore

FENCE = re.compile(r"^\s*```(\w*)\s*$")
SEPARATORS = ("&&", "||", ";", "|")
PARSED_ONLY = {("run",), ("demo",), ("serve",), ("db", "stop")}
# README's placeholders, and the hosts of its examples
PLACEHOLDERS = {"FILE": "ctxbatch.yaml", "SECONDS": "60", "REFRESHES": "1", "S": "completed", "Q": "default", "N": "10"}
SCHEDULER = {"tcp://scheduler:8786": "tcp://127.0.0.1:8786"}
CONTEXTS = [{"payload": {"text": "hello world"}, "priority": 5}, {"payload": {"text": "bye"}}]
OPENAI_LINES = [
    {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}}
    for i in range(2)
]
INPUTS = {"batch_input.jsonl": OPENAI_LINES}  # any other file README submits holds CONTEXTS


@dataclass(frozen=True)
class Shown:
    """One `ctxbatch` command of README: where, its words after `ctxbatch`, its environment and input."""

    line: int
    words: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None

    @property
    def parsed_only(self) -> bool:
        return self.words[:1] in PARSED_ONLY or self.words[:2] in PARSED_ONLY


def bash_blocks() -> list[list[tuple[int, str]]]:
    """README's bash blocks: each a list of (line number, shell line), continued lines joined."""
    blocks: list[list[tuple[int, str]]] = []
    block: list[tuple[int, str]] | None = None  # the bash block we are in
    inside, continued = False, ""
    for number, text in enumerate((ROOT / "README.md").read_text().splitlines(), 1):
        fence = FENCE.match(text)
        if fence and inside:
            if block is not None:
                blocks.append(block)
            inside, block = False, None
        elif fence:
            inside, block = True, [] if fence.group(1) == "bash" else None
        elif block is not None:
            if text.endswith("\\"):
                continued += text[:-1]
                continue
            block.append((number, continued + text))
            continued = ""
    return blocks


def alternative(previous: tuple[str, ...], words: list[str]) -> tuple[str, ...] | None:
    """`ctxbatch db start | stop`: `stop` is another command of the group `previous` names (`db stop`)."""
    group: click.Command = main
    depth = 0
    while isinstance(group, click.Group) and isinstance(group.commands.get(previous[depth]), click.Group):
        group = group.commands[previous[depth]]
        depth += 1
    assert isinstance(group, click.Group)
    return (*previous[:depth], *words) if words[0] in group.commands else None


def commands_of(line: int, text: str) -> list[Shown]:
    """The `ctxbatch` commands a shell line of README shows, alternatives and optional parts expanded."""
    segments: list[tuple[str | None, list[str]]] = [(None, [])]
    for token in shlex.split(text, comments=True):
        if token in SEPARATORS:
            segments.append((token, []))
        else:
            segments[-1][1].append(token)
    shown: list[Shown] = []
    previous: tuple[str, ...] | None = None
    fed: str | None = None  # the file `cat FILE |` pipes into what follows
    for separator, tokens in segments:
        assignments = list(itertools.takewhile(lambda token: re.match(r"\w+=", token), tokens))
        env = dict(assignment.split("=", 1) for assignment in assignments)
        tokens = tokens[len(assignments) :]
        if tokens[0] == "ctxbatch":
            previous = tuple(tokens[1:])
        elif separator == "|" and previous is not None and (other := alternative(previous, tokens)):
            previous = other
        else:
            previous, fed = None, tokens[1] if tokens[0] == "cat" else None
            continue
        for words in itertools.product(*(word.strip("[]").split("|") for word in previous)):
            shown.append(Shown(line, tuple(words), env, fed if separator == "|" else None))
    return shown


def readme_blocks() -> list[list[Shown]]:
    """README's bash blocks that show `ctxbatch` commands, as those commands."""
    blocks = [[shown for line, text in block for shown in commands_of(line, text)] for block in bash_blocks()]
    return [block for block in blocks if block]


def write_inputs(shown: Shown, words: list[str]) -> None:
    """The file `cat` feeds the command, or the file a `submit` names, written unless it is there."""
    names = [shown.stdin] if shown.stdin else words[1:2] if words[0] == "submit" else []
    for name in names:
        if name != "-" and not Path(name).exists():
            json_lines(Path(name), INPUTS.get(name, CONTEXTS))


def parse(words: list[str]) -> None:
    """What click does with `ctxbatch WORDS` before running it: every context made, every value checked."""
    command: click.Command | None = main
    context = main.make_context("ctxbatch", list(words))
    while isinstance(command, click.Group):
        left = words[len(words) - len(context.args) - 1 :]  # a group stops at its command's name
        name, command, words = command.resolve_command(context, left)
        assert command is not None and name is not None
        context = command.make_context(name, words, parent=context)


BLOCKS = readme_blocks()


def test_readme_shows_the_commands_it_documents() -> None:
    shown = {words[0] for block in BLOCKS for words in (s.words for s in block)}
    assert shown >= {"submit", "status", "results", "cancel", "retry", "run", "serve", "stats", "top", "db", "demo"}
    assert any(s.words[0] == "run" and "--mongo-uri" in s.words for block in BLOCKS for s in block)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line {block[0].line}" for block in BLOCKS])
def test_a_readme_block_works_as_shown(
    block: list[Shown],
    mongo_uri: str,
    database: str,
    store: ContextStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    batch_id = store.submit(CONTEXTS)
    local = {**PLACEHOLDERS, **SCHEDULER, "mongodb://db:27017": mongo_uri}
    for shown in block:
        words = [batch_id if word == "BATCH_ID" else local.get(word, word) for word in shown.words]
        where = f"README line {shown.line}: ctxbatch {shlex.join(words)}"
        if shown.parsed_only:
            try:
                parse(words)
            except click.ClickException as refused:
                pytest.fail(f"{where}: {refused.format_message()}")
            continue
        write_inputs(shown, words)
        stdin = Path(shown.stdin).read_text() if shown.stdin else None
        ran = CliRunner().invoke(main, words, input=stdin, env={"CTXBATCH_DATABASE": database, **shown.env})
        assert ran.exit_code == 0, f"{where}: exit {ran.exit_code}\n{ran.output}"
        assert "Traceback" not in ran.output, where
        if words[0] == "submit":
            batch_id = ran.stdout.strip()
            assert store.batch_status(batch_id)["counts"]["total"] > 0, where
        elif words[0] == "status" and "--json" in words:
            assert json.loads(ran.stdout)["batch_id"] == batch_id, where
