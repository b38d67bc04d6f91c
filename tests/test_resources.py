"""Resource readings against the real embedded database and a real (small, in-process) Dask cluster."""

from __future__ import annotations

import threading

from conftest import local_cluster
from distributed import Client

from ctxbatch.io import ContextStore
from ctxbatch.sizing import Readings, resources
from ctxbatch.sizing.resources import worker_metrics


def in_new_thread() -> list[Readings]:
    """Two readings in a fresh thread: psutil's CPU figure needs a previous call per thread."""
    got: list[Readings] = []

    def twice() -> None:
        got.append(resources.read(None, None, 0))
        got.append(resources.read(None, None, 0))

    thread = threading.Thread(target=twice)
    thread.start()
    thread.join()
    return got


def test_read_without_a_cluster_gives_the_database_round_trip_and_host_memory(store: ContextStore) -> None:
    readings = resources.read(None, store, 2)

    assert readings.db_rtt_seconds is not None and readings.db_rtt_seconds > 0
    assert readings.host_memory_fraction is not None and 0 < readings.host_memory_fraction <= 1
    assert readings.in_flight_claims == 2


def test_read_without_a_cluster_knows_no_worker_and_one_thread(store: ContextStore) -> None:
    readings = resources.read(None, store, 0)

    assert (readings.worker_memory_fraction, readings.worker_cpu_fraction) == (None, None)
    assert (readings.threads, readings.workers) == (1, 0)


def test_host_cpu_is_known_from_the_second_reading_of_a_thread() -> None:
    first, second = in_new_thread()

    assert first.host_cpu_fraction is None
    assert second.host_cpu_fraction is not None and 0 <= second.host_cpu_fraction <= 1


def test_an_unreachable_database_reads_as_unknown() -> None:
    unreachable = ContextStore("mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200")
    try:
        readings = resources.read(None, unreachable, 0)
    finally:
        unreachable.close()

    assert readings.db_rtt_seconds is None
    assert readings.host_memory_fraction is not None


def test_read_with_a_cluster_gives_worker_readings(client: Client, store: ContextStore) -> None:
    readings = resources.read(client, store, 1)

    assert (readings.threads, readings.workers) == (1, 1)
    assert readings.worker_memory_fraction is not None and 0 < readings.worker_memory_fraction < 1
    assert readings.worker_cpu_fraction is not None and readings.worker_cpu_fraction >= 0
    assert readings.db_rtt_seconds is not None


def test_worker_readings_fall_back_to_cluster_totals_without_per_worker_entries(client: Client) -> None:
    # An asynchronous client's scheduler_info() carries the totals but no worker entries.
    info = {**client.scheduler_info(n_workers=-1), "workers": {}}

    metrics = worker_metrics(info)

    assert (metrics["threads"], metrics["workers"]) == (1, 1)
    assert (metrics["memory"], metrics["cpu"]) == (None, None)


def test_a_closed_cluster_reads_as_no_worker_readings(store: ContextStore) -> None:
    with local_cluster() as gone:
        pass

    readings = resources.read(gone, store, 0)

    assert readings.worker_memory_fraction is None
    assert readings.threads == 1
    assert readings.db_rtt_seconds is not None
