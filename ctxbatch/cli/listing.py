"""`ctxbatch batches`: the newest batches, as a table for a person or as the JSON of `GET /api/batches`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from ctxbatch.cli.state import State, pass_state, say
from ctxbatch.io import Status
from ctxbatch.io.views import DEFAULT_BATCH_LIST

COLUMNS = ("ID", "NAME", "QUEUE", "STATUS", "COUNTS", "CREATED")
# A batch's counts in this order, the zeros left out ("total" ends the line: "3 completed, 1 failed of 4").
SHOWN_COUNTS = [status.value for status in Status]


@click.command()
@click.option("--status", type=click.Choice(SHOWN_COUNTS), help="Only the batches with this status.")
@click.option("--queue", help="Only the batches of this queue.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=DEFAULT_BATCH_LIST, show_default=True, help="Show at most this many."
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON of GET /api/batches.")
@pass_state
def batches(state: State, status: str | None, queue: str | None, limit: int, as_json: bool) -> None:
    """List the newest batches first: id, name, queue, status, counts and when each was created."""
    found = state.store.list_batches(status, limit, queue)
    if as_json:
        click.echo(json.dumps({"batches": found}))
        return
    if not found:
        which = "".join(f" {label} {value}" for label, value in (("with status", status), ("in queue", queue)) if value)
        say(f"no batches{which}")
        return
    for line in table(COLUMNS, [_row(batch) for batch in found]):
        click.echo(line)


def _row(batch: dict[str, Any]) -> list[str]:
    counts = batch["counts"]
    shown = ", ".join(f"{counts[status]} {status}" for status in SHOWN_COUNTS if counts.get(status))
    summary = f"{shown} of {counts['total']}" if shown else f"{counts['total']} contexts"
    name = batch.get("name") or "-"
    return [batch["batch_id"], name, batch["queue"], batch["status"], summary, batch["created_at"]]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart under their headers, without trailing blanks."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = (headers, *rows)
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
