"""What each Dask worker holds for the partitions it runs: a WorkerPlugin, registered by the loop.

Per worker: one event loop for async engines and the limit on calls in flight (`WorkerCalls`), one
ContextStore (one MongoClient and its pool) per (uri, database), and each engine's optional `setup()`
called once before the worker's first partition with it; at close, each set-up engine's optional
`teardown()`, the loop's stop and the stores' close. Partition tasks reach it with
`worker_resources()` (`distributed.get_worker().plugins[PLUGIN_NAME]`).

An engine's `setup()` and `teardown()` may be `async def`: they then run on the worker's engine loop,
the one its async calls run on, so a client bound to its loop (an `aiohttp.ClientSession`) is made and
closed where it is used. Async teardowns run before the loop stops, each for at most
TEARDOWN_SECONDS: one that hangs is logged and left, and the worker goes on closing.

Registration is idempotent: a second run on the same cluster finds the plugin there and keeps the
worker's stores and set-up engines, rather than tearing them down and building them again.
A new per-worker resource is an attribute made in `setup()`, an accessor, and its release in
`teardown()`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from distributed import Client, WorkerPlugin, get_worker

from ctxbatch.errors import CriticalError
from ctxbatch.io import ContextStore
from ctxbatch.pipeline.calls import WorkerCalls
from ctxbatch.pipeline.engine import Engine, fingerprint
from ctxbatch.pipeline.quiet import quiet_compute_failures

if TYPE_CHECKING:
    from distributed import Worker

log = logging.getLogger("ctxbatch.pipeline.worker")

PLUGIN_NAME = "ctxbatch"
# How long a closing worker waits for one engine's async teardown (closing a session is quick).
TEARDOWN_SECONDS = 5.0


class WorkerResources(WorkerPlugin):
    """A Dask worker's stores and set-up engines (see the module's note)."""

    name = PLUGIN_NAME
    idempotent = True

    def setup(self, worker: Worker | None = None) -> None:
        quiet_compute_failures()
        self._lock = threading.Lock()
        self._stores: dict[tuple[str, str], ContextStore] = {}
        self._engines: dict[str, Engine] = {}  # set up, by name and pickled form (see ready())
        self.calls = WorkerCalls()

    def teardown(self, worker: Worker | None = None) -> None:
        with self._lock:
            for engine in self._engines.values():
                self._tear_down(engine)
            self.calls.close()
            for store in self._stores.values():
                store.close()
            self._engines.clear()
            self._stores.clear()

    def store(self, uri: str, database: str) -> ContextStore:
        """This worker's store for the database, opened on first use."""
        with self._lock:
            found = self._stores.get((uri, database))
            if found is None:
                found = self._stores[(uri, database)] = ContextStore(uri, database)
            return found

    def ready(self, engine: Engine, key: str = "") -> Engine:
        """The engine as set up on this worker: its `setup()` called once, before its first rows.

        Each partition's task brings its own copy of the engine (Dask unpickles a task's arguments), and
        what `setup()` made (a session, a model) lives on the copy it was called on: so a later copy of
        the same engine (`key`: its `fingerprint`, which a run's job carries, computed once) is
        answered with that one. An engine of that name configured otherwise (another run on this
        cluster) is set up as an engine of its own.
        A setup that raises stops the batch (CriticalError): no row could succeed, so no row should be
        blamed; the next partition tries it again.
        """
        key = key or fingerprint(engine)
        with self._lock:
            found = self._engines.get(key)
            if found is not None:
                return found
            setup: Any = getattr(engine.fn, "setup", None)
            if callable(setup):
                try:
                    self._call(setup)
                except CriticalError:
                    raise
                except Exception as exc:
                    raise CriticalError(f"engine {engine.name}: setup() failed: {type(exc).__name__}: {exc}") from exc
            self._engines[key] = engine
            return engine

    def _tear_down(self, engine: Engine) -> None:
        """The engine's `teardown()`, if it has one: logged if it fails, as a closing worker goes on closing."""
        teardown = getattr(engine.fn, "teardown", None)
        if not callable(teardown):
            return
        try:
            self._call(teardown, TEARDOWN_SECONDS)
        except TimeoutError as exc:
            log.warning("engine %s: teardown() did not finish: %s", engine.name, exc)
        except Exception:
            log.exception("engine %s: teardown() raised", engine.name)

    def _call(self, fn: Callable[[], Any], timeout: float | None = None) -> None:
        """`fn()`; a coroutine it returns (an `async def` setup or teardown) runs on the engine loop."""
        returned = fn()
        if asyncio.iscoroutine(returned):
            self.calls.run(returned, timeout)


def install(client: Client) -> None:
    """Register the plugin on every worker of the client's cluster, present and future."""
    client.register_plugin(WorkerResources(), name=PLUGIN_NAME)


def worker_resources() -> WorkerResources:
    """The resources of the worker running the current task."""
    plugin = get_worker().plugins[PLUGIN_NAME]
    assert isinstance(plugin, WorkerResources)
    return plugin
