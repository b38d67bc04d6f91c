"""`ctxbatch stats` and `ctxbatch top`: the whole cluster's throughput, success and latency, from the database."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from typing import Any

import click

from ctxbatch.cli.state import State, pass_state
from ctxbatch.io.stats import DEFAULT_WINDOW_SECONDS
from ctxbatch.monitoring import terminal


class Seconds(click.ParamType):
    """A span in seconds: a positive, finite number."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (math.isfinite(seconds) and seconds > 0):
            self.fail(f"{value!r} is not a positive number of seconds", param, ctx)
        return seconds


def _title(batch_id: str | None) -> str:
    return f"batch {batch_id}" if batch_id else "all batches"


WINDOW = click.option(
    "--window",
    type=Seconds(),
    default=DEFAULT_WINDOW_SECONDS,
    show_default=True,
    help="Seconds of finished work to count.",
)


@click.command()
@click.argument("batch_id", required=False)
@WINDOW
@click.option("--tenant", help="Only this tenant's contexts.")
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@pass_state
def stats(state: State, batch_id: str | None, window: float, tenant: str | None, as_json: bool) -> None:
    """Throughput, success rate, latency and the queue of the whole cluster (or one batch), from the database."""
    found = state.store.stats(batch_id, window, tenant)
    if as_json:
        click.echo(json.dumps(found))
        return
    title = _title(batch_id) + (f", tenant {tenant}" if tenant is not None else "")
    click.echo("\n".join(terminal.stats_lines(found, title)))


@click.command()
@click.argument("batch_id", required=False)
@WINDOW
@click.option("--interval", type=Seconds(), default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("-n", "--refreshes", type=click.IntRange(min=1), help="Stop after this many refreshes.")
@pass_state
def top(state: State, batch_id: str | None, window: float, interval: float, refreshes: int | None) -> None:
    """A live view of `ctxbatch stats`: redrawn in place on a terminal, one line per refresh otherwise."""
    store = state.store
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a live view ends
        terminal.top(lambda: store.stats(batch_id, window), sys.stdout, interval, refreshes, _title(batch_id))
