"""The queue's commands: submit, status, results, cancel, retry, run, demo."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ctxbatch.cli.state import Main, State, pass_state, say
from ctxbatch.config import DEFAULT_QUEUE, PRIORITY_MAX, PRIORITY_MIN, Settings, load_config
from ctxbatch.errors import InputError, SubmitError
from ctxbatch.io import json_default, openai_batch
from ctxbatch.io.formats import read_submission
from ctxbatch.io.outage import known_drained
from ctxbatch.resolve import BUILTIN_ENGINES


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ctxbatch")
def main() -> None:
    """Bulk processing of prioritised JSON contexts over MongoDB and Dask.

    --mongo-uri, --database and --config go before the command or after it.
    """


@main.command()
@click.argument("source", metavar="FILE|-")
@click.option("--priority", type=click.IntRange(PRIORITY_MIN, PRIORITY_MAX), help="Priority of records that give none.")
@click.option("--name", help="A name for the batch.")
@click.option("--queue", default=DEFAULT_QUEUE, show_default=True, help="The queue the batch joins.")
@click.option("--tenant", help="Tenant of records that name none (claims share batches among tenants).")
@click.option(
    "--format",
    "form",
    type=click.Choice(["openai"]),
    help="Read the lines as OpenAI batch requests (recognised without it when the first line is one).",
)
@click.option(
    "--completion-window",
    metavar="DURATION",
    help="The batch's deadline, such as 24h, 30m or 90s: what is still pending then expires.",
)
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="Submit again safely: the same key and content within api.idempotency_hours print the first "
    "batch id and store nothing; while the first is still being stored, wait for it.",
)
@pass_state
def submit(
    state: State,
    source: str,
    priority: int | None,
    name: str | None,
    queue: str,
    tenant: str | None,
    form: str | None,
    completion_window: str | None,
    idempotency_key: str | None,
) -> None:
    """Submit contexts (JSON Lines, JSON array, CSV, Parquet or OpenAI batch lines); prints the batch id.

    The id is printed at the commit: printed, the whole submission will be processed; not printed
    (refused, interrupted, killed), none of it ever is.
    """
    submission = read_submission(source)
    try:
        submitted = state.store.submit_counted(
            submission.records,
            priority=priority,
            name=name,
            queue=queue,
            completion_window=completion_window,
            format=form,
            idempotency_key=idempotency_key,
            tenant=tenant,
        )
    except SubmitError as exc:
        if exc.field == "idempotency_key":
            raise click.BadParameter(exc.message, param_hint="--idempotency-key") from None
        where = submission.locate(exc.index) if exc.index is not None else source
        field = f"{exc.field}: " if exc.field else ""
        raise InputError(f"{where}: {field}{exc.said(submission.locate)}; nothing was submitted") from None
    click.echo(submitted.batch_id)  # flushed: the acknowledgement
    if submitted.replayed:
        say(f"idempotency key {idempotency_key!r}: batch {submitted.batch_id} was submitted with it; nothing stored")
    # The move into the queue finishes before the command ends (the janitor's job if it is killed).
    state.store.wait_moved(submitted.batch_id)


@main.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_state
def status(state: State, batch_id: str, as_json: bool) -> None:
    """Show a batch's status and counts."""
    report = state.store.batch_status(batch_id)
    if as_json:
        click.echo(json.dumps(report))
        return
    counts = report["counts"]
    queue = "" if report["queue"] == DEFAULT_QUEUE else f" (queue {report['queue']})"
    click.echo(f"batch {report['batch_id']}: {report['status']}{queue}")
    click.echo("  " + "  ".join(f"{key} {counts[key]}" for key in counts))
    for tenant, by_status in report.get("tenants", {}).items():
        shown = "  ".join(f"{key} {n}" for key, n in by_status.items() if n or key == "total")
        click.echo(f"  tenant {tenant or '(none)'}: {shown}")
    if report.get("expires_at"):
        passed = "expired" if report.get("expired_at") else "expires"
        click.echo(f"  {passed} at {report['expires_at']}")
    usage = report["usage"]
    if usage["total"] > 0:
        click.echo(f"  tokens  input {usage['input']}  output {usage['output']}  total {usage['total']}")


@main.command()
@click.argument("batch_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write to .parquet, .jsonl or .csv instead of JSON Lines on stdout.",
)
@click.option(
    "--format",
    "form",
    type=click.Choice(["openai"]),
    help="OpenAI's batch output lines: the completed requests (and their failures with --errors-output).",
)
@click.option(
    "--errors-output",
    type=click.Path(dir_okay=False, writable=True),
    help="With --format openai: write the failed, expired and cancelled requests' lines here.",
)
@pass_state
def results(state: State, batch_id: str, output: str | None, form: str | None, errors_output: str | None) -> None:
    """Print or save a batch's contexts with their results and errors."""
    if form == "openai":
        _openai_results(state, batch_id, output, errors_output)
        return
    if errors_output is not None:
        raise click.UsageError("--errors-output goes with --format openai")
    if output is None:
        for row in state.store.iter_results(batch_id):
            click.echo(_json_line(row), nl=False)
        return
    writers: dict[str, Callable[[Any, Path], None]] = {
        ".parquet": lambda frame, path: _to_parquet(frame, path),
        ".csv": lambda frame, path: _json_columns(frame).to_csv(path, index=False),
    }
    path = Path(output)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        # The same encoder as stdout, row by row: pandas' to_json keeps 10 digits of a float.
        with path.open("w", encoding="utf-8") as out:
            written = sum(out.write(_json_line(row)) > 0 for row in state.store.iter_results(batch_id))
        say(f"wrote {written} contexts to {path}")
        return
    writer = writers.get(suffix)
    if writer is None:
        raise click.BadParameter("the file must end in .parquet, .jsonl or .csv", param_hint="--output")
    frame = state.store.results(batch_id)
    writer(frame, path)
    say(f"wrote {len(frame)} contexts to {path}")


def _openai_results(state: State, batch_id: str, output: str | None, errors_output: str | None) -> None:
    """OpenAI's output and error files, streamed in input order (flat memory at any size)."""
    with contextlib.ExitStack() as files:
        out = files.enter_context(Path(output).open("w", encoding="utf-8")) if output else sys.stdout
        errors = files.enter_context(Path(errors_output).open("w", encoding="utf-8")) if errors_output else None
        written = openai_batch.write_lines(state.store.iter_results(batch_id, payload=False), out, errors)
    where = f" to {output}" if output else ""
    say(f"wrote {written.output} completed requests{where}")
    if errors_output:
        say(f"wrote {written.errors} failed, expired or cancelled requests to {errors_output}")
    elif written.errors:
        say(f"{written.errors} failed, expired or cancelled requests are not written; add --errors-output FILE")
    if written.unfinished:
        say(f"{written.unfinished} requests are still pending or processing; they are in neither file yet")


def _json_line(row: dict[str, Any]) -> str:
    return json.dumps(row, default=json_default) + "\n"


def _json_columns(frame: Any) -> Any:
    """Nested columns as JSON text, for formats that hold only flat values."""
    frame = frame.copy()
    for column in ("payload", "result", "error"):
        frame[column] = [None if v is None else json.dumps(v, default=json_default) for v in frame[column]]
    return frame


def _to_parquet(frame: Any, path: Path) -> None:
    # Results are free-form JSON, so nested columns are stored as JSON text.
    _json_columns(frame).to_parquet(path, index=False)


@main.command()
@click.argument("batch_id")
@pass_state
def cancel(state: State, batch_id: str) -> None:
    """Cancel a batch's pending contexts."""
    say(f"cancelled {state.store.cancel(batch_id)} pending contexts of {batch_id}")


@main.command()
@click.argument("batch_id")
@click.option("--expired", is_flag=True, help="Retry the expired contexts instead, under a fresh completion window.")
@pass_state
def retry(state: State, batch_id: str, expired: bool) -> None:
    """Send a batch's failed contexts back to the queue with attempts reset."""
    which = "expired" if expired else "failed"
    say(f"{state.store.retry(batch_id, expired=expired)} {which} contexts of {batch_id} are pending again")


class ListsEngines(click.Command):
    """A command whose help ends with the built-in engines, one line each, from their one registry."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Built-in engines (--engine NAME)"):
            formatter.write_dl([(name, builtin.summary) for name, builtin in BUILTIN_ENGINES.items()])
        super().format_epilog(ctx, formatter)


@main.command(cls=ListsEngines)
@click.option("--engine", help="The engine: a built-in (listed below) or module:callable (default: `engine:`).")
@click.option("--workers", type=click.IntRange(min=1), help="Workers of the local Dask cluster.")
@click.option("--scheduler-address", help="Use this Dask scheduler instead of a local cluster.")
@click.option(
    "--queue",
    "queues",
    multiple=True,
    help="Claim only from this queue (repeat for several; default: worker.queues, else 'default').",
)
@click.option("--until-empty", is_flag=True, help="Stop once nothing is pending or processing.")
@click.option("--max-contexts", type=click.IntRange(min=1), help="Stop after claiming this many contexts.")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics on this port while running (0: any free port).",
)
@pass_state
def run(
    state: State,
    engine: str | None,
    workers: int | None,
    scheduler_address: str | None,
    queues: tuple[str, ...],
    until_empty: bool,
    max_contexts: int | None,
    metrics_port: int | None,
) -> None:
    """Process contexts: claim batches, map the engine over Dask partitions, write results back."""
    settings = state.config
    if metrics_port is not None:
        settings.monitoring.metrics_port = metrics_port
    if workers is not None:
        settings.dask.n_workers = workers
    if queues:
        settings.worker.queues = list(queues)
    if scheduler_address:
        settings.dask.scheduler_address = scheduler_address
    engine = engine or settings.engine
    if not engine:
        raise click.UsageError("no engine: pass --engine module:callable or set `engine:` in the config")
    _run_pipeline(state, settings, engine, until_empty=until_empty, max_contexts=max_contexts)


def _run_pipeline(
    state: State, settings: Settings, engine: str, until_empty: bool, max_contexts: int | None = None
) -> None:
    from ctxbatch.pipeline.report import RunReport

    if until_empty and known_drained(state.store, settings.worker.queues):
        # Before importing the pipeline (Dask, distributed, bokeh): an empty run costs a connection.
        say(RunReport(stopped_by="empty").summary_line())
        return
    from ctxbatch.pipeline.progress import Progress
    from ctxbatch.run import Pipeline

    # The loop's warnings (alerts, retries after an outage) as plain lines on stderr.
    logging.basicConfig(format="ctxbatch: %(message)s", level=logging.WARNING)

    progress = Progress(state.store, sys.stderr)
    loop = Pipeline(engine, settings, state.store, announce=progress.say, subscribers=[progress])
    report = loop.run(until_empty=until_empty, max_contexts=max_contexts)
    say(report.summary_line())


@main.command()
@click.option("--count", type=click.IntRange(min=1), default=3000, show_default=True, help="Sample contexts.")
@pass_state
def demo(state: State, count: int) -> None:
    """Submit sample contexts (a few bound to fail) and process them with the built-in text engine."""
    from ctxbatch.demo import DEMO_CONFIG, sample_contexts

    # A database of its own, so the demo neither processes nor mixes with a real queue.
    state.use_database("ctxbatch_demo")
    settings = load_config(DEMO_CONFIG)
    batch_id = state.store.submit(sample_contexts(count), name="demo")
    say(f"submitted {count} sample contexts as batch {batch_id}")
    _run_pipeline(state, settings, "text", until_empty=True)
    click.echo(json.dumps(state.store.batch_status(batch_id)))
    say(f"see the results with: {state.command_line('results', batch_id)}")
