"""One event loop per worker process for async engines, and the worker's limit on calls in flight.

`worker.engine_concurrency` counts engine calls in flight on one worker across all the partitions it
runs, not per partition: a worker running three partitions of an async engine shares one loop (a daemon
thread, started on first use) and one semaphore of that size. One loop per worker is also what lets an
engine keep one client (an `httpx.AsyncClient`) for the worker's whole life: a client is bound to the
loop it first ran on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class WorkerCalls:
    """A worker's event loop thread and its gate of `engine_concurrency` calls in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: asyncio.Semaphore | None = None
        self._limit = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="ctxbatch-engine-loop", daemon=True).start()
                self._loop = loop
            return self._loop

    def gate(self, limit: int) -> asyncio.Semaphore:
        """The worker's semaphore of `limit` calls; called on the loop. A new limit makes a new gate."""
        if self._gate is None or limit != self._limit:
            self._gate, self._limit = asyncio.Semaphore(max(1, limit)), limit
        return self._gate

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the worker's loop from a worker thread; waits for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
