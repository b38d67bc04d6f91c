"""Resource readings: the seed's "Resource Monitoring" (CPU, memory, database load), once per batch.

`read()` takes one snapshot for the sizer:

- the Dask workers' CPU and memory, from the metrics each worker sends the scheduler with its
  heartbeat (`Client.scheduler_info()`): one round trip to the scheduler, no work on the workers;
- the loop's own host (psutil, which distributed already depends on), which is also the
  workers' host with a LocalCluster and the fallback when no cluster is known;
- the database's load: the round-trip time of a `ping`, and the claims this loop has in flight.

The loop calls it once per batch planned, never in a hot loop. A reading that fails is None
("not known"): readings steer the sizer, and a missing one must not stop the loop (losing the
database or the cluster is the loop's business, and it finds out on its next real call).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import psutil

from ctxbatch.sizing.base import Readings

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger("ctxbatch.sizing")

# psutil's non-blocking cpu_percent() measures since the calling thread's previous call, and
# returns a meaningless 0.0 on a thread's first; those threads get None the first time. A
# thread-local flag, not a set of thread ids: an id is reused by a later thread once one ends.
_primed = threading.local()


class Pingable(Protocol):
    """What `read` needs of a store: `ContextStore.ping()`, the seconds of one round trip."""

    def ping(self) -> float: ...


def read(client: Client | None, store: Pingable | None, in_flight: int) -> Readings:
    """One snapshot of the cluster's, the host's and the database's load."""
    workers = _worker_readings(client) if client is not None else {}
    host_cpu, host_memory = _host_readings()
    return Readings(
        worker_memory_fraction=workers.get("memory"),
        worker_cpu_fraction=workers.get("cpu"),
        host_cpu_fraction=host_cpu,
        host_memory_fraction=host_memory,
        db_rtt_seconds=_db_rtt(store) if store is not None else None,
        in_flight_claims=in_flight,
        threads=max(1, int(workers.get("threads") or 1)),
        workers=int(workers.get("workers") or 0),
    )


def _worker_readings(client: Client) -> dict[str, float | int | None]:
    try:
        # n_workers=-1: every worker (some distributed versions default to the first five).
        info = client.scheduler_info(n_workers=-1)
    except Exception as exc:  # advisory: the loop notices a lost cluster on its own
        log.debug("no worker readings: %s", exc)
        return {}
    return worker_metrics(info)


def worker_metrics(info: Mapping[str, Any]) -> dict[str, float | int | None]:
    """Memory (max over workers), CPU (mean over workers), threads and workers from `scheduler_info()`.

    An asynchronous client's `scheduler_info()` carries totals but no per-worker entries; then
    only the counts are known.
    """
    entries = list((info.get("workers") or {}).values())
    memory = [_fraction(w.get("metrics", {}).get("memory"), w.get("memory_limit")) for w in entries]
    cpu = [_fraction(w.get("metrics", {}).get("cpu"), 100 * (w.get("nthreads") or 1)) for w in entries]
    known_memory = [m for m in memory if m is not None]
    known_cpu = [c for c in cpu if c is not None]
    threads = sum(int(w.get("nthreads") or 0) for w in entries) or int(info.get("total_threads") or 0)
    return {
        "memory": max(known_memory) if known_memory else None,
        "cpu": sum(known_cpu) / len(known_cpu) if known_cpu else None,
        "threads": threads,
        "workers": len(entries) or int(info.get("n_workers") or 0),
    }


def _fraction(used: Any, limit: Any) -> float | None:
    # A worker without a memory limit reports 0 or None: its fraction is not known.
    if used is None or not limit:
        return None
    return float(used) / float(limit)


def _host_readings() -> tuple[float | None, float | None]:
    try:
        memory = psutil.virtual_memory().percent / 100
        cpu = psutil.cpu_percent(interval=None) / 100
    except (OSError, RuntimeError) as exc:  # e.g. /proc unreadable in a sandbox
        log.debug("no host readings: %s", exc)
        return None, None
    first = not getattr(_primed, "done", False)
    _primed.done = True
    return (None if first else cpu), memory


def _db_rtt(store: Pingable) -> float | None:
    try:
        return store.ping()
    except Exception as exc:  # advisory, as above: PyMongoError, or a store that cannot ping
        log.debug("no database round trip: %s", exc)
        return None
