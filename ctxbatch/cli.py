"""The `ctxbatch` command line (click). Errors become one line on stderr and a non-zero exit."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from pymongo.errors import PyMongoError

from ctxbatch.config import Settings, load_config
from ctxbatch.errors import CtxbatchError, InputError, SubmitError
from ctxbatch.io import ContextStore, connect, embedded, mask_uri
from ctxbatch.io.formats import read_submission
from ctxbatch.io.stats import DEFAULT_WINDOW_SECONDS


def _say(message: str) -> None:
    click.echo(message, err=True)


class _Group(click.Group):
    """Turns the errors ctxbatch can explain into one line and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CtxbatchError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            _say("interrupted")
            ctx.exit(130)
        except PyMongoError as exc:
            uri = ctx.obj.uri if isinstance(ctx.obj, _State) and ctx.obj.uri else "the database"
            raise click.ClickException(f"cannot talk to MongoDB at {mask_uri(uri)}: {exc}") from None


class _State:
    """What the group's options set, handed to each command; the store opens on first use."""

    def __init__(self, uri: str | None, database: str | None, config_path: str | None) -> None:
        self.uri = uri
        self.database = database
        self.config_path = config_path
        self._config: Settings | None = None
        self._store: ContextStore | None = None

    @property
    def config(self) -> Settings:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    @property
    def store(self) -> ContextStore:
        if self._store is None:
            self._store = connect(self.uri, self.database, config=self.config, announce=_say)
            self.uri = self._store.uri
        return self._store


pass_state = click.make_pass_decorator(_State)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--mongo-uri", envvar="CTXBATCH_MONGO_URI", help="MongoDB URI (default: the embedded server).")
@click.option("--database", envvar="CTXBATCH_DATABASE", help="Database name (default: ctxbatch).")
@click.option("--config", "config_path", envvar="CTXBATCH_CONFIG", type=click.Path(dir_okay=False),
              help="YAML configuration file.")  # fmt: skip
@click.version_option(package_name="ctxbatch")
@click.pass_context
def main(ctx: click.Context, mongo_uri: str | None, database: str | None, config_path: str | None) -> None:
    """Bulk processing of prioritised JSON contexts over MongoDB and Dask."""
    ctx.obj = _State(mongo_uri, database, config_path)


@main.command()
@click.argument("source", metavar="FILE|-")
@click.option("--priority", type=click.IntRange(0, 100), help="Priority of records that give none.")
@click.option("--name", help="A name for the batch.")
@pass_state
def submit(state: _State, source: str, priority: int | None, name: str | None) -> None:
    """Submit contexts (JSON Lines, JSON array, CSV or Parquet); prints the batch id."""
    submission = read_submission(source)
    try:
        batch_id = state.store.submit(submission.records, priority=priority, name=name)
    except SubmitError as exc:
        where = submission.locate(exc.index) if exc.index is not None else source
        field = f"{exc.field}: " if exc.field else ""
        raise InputError(f"{where}: {field}{exc.message}; nothing was submitted") from None
    click.echo(batch_id)


@main.command()
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@pass_state
def status(state: _State, batch_id: str, as_json: bool) -> None:
    """Show a batch's status and counts."""
    report = state.store.batch_status(batch_id)
    if as_json:
        click.echo(json.dumps(report))
        return
    counts = report["counts"]
    click.echo(f"batch {report['batch_id']}: {report['status']}")
    click.echo("  " + "  ".join(f"{key} {counts[key]}" for key in counts))


class _Window(click.ParamType):
    """A window in seconds: a positive, finite number."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (math.isfinite(seconds) and seconds > 0):
            self.fail(f"{value!r} is not a positive number of seconds", param, ctx)
        return seconds


@main.command()
@click.argument("batch_id", required=False)
@click.option("--window", type=_Window(), default=DEFAULT_WINDOW_SECONDS, show_default=True,
              help="Seconds of finished work to count.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the stats as JSON.")
@pass_state
def stats(state: _State, batch_id: str | None, window: float, as_json: bool) -> None:
    """Throughput, success rate, latency and the queue of the whole cluster (or one batch), from the database."""
    from ctxbatch.monitoring.terminal import stats_lines

    found = state.store.stats(batch_id, window)
    if as_json:
        click.echo(json.dumps(found))
        return
    click.echo("\n".join(stats_lines(found, f"batch {batch_id}" if batch_id else "all batches")))


@main.command()
@click.argument("batch_id", required=False)
@click.option("--window", type=_Window(), default=DEFAULT_WINDOW_SECONDS, show_default=True,
              help="Seconds of finished work to count.")  # fmt: skip
@click.option("--interval", type=_Window(), default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("-n", "--refreshes", type=click.IntRange(min=1), help="Stop after this many refreshes.")
@pass_state
def top(state: _State, batch_id: str | None, window: float, interval: float, refreshes: int | None) -> None:
    """A live view of `ctxbatch stats`: redrawn in place on a terminal, one line per refresh otherwise."""
    from ctxbatch.monitoring import terminal

    store = state.store
    title = f"batch {batch_id}" if batch_id else "all batches"
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a live view ends
        terminal.top(lambda: store.stats(batch_id, window), sys.stdout, interval, refreshes, title)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


@main.command()
@click.argument("batch_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to .parquet, .jsonl or .csv instead of JSON Lines on stdout.")  # fmt: skip
@pass_state
def results(state: _State, batch_id: str, output: str | None) -> None:
    """Print or save a batch's contexts with their results and errors."""
    if output is None:
        for row in state.store.iter_results(batch_id):
            click.echo(json.dumps(row, default=_jsonable))
        return
    writers: dict[str, Callable[[Any, Path], None]] = {
        ".parquet": lambda frame, path: _to_parquet(frame, path),
        ".jsonl": lambda frame, path: frame.to_json(path, orient="records", lines=True, date_format="iso"),
        ".csv": lambda frame, path: _json_columns(frame).to_csv(path, index=False),
    }
    path = Path(output)
    writer = writers.get(path.suffix.lower())
    if writer is None:
        raise click.BadParameter("the file must end in .parquet, .jsonl or .csv", param_hint="--output")
    frame = state.store.results(batch_id)
    writer(frame, path)
    _say(f"wrote {len(frame)} contexts to {path}")


def _json_columns(frame: Any) -> Any:
    """Nested columns as JSON text, for formats that hold only flat values."""
    frame = frame.copy()
    for column in ("payload", "result", "error"):
        frame[column] = [None if v is None else json.dumps(v, default=_jsonable) for v in frame[column]]
    return frame


def _to_parquet(frame: Any, path: Path) -> None:
    # Results are free-form JSON, so nested columns are stored as JSON text.
    _json_columns(frame).to_parquet(path, index=False)


@main.command()
@click.argument("batch_id")
@pass_state
def cancel(state: _State, batch_id: str) -> None:
    """Cancel a batch's pending contexts."""
    _say(f"cancelled {state.store.cancel(batch_id)} pending contexts of {batch_id}")


@main.command()
@click.argument("batch_id")
@pass_state
def retry(state: _State, batch_id: str) -> None:
    """Send a batch's failed contexts back to the queue with attempts reset."""
    _say(f"{state.store.retry(batch_id)} failed contexts of {batch_id} are pending again")


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="YAML configuration file.")
@click.option("--engine", help="The engine as module:callable (or a built-in: text, service, echo).")
@click.option("--workers", type=click.IntRange(min=1), help="Workers of the local Dask cluster.")
@click.option("--scheduler-address", help="Use this Dask scheduler instead of a local cluster.")
@click.option("--until-empty", is_flag=True, help="Stop once nothing is pending or processing.")
@click.option("--max-contexts", type=click.IntRange(min=1), help="Stop after claiming this many contexts.")
@pass_state
def run(
    state: _State,
    config_path: str | None,
    engine: str | None,
    workers: int | None,
    scheduler_address: str | None,
    until_empty: bool,
    max_contexts: int | None,
) -> None:
    """Process contexts: claim batches, map the engine over Dask partitions, write results back."""
    if config_path:
        state.config_path = config_path
    settings = state.config
    if workers is not None:
        settings.dask.n_workers = workers
    if scheduler_address:
        settings.dask.scheduler_address = scheduler_address
    engine = engine or settings.engine
    if not engine:
        raise click.UsageError("no engine: pass --engine module:callable or set `engine:` in the config")
    _run_pipeline(state, settings, engine, until_empty=until_empty, max_contexts=max_contexts)


def _run_pipeline(
    state: _State, settings: Settings, engine: str, until_empty: bool, max_contexts: int | None = None
) -> None:
    from ctxbatch.pipeline import Pipeline
    from ctxbatch.pipeline.progress import Progress

    # The loop's warnings (alerts, retries after an outage) as plain lines on stderr.
    logging.basicConfig(format="ctxbatch: %(message)s", level=logging.WARNING)

    progress = Progress(lambda: loop.report, state.store, sys.stderr)
    loop = Pipeline(engine, settings, state.store, announce=progress.say)
    with progress:
        report = loop.run(until_empty=until_empty, max_contexts=max_contexts)
    _say(report.summary_line())


@main.command()
@click.option("--count", type=click.IntRange(min=1), default=3000, show_default=True, help="Sample contexts.")
@pass_state
def demo(state: _State, count: int) -> None:
    """Submit sample contexts (a few bound to fail) and process them with the built-in text engine."""
    from ctxbatch.demo import DEMO_CONFIG, sample_contexts

    # A database of its own, so the demo neither processes nor mixes with a real queue.
    state.database = state.database or "ctxbatch_demo"
    settings = load_config(DEMO_CONFIG)
    batch_id = state.store.submit(sample_contexts(count), name="demo")
    _say(f"submitted {count} sample contexts as batch {batch_id}")
    _run_pipeline(state, settings, "text", until_empty=True)
    click.echo(json.dumps(state.store.batch_status(batch_id)))
    _say(f"see the results with: ctxbatch results {batch_id}")


@main.group()
def db() -> None:
    """Manage the embedded database (nx-27017) used when no MongoDB URI is given."""


@db.command("start")
def db_start() -> None:
    """Start the embedded database (or say where it runs)."""
    current = embedded.status()
    if current.running:
        _say(f"the embedded database is already running at {current.uri} (pid {current.pid})")
        return
    embedded.start(announce=_say)


@db.command("stop")
def db_stop() -> None:
    """Stop the embedded database; its data stays."""
    _say("stopped the embedded database" if embedded.stop() else "the embedded database was not running")


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


from ctxbatch.service.cli import serve  # noqa: E402

main.add_command(serve)
