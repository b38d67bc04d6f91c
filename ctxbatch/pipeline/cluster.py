"""The Dask cluster a run uses: the one it is given, an existing scheduler, or a LocalCluster of its own."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from distributed import Client, LocalCluster

from ctxbatch.config import DaskSettings
from ctxbatch.errors import CtxbatchError
from ctxbatch.hosts import is_loopback
from ctxbatch.io import ContextStore
from ctxbatch.pipeline.quiet import quiet_compute_failures

CONNECT_TIMEOUT = "20s"
# Adds the ctxbatch page to a cluster's dashboard (monitoring's show_page), given by who builds the run.
ShowPage = Callable[[Client, ContextStore], object]


def check_reachable(mongo_uri: str, scheduler_address: str) -> None:
    """Refuse a database bound to loopback when the workers may run on other hosts."""
    # A URI without a host name means the client's default, which is this machine.
    db_host = urlsplit(mongo_uri).hostname or "localhost"
    scheduler_host = (
        urlsplit(scheduler_address if "://" in scheduler_address else f"tcp://{scheduler_address}").hostname
        or "localhost"
    )
    if is_loopback(db_host) and not is_loopback(scheduler_host):
        raise CtxbatchError(
            f"the Dask workers at {scheduler_address} cannot reach a database on {db_host}; "
            "pass a --mongo-uri (or mongo.uri) that the workers can reach"
        )


@contextmanager
def dask_client(
    settings: DaskSettings,
    store: ContextStore,
    given: Client | None = None,
    announce: Callable[[str], None] | None = None,
    show_page: ShowPage | None = None,
) -> Iterator[tuple[Client, LocalCluster | None]]:
    """A client for the run's lifetime; a cluster started here is closed when the run ends.

    A cluster started here with a dashboard shows the ctxbatch page through `show_page` (an
    existing one does if its scheduler was started with the preload, see monitoring/dashboard.py).
    """
    quiet_compute_failures()  # a cluster of threads logs in this process
    if given is not None:
        yield given, None
        return
    cluster: LocalCluster | None = None
    if settings.scheduler_address:
        check_reachable(store.uri, settings.scheduler_address)
        client = Client(settings.scheduler_address, timeout=CONNECT_TIMEOUT)
    else:
        cluster = LocalCluster(
            n_workers=settings.n_workers,
            threads_per_worker=settings.threads_per_worker,
            processes=settings.processes,
            dashboard_address=settings.dashboard_address,
            # Without a dashboard the scheduler still serves HTTP, on 8787 unless told a free port.
            scheduler_kwargs={} if settings.dashboard_address else {"dashboard_address": ":0"},
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
        if show_page is not None and settings.dashboard_address is not None:
            show_page(client, store)
    try:
        if announce and settings.dashboard_address is not None:
            announce(f"Dask dashboard: {client.dashboard_link}")
        yield client, cluster
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
