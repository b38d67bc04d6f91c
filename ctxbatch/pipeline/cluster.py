"""The Dask cluster a run uses: the one it is given, an existing scheduler, or a LocalCluster of its own.

A LocalCluster of its own starts in a thread (`ClusterStart`), from the moment the run knows it has
work: its worker processes boot, and import what a partition needs, while the loop's process imports
the rest of the pipeline and prepares the run. `ctxbatch run` starts it before those imports.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

from dask.system import CPU_COUNT
from distributed import Client, LocalCluster

from ctxbatch.config import DaskSettings
from ctxbatch.errors import CtxbatchError
from ctxbatch.hosts import is_loopback
from ctxbatch.io import ContextStore
from ctxbatch.pipeline.quiet import quiet_compute_failures
from ctxbatch.pipeline.worker import install

CONNECT_TIMEOUT = "20s"
# Adds the ctxbatch page to a cluster's dashboard (monitoring's show_page), given by who builds the run.
ShowPage = Callable[[Client, ContextStore], object]
# What a worker imports as it starts, rather than with its first partition (about 0.4 s: pandas).
WORKER_PRELOAD = ["ctxbatch.pipeline.partition"]


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


class ClusterStart:
    """A LocalCluster and its client, started in a thread from the moment this is made.

    `page` (run in that thread, before the cluster is made) returns what adds the ctxbatch page to
    the cluster's dashboard, if it should have it. `started()` waits for the cluster; `close()` closes
    what was started, whenever the start ends, and is what the maker calls last.
    """

    def __init__(self, settings: DaskSettings, page: Callable[[], ShowPage | None] | None = None) -> None:
        self.settings = settings
        self.show_page: ShowPage | None = None
        self._started: Future[tuple[Client, LocalCluster]] = Future()
        self._closed = False
        threading.Thread(target=self._start, args=(page,), name="ctxbatch-cluster-start", daemon=True).start()

    def _start(self, page: Callable[[], ShowPage | None] | None) -> None:
        try:
            self.show_page = page() if page is not None else None
            self._started.set_result(local_cluster(self.settings))
        except BaseException as exc:  # handed to the thread that waits for the cluster
            self._started.set_exception(exc)

    @property
    def shape(self) -> tuple[int, int] | None:
        """(workers, threads of each) the cluster will have; None when adaptive scaling may change them
        as soon as the run starts."""
        return None if self.settings.adaptive is not None else local_shape(self.settings)

    def started(self) -> tuple[Client, LocalCluster]:
        """The client and its cluster, once started; raises what stopped the start."""
        return self._started.result()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            client, cluster = self._started.result()
        except Exception:  # nothing was started, so nothing is left to close
            return
        client.close()
        cluster.close()

    def __enter__(self) -> ClusterStart:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def local_shape(settings: DaskSettings) -> tuple[int, int]:
    """(workers, threads of each) of the LocalCluster these settings make, as LocalCluster decides them."""
    threads = settings.threads_per_worker
    return settings.n_workers or (max(1, CPU_COUNT // threads) if settings.processes else 1), threads


def local_cluster(settings: DaskSettings) -> tuple[Client, LocalCluster]:
    """A LocalCluster from the settings, its workers ready to run partitions, and a client of it."""
    cluster = LocalCluster(
        n_workers=settings.n_workers,
        threads_per_worker=settings.threads_per_worker,
        processes=settings.processes,
        dashboard_address=settings.dashboard_address,
        # Without a dashboard the scheduler still serves HTTP, on 8787 unless told a free port.
        scheduler_kwargs={} if settings.dashboard_address else {"dashboard_address": ":0"},
        silence_logs=logging.ERROR,
        preload=WORKER_PRELOAD,
    )
    try:
        client = Client(cluster)
        install(client)
    except BaseException:
        cluster.close()
        raise
    return client, cluster


@contextmanager
def dask_client(
    settings: DaskSettings,
    store: ContextStore,
    given: Client | ClusterStart | None = None,
    announce: Callable[[str], None] | None = None,
) -> Iterator[tuple[Client, LocalCluster | None]]:
    """A client for the run's lifetime, its workers ready to run partitions.

    `given`: a client (left open), or a cluster being started. Otherwise a client of
    `settings.scheduler_address`, or a LocalCluster started here (without the ctxbatch page: a
    ClusterStart given with its `page` has it).
    What is started, here or given so, is closed when the run ends. An existing scheduler shows the
    ctxbatch page if it was started with the preload (see monitoring/dashboard.py).
    """
    quiet_compute_failures()  # a cluster of threads logs in this process
    cluster: LocalCluster | None = None
    with ExitStack() as started:
        if isinstance(given, Client):
            client = given
            install(client)
        elif given is None and settings.scheduler_address:
            check_reachable(store.uri, settings.scheduler_address)
            client = started.enter_context(Client(settings.scheduler_address, timeout=CONNECT_TIMEOUT))
            install(client)
        else:
            starting = started.enter_context(given or ClusterStart(settings))
            client, cluster = starting.started()
            if starting.show_page is not None and settings.dashboard_address is not None:
                starting.show_page(client, store)
        if announce and settings.dashboard_address is not None and not isinstance(given, Client):
            announce(f"Dask dashboard: {client.dashboard_link}")
        yield client, cluster
