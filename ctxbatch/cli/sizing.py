"""`ctxbatch sizing`: the batch size each engine's next run starts from, and how to forget it (issue 22)."""

from __future__ import annotations

import json
from typing import Any

import click

from ctxbatch.cli.state import State, pass_state, say
from ctxbatch.io import json_default


@click.command()
@click.option("--engine", help="Only this engine (its name, as `run --engine` or `engine:` gave it).")
@click.option("--queue", help="Only loops that claim from this queue.")
@click.option("--forget", is_flag=True, help="Forget it: the next runs search up from worker.batch_size again.")
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
@pass_state
def sizing(state: State, engine: str | None, queue: str | None, forget: bool, as_json: bool) -> None:
    """What the dynamic sizer learned per engine, queues and setup: the size a new run starts from."""
    if forget:
        gone = state.store.forget_sizing_history(engine, queue)
        say(f"forgot {gone} remembered batch size{'' if gone == 1 else 's'}")
        return
    entries = state.store.sizing_history(engine, queue)
    if as_json:
        click.echo(json.dumps(entries, default=json_default))
        return
    if not entries:
        say("no batch size remembered (dynamic sizing keeps one per engine, queues and setup as it runs)")
        return
    rows: list[tuple[str, ...]] = [("engine", "queues", "size", "state", "contexts/s", "kept at", "setup")]
    rows += [_row(entry) for entry in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


def _row(entry: dict[str, Any]) -> tuple[str, ...]:
    setup = entry.get("setup") or {}
    parallel, target = setup.get("max_parallel_batches"), setup.get("target_batch_seconds")
    shown = f"{setup.get('cluster')}; {parallel} batches in flight; target {target} s"
    rate = entry.get("throughput")
    return (
        str(entry.get("engine")),
        ",".join(entry.get("queues") or ()),
        str(entry.get("size")),
        str(entry.get("state")),
        f"{rate:.0f}" if isinstance(rate, int | float) else "-",
        json_default(entry["updated_at"]) if entry.get("updated_at") else "-",
        shown,
    )
