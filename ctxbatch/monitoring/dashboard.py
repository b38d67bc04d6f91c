"""The ctxbatch page of the Dask dashboard, at /ctxbatch: for a run's own cluster and, as a preload, any scheduler.

    dask scheduler --preload ctxbatch.monitoring.dashboard --mongo-uri mongodb://db:27017 [--database NAME]

(`CTXBATCH_MONGO_URI`, `CTXBATCH_DATABASE` and `CTXBATCH_CONFIG` work too.) A run that starts its own
LocalCluster imports this module before it makes the cluster and registers a `DashboardSource` on it.

Importing this module adds the page to the dashboards made afterwards in this process: a preload is
imported while its Scheduler is built, before the dashboard is (see dask_pages.py); `dask_setup`
then tells the scheduler which database the page reads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
from bokeh.document import Document
from bokeh.models.widgets.markups import Div
from distributed import Client
from distributed.diagnostics.plugin import SchedulerPlugin

from ctxbatch.config import load_config
from ctxbatch.io import ContextStore, connect, mask_uri
from ctxbatch.monitoring import dask_pages, page
from ctxbatch.monitoring.closed_tabs import quiet_closed_tabs
from ctxbatch.monitoring.snapshot import Snapshot, read_snapshot

WINDOW_SECONDS = 600  # the plots show the last 10 minutes
BUCKET_SECONDS = 15  # 40 buckets: one small aggregate each
# Every open tab shows the same snapshot, read at most once a refresh; the timeline (the costliest
# read, ~0.2 s at 20k contexts in the window on nx-27017) at most this often.
TIMELINE_SECONDS = 10.0
IN_FLIGHT_POINTS = 300  # 10 minutes of reads, one a refresh


class DashboardSource(SchedulerPlugin):
    """Which database the page reads, held by the scheduler; one client and one reader thread for all tabs."""

    name = dask_pages.SOURCE

    def __init__(self, store: ContextStore, window_seconds: float = WINDOW_SECONDS) -> None:
        # Travels to the scheduler as the database's address; the scheduler opens its own client.
        self.uri, self.database, self.levels = store.uri, store.database_name, dict(store.levels)
        self.window_seconds = window_seconds
        self._store: ContextStore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._last: Snapshot | None = None
        self._last_read = self._timeline_read = -math.inf
        # What the database had in flight at each read: the plot's history, shared by every tab.
        self._in_flight: deque[tuple[dt.datetime, int, int]] = deque(maxlen=IN_FLIGHT_POINTS)

    def __repr__(self) -> str:
        return f"<DashboardSource {mask_uri(self.uri)} database={self.database!r}>"

    @property
    def store(self) -> ContextStore:
        if self._store is None:
            self._store = ContextStore(self.uri, self.database, levels=self.levels)
        return self._store

    def read(self) -> Snapshot:
        """The latest snapshot; read anew only when older than a refresh (runs on the one reader thread)."""
        now = time.monotonic()
        if self._last is not None and now - self._last_read < page.REFRESH_MS / 1000 * 0.9:
            return self._last
        keep = self._last.timeline if self._last is not None and now - self._timeline_read < TIMELINE_SECONDS else None
        self._last = read_snapshot(self.store, self.window_seconds, BUCKET_SECONDS, keep)
        self._in_flight.append((self._last.at, self._last.in_flight.batches, self._last.in_flight.contexts))
        self._last.in_flight_history = list(self._in_flight)
        self._last_read = now
        if keep is None:
            self._timeline_read = now
        return self._last

    async def read_off_loop(self) -> Snapshot:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="ctxbatch-dashboard")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.read)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._store is not None:
            self._store.close()


def ctxbatch_page(scheduler: Any, doc: Document) -> None:
    source = scheduler.plugins.get(DashboardSource.name)
    if source is None:
        doc.add_root(
            Div(
                text="<h3>ctxbatch</h3>This scheduler does not know the ctxbatch database: start it with "
                "<code>dask scheduler --preload ctxbatch.monitoring.dashboard --mongo-uri URI</code>."
            )
        )
        return
    page.build(doc, list(source.levels), source.read_off_loop)


dask_pages.add_page(ctxbatch_page, "ctxbatch")
# This process serves the dashboard (a run's own cluster, or the preloaded scheduler): a tab that
# closes is a debug line here, not a traceback on the user's terminal.
quiet_closed_tabs()


def show_page(client: Client, store: ContextStore) -> str:
    """Point the page of the client's scheduler at `store`; returns the page's address."""
    client.register_plugin(DashboardSource(store), name=DashboardSource.name)
    return dask_pages.page_url(client.dashboard_link)


@click.command()
@click.option("--mongo-uri", envvar="CTXBATCH_MONGO_URI", help="The database the loops use.")
@click.option("--database", envvar="CTXBATCH_DATABASE", help="Database name (default: ctxbatch).")
@click.option(
    "--config", "config_file", envvar="CTXBATCH_CONFIG", type=click.Path(dir_okay=False), help="ctxbatch YAML."
)
def dask_setup(scheduler: Any, mongo_uri: str | None, database: str | None, config_file: str | None) -> None:
    """The preload's entry point: `dask scheduler --preload ctxbatch.monitoring.dashboard --mongo-uri URI`."""
    settings = load_config(config_file)
    store = connect(mongo_uri, database, config=settings)
    scheduler.add_plugin(DashboardSource(store), name=DashboardSource.name)
    store.close()  # the source opens its own client, on the reader thread's first read
