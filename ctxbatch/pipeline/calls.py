"""One event loop per worker process for async engines, and the worker's limit on calls in flight.

`worker.engine_concurrency` counts engine calls in flight on one worker across all the partitions it
runs, not per partition: a worker running three partitions of an async engine shares one loop (a daemon
thread, started on first use) and one semaphore of that size. One loop per worker is also what lets an
engine keep one client (an `aiohttp.ClientSession`) for the worker's whole life: a client is bound to
the loop it is made on, so an engine's `async def setup()` runs here too (`pipeline/worker.py`).

`worker.rate_limit_per_second` is met the same way: the loop gives each worker a share of the rate
(R / workers of the run, recomputed per batch as workers come and go) and the worker's `TokenBucket`
spaces every engine call it starts, async or row, over all its partitions; a call waits for its
token, none is refused.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from ctxbatch.pipeline.adaptive import AdaptiveLimit

T = TypeVar("T")


class TokenBucket:
    """At most `rate` calls per second: a token every 1/rate s, no burst (pure: `now` is given).

    A call takes a token only when one is free, and the next is free 1/rate s after that, counted
    from when it was taken: a caller that woke late (a busy loop, a held GIL) cannot bunch the calls
    that follow it.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next = float("-inf")  # when the next token is free
        self._lock = threading.Lock()

    def take(self, now: float) -> float:
        """0 if a token was taken at `now`; else the seconds to wait before asking again."""
        with self._lock:
            if now < self._next:
                return self._next - now
            self._next = now + 1 / self.rate
            return 0.0


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

    def answered(self, seconds: float, overloaded: bool) -> None:
        """One call done (inside the gate still): what an adaptive limit learns from."""
        if self.adaptive is None:
            return
        if overloaded:
            self.adaptive.overloaded()
        else:
            self.adaptive.observe(seconds, self.inside)


class WorkerCalls:
    """A worker's event loop thread and its gate of `engine_concurrency` calls in flight."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: Gate | None = None
        self._limit: tuple[int, tuple[int, int] | None] = (0, None)
        self._bucket: TokenBucket | None = None

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

    def pace(self, rate: float | None) -> TokenBucket | None:
        """The worker's bucket for its share `rate` of the rate limit (None: no limit); kept as the share changes."""
        with self._lock:
            if rate is None:
                self._bucket = None
            elif self._bucket is None:
                self._bucket = TokenBucket(rate)
            else:
                self._bucket.rate = rate
            return self._bucket

    def wait_for_token(self, rate: float | None) -> None:
        """Block a worker thread (a row engine's call) until its token is free."""
        bucket = self.pace(rate)
        while bucket is not None and (wait := bucket.take(time.monotonic())):
            time.sleep(wait)

    async def token(self, rate: float | None) -> None:
        """Wait on the loop (an async engine's call) until its token is free."""
        bucket = self.pace(rate)
        while bucket is not None and (wait := bucket.take(time.monotonic())):
            await asyncio.sleep(wait)

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
