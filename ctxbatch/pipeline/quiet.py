"""Dask's "Compute Failed ... Traceback" blocks kept off the user's terminal, at debug level instead.

A failed partition task reaches the loop through its future, which says what happened in one line
(and retries the batch); the worker's own multi-line report of the same failure is noise there.
"""

from __future__ import annotations

import logging

log = logging.getLogger("ctxbatch.pipeline.worker")


class ComputeFailedAtDebug(logging.Filter):
    """Drops distributed.worker's "Compute Failed" records after logging their first lines at debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed"):
            return True
        log.debug("a partition task failed on a worker: %s", record.getMessage().splitlines()[1:2])
        return False


def quiet_compute_failures() -> None:
    """Install the filter in this process (idempotent)."""
    worker_log = logging.getLogger("distributed.worker")
    if not any(isinstance(f, ComputeFailedAtDebug) for f in worker_log.filters):
        worker_log.addFilter(ComputeFailedAtDebug())
