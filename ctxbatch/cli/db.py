"""`ctxbatch db`: the embedded database (nx-27017) used when no MongoDB URI is given."""

from __future__ import annotations

import json
import sys

import click

from ctxbatch.cli.state import say
from ctxbatch.io import embedded


@click.group()
def db() -> None:
    """Manage the embedded database (nx-27017) used when no MongoDB URI is given."""


@db.command("start")
def db_start() -> None:
    """Start the embedded database (or say where it runs)."""
    current = embedded.status()
    if current.running:
        say(f"the embedded database is already running at {current.uri} (pid {current.pid})")
        return
    embedded.start(announce=say)


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded database; its data stays."""
    say("stopped the embedded database" if embedded.stop() else "the embedded database was not running")


@db.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def db_status(as_json: bool) -> None:
    """Whether the embedded database runs, and where."""
    current = embedded.status()
    if as_json:
        click.echo(json.dumps(current.to_json()))
    elif current.running:
        click.echo(f"running at {current.uri} (pid {current.pid}), data in {current.data_dir}")
    else:
        click.echo(f"not running; data in {current.data_dir}")
        sys.exit(3)
