"""A sizer that remembers (issue 22): what the dynamic sizer learned, kept per engine, queues and setup.

Before a run's first plan, its sizer takes up what the last run under the same key kept (`Sizer.resume`,
io/sizing_history.py), unless that is older than `SIZING_HISTORY_DAYS`: a new run starts at the
last good size instead of searching up from `worker.batch_size`. As the sizer learns, what a run
should start from is kept again: after the first batch, then at most every `KEEP_EVERY_SECONDS`,
and when the run ends. `worker.sizing_history: false` neither reads nor writes it.

The key says when an earlier run's sizes apply:
- the same engine: its name and a digest of its pickled form (`engine.fingerprint`). An engine named
  "module:callable" pickles as that name and the directory it was found from; one made by its own
  `configure(settings)` pickles the settings it kept (the http engine's URL and model, ...);
- on the same queues (a loop claims from all of its `worker.queues` at once);
- in the same setup, what changes how fast a batch of a given size runs apart from the engine: the
  cluster (the threads of a client the run was given, else the `dask:` section's shape),
  `max_parallel_batches`, `engine_concurrency`, the shared `limits` per minute, and
  `target_batch_seconds`, which caps how large a batch may grow.
The batch size bounds are not in it: a remembered size is clamped to today's. History under any
other key is not read; a run under a new key starts afresh and keeps its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from distributed import Client
from pymongo.errors import PyMongoError

from ctxbatch.config import DaskSettings, Settings
from ctxbatch.io import ContextStore
from ctxbatch.io.outage import short_reason
from ctxbatch.pipeline.cluster import local_shape
from ctxbatch.pipeline.events import BatchFinished, RunFinished, Subscriber
from ctxbatch.sizing import Sizer
from ctxbatch.sizing.memory import Memory

log = logging.getLogger("ctxbatch.pipeline")

# One small update at most this often while a run learns (and one when it ends): the server's cost
# stays a few writes a minute, and a run killed midway loses at most these seconds of learning.
KEEP_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class HistoryKey:
    """Which runs share what the sizer learned: the engine, the queues, the setup (see the module's note)."""

    engine: str  # its name, for people and for `forget`
    fingerprint: str
    queues: tuple[str, ...]
    setup: dict[str, Any]

    @property
    def id(self) -> str:
        text = json.dumps([self.fingerprint, self.queues, self.setup], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def described(self) -> dict[str, Any]:
        return {"engine": self.engine, "queues": list(self.queues), "setup": self.setup}


def history_key(engine: str, fingerprint: str, settings: Settings, client: Client | None) -> HistoryKey:
    """The key of a run of this engine (its name and `fingerprint`) under these settings, on `client` if given."""
    work = settings.worker
    limits = settings.shared_limits
    concurrency = work.engine_concurrency
    setup = {
        "cluster": cluster_shape(settings.dask, client),
        "max_parallel_batches": work.max_parallel_batches,
        "engine_concurrency": concurrency
        if concurrency != "auto"
        else f"auto {work.min_engine_concurrency}..{work.max_engine_concurrency}",
        "requests_per_minute": limits.requests_per_minute,
        "tokens_per_minute": limits.tokens_per_minute,
        "target_batch_seconds": work.target_batch_seconds,
    }
    return HistoryKey(engine, fingerprint, tuple(sorted(set(work.queues))), setup)


def cluster_shape(dask: DaskSettings, client: Client | None) -> str:
    """'4 threads' of a client the run was given; else the cluster the `dask:` section makes or joins."""
    if client is not None:
        return f"{sum(client.nthreads().values())} threads"
    if dask.scheduler_address:
        return f"scheduler {dask.scheduler_address}"
    workers, _ = local_shape(dask)
    kind = "processes" if dask.processes else "threads"
    scaling = f", adaptive {dask.adaptive.minimum}..{dask.adaptive.maximum}" if dask.adaptive else ""
    return f"{workers} {kind} x {dask.threads_per_worker} threads{scaling}"


class RememberSizing(Subscriber):
    """Starts the run's sizer from its key's history (`resume`, before the run's first plan) and keeps
    what it learns (a built-in subscriber)."""

    def __init__(self, sizer: Sizer, store: ContextStore, key: HistoryKey, owner: str) -> None:
        self.sizer = sizer
        self.store = store
        self.key = key
        self.owner = owner
        self._kept: Memory | None = None
        self._kept_at = -math.inf

    def resume(self) -> None:
        """Start the sizer from what the last run under this key kept, if anything. Before the run's first
        plan, which may come before the run starts (a claim made while the cluster starts)."""
        try:
            found = self.store.recall_sizing(self.key.id)
        except PyMongoError as exc:  # advisory, as any subscriber: the sizer starts afresh
            log.warning("sizing: no history read (%s); starting from the configured size", short_reason(exc))
            return
        memory = Memory.from_document(found) if found else None
        if memory is not None and self.sizer.resume(memory):
            self._kept = memory
            state = "held" if memory.settled else "was searching near"
            log.info("sizing: an earlier run of %s %s %d; starting from there", self.key.engine, state, memory.size)

    def on_batch_finished(self, event: BatchFinished) -> None:
        if time.monotonic() - self._kept_at >= KEEP_EVERY_SECONDS:
            self.keep()

    def on_run_finished(self, event: RunFinished) -> None:
        self.keep()

    def keep(self) -> None:
        """Write what the sizer would start the next run from, if it changed."""
        self._kept_at = time.monotonic()  # before the write: a database away is not asked at every batch
        memory = self.sizer.remember()
        if memory is None or memory == self._kept:
            return
        self.store.keep_sizing(self.key.id, {**self.key.described(), **memory.as_document(), "owner": self.owner})
        self._kept = memory
