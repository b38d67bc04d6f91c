"""The queue's commands: submit, status, results, cancel, retry, run, demo."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ctxbatch.cli.state import Main, State, pass_state, say
from ctxbatch.config import DEFAULT_QUEUE, PRIORITY_MAX, PRIORITY_MIN, Settings, load_config
from ctxbatch.errors import InputError, SubmitError
from ctxbatch.io import openai_batch
from ctxbatch.io.formats import read_submission
from ctxbatch.io.frames import CHUNKSIZE
from ctxbatch.io.outage import known_drained
from ctxbatch.resolve import BUILTIN_ENGINES

if TYPE_CHECKING:
    from ctxbatch.io import exports


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
    type=click.Path(writable=True),
    help="Write to a .jsonl, .csv or .parquet file, or to a directory (DIR/: one Parquet file per partition), "
    "instead of JSON Lines on stdout.",
)
@click.option(
    "--format",
    "form",
    type=click.Choice(["openai", "parquet"]),
    help="openai: OpenAI's batch output lines, the completed requests (and their failures with --errors-output); "
    "parquet: Parquet, whatever the file's name (a directory is always Parquet).",
)
@click.option(
    "--errors-output",
    type=click.Path(dir_okay=False, writable=True),
    help="With --format openai: write the failed, expired and cancelled requests' lines here.",
)
@click.option(
    "--chunksize",
    type=click.IntRange(min=1),
    default=CHUNKSIZE,
    show_default=True,
    help="Contexts per partition, so per Parquet file of a directory.",
)
@pass_state
def results(
    state: State, batch_id: str, output: str | None, form: str | None, errors_output: str | None, chunksize: int
) -> None:
    """Print or save a batch's contexts with their results and errors.

    In CSV and Parquet, payload, result and error are JSON text; times are ISO 8601 text (UTC, milliseconds)
    in JSON Lines and CSV, timestamps in Parquet.
    """
    from ctxbatch.io import exports  # here: pandas and pyarrow load only for the command that writes results

    directory = output is not None and (output.endswith(("/", os.sep)) or Path(output).is_dir())
    if form == "openai":
        if directory:
            raise click.BadParameter("--format openai writes a file, not a directory", param_hint="--output")
        _openai_results(state, batch_id, output, errors_output)
        return
    if errors_output is not None:
        raise click.UsageError("--errors-output goes with --format openai")
    if output is None:
        if form == "parquet":
            raise click.UsageError("--format parquet writes files: add -o FILE.parquet or -o DIR/")
        for row in _rows(state, batch_id):
            click.echo(exports.json_line(row), nl=False)
        return
    path = Path(output)
    if directory:
        frame = state.store.results_frame(batch_id, chunksize)
        written = _export(path, lambda: exports.write_parquet_parts(frame, path))
        say(f"wrote {written.contexts} contexts in {written.files} Parquet files to {path}")
        return
    writers = {".jsonl": exports.write_jsonl, ".csv": exports.write_csv, ".parquet": exports.write_parquet}
    writer = exports.write_parquet if form == "parquet" else writers.get(path.suffix.lower())
    if writer is None:
        raise click.BadParameter("end the file in .parquet, .jsonl or .csv, or give a directory", param_hint="--output")
    rows = _rows(state, batch_id)
    written = _export(path, lambda: writer(rows, path))
    say(f"wrote {written.contexts} contexts to {path}")


def _rows(state: State, batch_id: str, payload: bool = True) -> Iterator[dict[str, Any]]:
    """The batch's contexts, streamed: an unknown batch is refused now, before a file is made for it."""
    rows = state.store.iter_results(batch_id, payload=payload)
    first = list(itertools.islice(rows, 1))
    return itertools.chain(first, rows)


def _export(path: Path, write: Callable[[], exports.Written]) -> exports.Written:
    """write(), with a file the system refuses (a missing folder, no permission) as one line."""
    try:
        return write()
    except FileExistsError as exc:  # a directory that is not empty, or a file where the directory would be
        raise click.BadParameter(str(exc), param_hint="--output") from None
    except OSError as exc:
        raise click.FileError(str(path), hint=exc.strerror or str(exc)) from None


def _openai_results(state: State, batch_id: str, output: str | None, errors_output: str | None) -> None:
    """OpenAI's output and error files, streamed in input order (flat memory at any size)."""
    rows = _rows(state, batch_id, payload=False)
    with contextlib.ExitStack() as files:
        out = files.enter_context(Path(output).open("w", encoding="utf-8")) if output else sys.stdout
        errors = files.enter_context(Path(errors_output).open("w", encoding="utf-8")) if errors_output else None
        written = openai_batch.write_lines(rows, out, errors)
    where = f" to {output}" if output else ""
    say(f"wrote {written.output} completed requests{where}")
    if errors_output:
        say(f"wrote {written.errors} failed, expired or cancelled requests to {errors_output}")
    elif written.errors:
        say(f"{written.errors} failed, expired or cancelled requests are not written; add --errors-output FILE")
    if written.unfinished:
        say(f"{written.unfinished} requests are still pending or processing; they are in neither file yet")


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
    from ctxbatch.monitoring.cluster_page import own_cluster

    # A cluster of its own starts before the rest of the pipeline is imported: its workers boot meanwhile.
    starting = own_cluster(settings.dask)
    with starting or contextlib.nullcontext():
        from ctxbatch.pipeline.progress import Progress
        from ctxbatch.run import Pipeline

        # The loop's warnings (alerts, retries after an outage) as plain lines on stderr.
        logging.basicConfig(format="ctxbatch: %(message)s", level=logging.WARNING)

        progress = Progress(state.store, sys.stderr)
        loop = Pipeline(engine, settings, state.store, starting, announce=progress.say, subscribers=[progress])
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
