"""Per-row error isolation inside one partition: one bad row never sinks its partition (issue 3).

A row's exception becomes that row's error record `{type, message, traceback}` and the partition goes on;
so does a result that cannot be stored (not BSON-encodable, or too big for a 16 MB document), because a
bulk write that refuses one document would otherwise lose the whole partition's write. What stops the
whole batch propagates unchanged instead: `CriticalError` from the engine, and losing the database or the
Dask cluster (the scheduler releases the batch and retries it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import bson
import numpy as np
import pandas as pd

from ctxbatch.config import ENGINE_CONCURRENCY
from ctxbatch.errors import RetryLater
from ctxbatch.io.schema import MAX_BSON_BYTES, error_record
from ctxbatch.pipeline.budget import SharedLimit
from ctxbatch.pipeline.calls import Gate, WorkerCalls
from ctxbatch.pipeline.engine import Engine, resolve_engine
from ctxbatch.pipeline.fate import STOPS_THE_BATCH, Failure
from ctxbatch.pipeline.tokens import token_estimator

log = logging.getLogger(__name__)

# Room for the context's own fields next to its payload and result (ids, lease, dates, error).
RESULT_HEADROOM = 64 * 1024
# A failing batch writes one record per row: keep each small.
TRACEBACK_FRAMES = 8
TRACEBACK_CHARS = 8_000
MESSAGE_CHARS = 2_000

T = TypeVar("T")


class UnstorableResult(Exception):
    """Named in a row's error record when the engine's result cannot be stored in MongoDB."""


class BatchResultMismatch(Exception):
    """Named in a row's error record when a batch engine did not return one result per row."""


@dataclass
class PartitionOutcome:
    """How each row of one partition ended: stored results, or failures (fate.py decides what follows)."""

    results: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)
    seconds: float = 0.0
    # Engine seconds per context (a batch engine's call shared evenly by its rows), for the metrics.
    row_seconds: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        completed, failed = len(self.results), len(self.failures)
        return f"<PartitionOutcome completed={completed} failed={failed} seconds={self.seconds:.3f}>"

    @property
    def errors(self) -> dict[str, dict[str, Any]]:
        """The failed rows' error records, by context id."""
        return {cid: failure.error for cid, failure in self.failures.items()}

    def add(self, context_id: str, value: Any, payload: Any) -> None:
        if isinstance(value, RetryLater):  # a batch engine defers single rows by returning one
            self.fail(context_id, value)
            return
        try:
            self.results[context_id] = storable(value, payload)
        except UnstorableResult as exc:
            self.fail(context_id, exc)

    def fail(self, context_id: str, exc: BaseException) -> None:
        log.debug("context %s failed: %s: %s", context_id, type(exc).__name__, exc)
        self.failures[context_id] = Failure.of(exc, row_error(exc))


def run_partition(
    engine: Engine | str | Callable[..., Any],
    frame: pd.DataFrame,
    concurrency: int = ENGINE_CONCURRENCY,
    timeout: float | None = None,
    calls: WorkerCalls | None = None,
    limit: SharedLimit | None = None,
    adaptive: tuple[int, int] | None = None,
) -> PartitionOutcome:
    """Run the engine over one partition (columns id, payload, priority, attempts), isolating each row.

    Raises what stops the batch (STOPS_THE_BATCH) unchanged; every other failure is some row's error record.
    `timeout` bounds each call (a batch engine's: the partition's) in seconds; a call past it fails its
    rows with a TimeoutError. With a worker's `calls`, an async engine runs on the worker's loop and
    `concurrency` bounds its calls in flight over all the worker's partitions; without, per partition.
    `limit` (the worker's view of the shared `limits:`, pipeline/budget.py) makes every call of a row or
    async engine wait for its budget and for a pause to pass; a batch engine's call is neither counted
    nor paused. With `calls`, `adaptive` (min, max) makes the async limit
    `worker.engine_concurrency: auto`, learnt from the calls (pipeline/adaptive.py).
    """
    engine = resolve_engine(engine)
    ids = [str(cid) for cid in frame["id"].tolist()]
    payloads = frame["payload"].tolist()
    outcome = PartitionOutcome()
    if not ids:
        return outcome
    started = time.perf_counter()
    if engine.kind == "batch":
        _bisect(engine, frame, ids, payloads, outcome, timeout)
    elif engine.kind == "async":
        _run_async(engine.fn, ids, payloads, max(1, concurrency), outcome, timeout, calls, limit, adaptive)
    else:
        _run_rows(engine.fn, ids, payloads, outcome, timeout, limit)
    outcome.seconds = time.perf_counter() - started
    return outcome


def timed_out(timeout: float) -> TimeoutError:
    return TimeoutError(f"the engine call took longer than {timeout:g} s (worker.context_timeout_seconds)")


def call_within(timeout: float | None, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)`, or a TimeoutError once it takes longer than `timeout` seconds.

    A thread cannot be stopped: past the timeout the call is abandoned in its daemon thread, and
    whatever it returns later is dropped with the holder, which nothing reads any more; the
    partition's settle is built from the TimeoutError, so a late result can never be written.
    """
    if timeout is None:
        return fn(*args)
    holder: list[Any] = []

    def call() -> None:
        try:
            holder.append((True, fn(*args)))
        except BaseException as exc:  # handed to the caller's thread as it is
            holder.append((False, exc))

    thread = threading.Thread(target=call, name="ctxbatch-engine-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if not holder:
        raise timed_out(timeout)
    ok, value = holder[0]
    if not ok:
        raise value
    return value


def _run_rows(
    fn: Callable[[Any], Any],
    ids: list[str],
    payloads: list[Any],
    outcome: PartitionOutcome,
    timeout: float | None = None,
    limit: SharedLimit | None = None,
) -> None:
    estimate = token_estimator(fn)
    for cid, payload in zip(ids, payloads, strict=True):
        tokens = 0
        if limit:
            try:
                tokens = estimate(payload) if limit.counts_tokens else 0
            except Exception as exc:
                outcome.fail(cid, exc)
                continue
            limit.acquire(limit.cost(tokens))  # before the clock starts: waiting is not the call's time
        started = time.perf_counter()
        try:
            value = call_within(timeout, fn, payload)
        except STOPS_THE_BATCH:
            raise
        except Exception as exc:
            if limit and (pause := limit.answered(tokens, exc)):
                limit.pause(pause)
            outcome.fail(cid, exc)
            continue
        finally:
            outcome.row_seconds[cid] = time.perf_counter() - started
        if limit:
            limit.answered(tokens, value)
        outcome.add(cid, value, payload)


def _run_async(
    fn: Callable[[Any], Any],
    ids: list[str],
    payloads: list[Any],
    concurrency: int,
    outcome: PartitionOutcome,
    timeout: float | None = None,
    calls: WorkerCalls | None = None,
    limit: SharedLimit | None = None,
    adaptive: tuple[int, int] | None = None,
) -> None:
    values: dict[str, Any] = {}
    failures: dict[str, Exception] = {}
    estimate = token_estimator(fn)

    async def one(cid: str, payload: Any, gate: Gate) -> None:
        tokens, pause, until = 0, None, 0.0
        if limit and limit.counts_tokens:
            try:
                tokens = estimate(payload)
            except Exception as exc:
                failures[cid] = exc
                return
        async with gate:
            # The budget is waited for inside the gate: a call starts the moment its budget is spent,
            # which the shared bound relies on; its timeout and latency sample start after the wait.
            if limit:
                await limit.acquire_async(limit.cost(tokens))
            started = time.perf_counter()
            try:
                values[cid] = await asyncio.wait_for(fn(payload), timeout)
            except STOPS_THE_BATCH:
                raise
            except TimeoutError as exc:  # past the timeout wait_for cancelled the call
                failures[cid] = exc if timeout is None else timed_out(timeout)
            except Exception as exc:
                failures[cid] = exc
            finally:
                outcome.row_seconds[cid] = time.perf_counter() - started
            gate.answered(outcome.row_seconds[cid], failures.get(cid))
            if limit:
                if pause := limit.answered(tokens, failures.get(cid, values.get(cid))):
                    until = limit.hold(pause)  # this worker's next calls wait at once, before the write
                limit.wake()
        if limit and pause:
            await asyncio.to_thread(limit.publish, until)

    async def run_all() -> None:
        gate = calls.gate(concurrency, adaptive) if calls else Gate(concurrency)
        tasks = [asyncio.ensure_future(one(cid, payload, gate)) for cid, payload in zip(ids, payloads, strict=True)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            # One row stopped the batch: the others' results would be thrown away, so stop their calls too.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    if calls:
        calls.run(run_all())
    else:
        run_coroutine(run_all())
    # Results are checked after the loop so BSON encoding never holds up calls in flight.
    for cid, payload in zip(ids, payloads, strict=True):
        if cid in failures:
            outcome.fail(cid, failures[cid])
        else:
            outcome.add(cid, values[cid], payload)


def _bisect(
    engine: Engine,
    frame: pd.DataFrame,
    ids: list[str],
    payloads: list[Any],
    outcome: PartitionOutcome,
    timeout: float | None = None,
) -> None:
    """Call the batch engine on `frame`; when it raises, split in halves down to the single rows that raise.

    With b bad rows among n this costs at most 1 + 2·b·log2(n) calls, and exactly the bad rows fail.
    """
    values: list[Any] | None = None
    started = time.perf_counter()
    try:
        values = call_within(timeout, _call_batch, engine, frame)
    except STOPS_THE_BATCH:
        raise
    except (RetryLater, TimeoutError) as exc:
        # Not one row's fault, or too slow to bisect: the whole partition waits or fails together.
        share = (time.perf_counter() - started) / len(ids)
        for cid in ids:
            outcome.row_seconds[cid] = share
            outcome.fail(cid, exc)
        return
    except Exception as exc:
        if len(ids) == 1:
            outcome.row_seconds[ids[0]] = time.perf_counter() - started
            outcome.fail(ids[0], exc)
            return
        log.debug("batch engine %s raised on %d rows (%s); bisecting", engine.name, len(ids), type(exc).__name__)
    if values is None:
        mid = len(ids) // 2
        _bisect(engine, frame.iloc[:mid], ids[:mid], payloads[:mid], outcome, timeout)
        _bisect(engine, frame.iloc[mid:], ids[mid:], payloads[mid:], outcome, timeout)
        return
    share = (time.perf_counter() - started) / len(ids)
    for cid, value, payload in zip(ids, values, payloads, strict=True):
        outcome.row_seconds[cid] = share
        outcome.add(cid, value, payload)


def _call_batch(engine: Engine, frame: pd.DataFrame) -> list[Any]:
    returned = engine.fn(frame)
    if asyncio.iscoroutine(returned):
        returned = run_coroutine(returned)
    values = _one_per_row(returned)
    if values is None or len(values) != len(frame):
        got = f"{len(values)} results" if values is not None else f"a {type(returned).__name__}"
        raise BatchResultMismatch(f"batch engine {engine.name} returned {got} for {len(frame)} rows")
    return values


def _one_per_row(returned: Any) -> list[Any] | None:
    """A batch engine's return value as a list, one item per row; None when it is no sequence of results."""
    if isinstance(returned, pd.DataFrame):
        return returned.to_dict("records")
    if isinstance(returned, pd.Series | np.ndarray):
        return list(returned)
    if isinstance(returned, str | bytes | Mapping) or not hasattr(returned, "__iter__"):
        return None
    return list(returned)


def run_coroutine(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh event loop, also when called from inside a running one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # A notebook, or a thread that already runs a loop: asyncio.run refuses there, so run beside it.
    with ThreadPoolExecutor(1, thread_name_prefix="ctxbatch-engine") as pool:
        return pool.submit(asyncio.run, coro).result()


def to_plain(value: Any) -> Any:
    """Numpy and pandas values -> plain Python (NA, NaT and NaN -> None), recursively through dicts and lists."""
    if value is None or (isinstance(value, str | bool | int) and not isinstance(value, np.generic)):
        return value
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, pd.Series):
        return to_plain(value.to_dict())
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        return to_plain(value.item())
    return value


def storable(value: Any, payload: Any) -> Any:
    """The result as stored (plain Python); UnstorableResult when MongoDB would refuse the context holding it."""
    if asyncio.iscoroutine(value):
        value.close()  # never awaited: close it rather than leave a RuntimeWarning per row
        raise UnstorableResult("the engine returned a coroutine; declare it `async def` so that it is awaited")
    try:
        plain = to_plain(value)
        # One encode per row, payload included: the stored document holds both.
        size = len(bson.encode({"payload": payload, "result": plain}))
    except Exception as exc:  # bson raises InvalidDocument, TypeError, OverflowError; deep nesting RecursionError
        raise UnstorableResult(f"the engine returned a {type(value).__name__} that BSON cannot store: {exc}") from None
    if size > MAX_BSON_BYTES - RESULT_HEADROOM:
        raise UnstorableResult(
            f"the result and its payload take {size} bytes; a stored context must stay under 16 MB"
        ) from None
    return plain


def row_error(exc: BaseException) -> dict[str, Any]:
    """The error record of a row, with the traceback's innermost frames only, so a bad batch stays small.

    Its texts are clipped here; a `response` the exception carried, by `error_record`."""
    text = "".join(traceback.format_exception(exc, limit=-TRACEBACK_FRAMES))
    if len(text) > TRACEBACK_CHARS:
        text = "...\n" + text[-TRACEBACK_CHARS:]
    try:
        record = error_record(exc, text)
    except Exception:  # an exception whose __str__ raises
        record = {"type": type(exc).__name__, "message": "<unprintable message>", "traceback": text}
    limits = {"type": MESSAGE_CHARS, "message": MESSAGE_CHARS, "traceback": TRACEBACK_CHARS + 4}
    return {**record, **{key: _clip(record[key], limit) for key, limit in limits.items()}}


def _clip(text: str, limit: int) -> str:
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    # BSON strings must be valid UTF-8; a message may carry lone surrogates.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
