"""One event loop per worker process for async engines, and the worker's limit on calls in flight.

`worker.engine_concurrency` counts engine calls in flight on one worker across all the partitions it
runs, not per partition: a worker running three partitions of an async engine shares one loop (a daemon
thread, started on first use) and one semaphore of that size. One loop per worker is also what lets an
engine keep one client (an `aiohttp.ClientSession`) for the worker's whole life: a client is bound to
the loop it is made on, so an engine's `async def setup()` runs here too (`pipeline/worker.py`).

The limits every loop on the database shares (`limits:`) are met the same way: one `SharedLimit`
per limit name on the worker (pipeline/budget.py), which every engine call it starts, async or row,
over all its partitions, waits on; a call waits for its budget, none is refused.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from ctxbatch.config import LimitsSettings
from ctxbatch.errors import RetryLater
from ctxbatch.io.limits import LimitBook
from ctxbatch.pipeline.adaptive import AdaptiveLimit
from ctxbatch.pipeline.budget import SharedLimit

T = TypeVar("T")


def overloaded(failure: Exception | None) -> bool:
    """Whether a call's failure says the service is overloaded: a timeout, or a RetryLater with a time to wait.

    A RetryLater without one (a bare 429) defers its context but does not lower the limit: services
    answer those to a share of calls whatever the load (10% of them halved a limit to its minimum),
    and the latency tells when they queue.
    """
    if isinstance(failure, RetryLater):
        return failure.after_seconds is not None and failure.after_seconds > 0
    return isinstance(failure, TimeoutError)


class Gate:
    """At most `limit` calls inside at once; with an `AdaptiveLimit`, a limit that follows the calls."""

    def __init__(self, limit: int, adaptive: AdaptiveLimit | None = None) -> None:
        self.fixed, self.adaptive = max(1, limit), adaptive
        self.inside = 0
        self._turn = asyncio.Condition()

    @property
    def limit(self) -> int:
        return int(self.adaptive.limit) if self.adaptive else self.fixed

    async def __aenter__(self) -> None:
        async with self._turn:
            await self._turn.wait_for(lambda: self.inside < self.limit)
            self.inside += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self._turn:
            self.inside -= 1
            self._turn.notify_all()  # a raised limit may let in more than one

    def answered(self, seconds: float, failure: Exception | None) -> None:
        """One call done (inside the gate still): what an adaptive limit learns from.

        Only an answer's latency is a sample: a failure may come back at once (a refused connection,
        a bare 429) and would pull the latency floor down to nothing.
        """
        if self.adaptive is None:
            return
        if overloaded(failure):
            self.adaptive.overloaded()
        elif failure is None:
            self.adaptive.observe(seconds, self.inside)


class WorkerCalls:
    """A worker's event loop thread, its gate of `engine_concurrency` calls in flight, and its shared limits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: Gate | None = None
        self._limit: tuple[int, tuple[int, int] | None] = (0, None)
        self._limits: dict[tuple[int, str], SharedLimit] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="ctxbatch-engine-loop", daemon=True).start()
                self._loop = loop
            return self._loop

    def gate(self, limit: int, adaptive: tuple[int, int] | None = None) -> Gate:
        """The worker's gate of `limit` calls, or adaptive within (min, max); called on the loop.

        New settings make a new gate; the same settings keep the gate, and an adaptive limit what it learnt.
        """
        if self._gate is None or (limit, adaptive) != self._limit:
            self._gate = Gate(limit, AdaptiveLimit(*adaptive) if adaptive else None)
            self._limit = (limit, adaptive)
        return self._gate

    @property
    def limit(self) -> int | None:
        """The worker's limit on async calls in flight now; None before its first async partition."""
        gate = self._gate
        return gate.limit if gate is not None else None

    def shared_limit(self, book: LimitBook, settings: LimitsSettings) -> SharedLimit:
        """The worker's view of the limit `settings.name` in `book`'s database; kept while its settings are the same.

        New rates make a new view: it reads the pause from the database before its first call.
        """
        with self._lock:
            key = (id(book), settings.name)
            found = self._limits.get(key)
            if found is None or found.book is not book or found.settings != settings:
                found = self._limits[key] = SharedLimit(book, settings)
            return found

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run `coro` on the worker's loop from a worker thread; waits for its result.

        Past `timeout` seconds the coroutine is cancelled and TimeoutError raised.
        """
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.done():  # the coroutine's own TimeoutError
                raise
            future.cancel()
            raise TimeoutError(f"not done within {timeout:g} s; cancelled") from None

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
