"""`worker.engine_concurrency` bounds a worker's async engine calls over all the partitions it runs; a
worker's balance of the shared limits is spent slice by slice."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ctxbatch.pipeline.calls import WorkerCalls
from ctxbatch.pipeline.isolate import run_partition
from ctxbatch.pipeline.partition import as_frame
from ctxbatch.pipeline.slices import Balance


class Gauge:
    """An async engine that records the most calls it had in flight at once."""

    def __init__(self) -> None:
        self.now = self.most = 0
        self.lock = threading.Lock()

    async def __call__(self, payload: dict[str, Any]) -> int:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        await asyncio.sleep(0.01)
        with self.lock:
            self.now -= 1
        return int(payload["i"])


def partition(start: int) -> Any:
    return as_frame(
        [{"_id": f"c{i}", "payload": {"i": i}, "priority": 0, "attempts": 1} for i in range(start, start + 30)]
    )


def test_partitions_on_one_worker_share_its_limit_of_calls_in_flight() -> None:
    # Given one worker's calls, a limit of 4, and three partitions run at once by its threads
    calls, gauge = WorkerCalls(), Gauge()
    try:
        with ThreadPoolExecutor(3) as pool:
            outcomes = list(pool.map(lambda s: run_partition(gauge, partition(s), 4, None, calls), (0, 30, 60)))
    finally:
        calls.close()
    # Then every row completed, and never more than 4 calls were in flight on the worker
    assert sum(len(o.results) for o in outcomes) == 90
    assert gauge.most == 4


def test_a_balance_spends_its_oldest_slice_first_and_drops_what_outlived_its_slice() -> None:
    # Given two slices taken from the shared budget, ending at 10.5 and 10.75
    balance = Balance()
    balance.add({"requests": 2, "tokens": 300}, ends=10.5)
    balance.add({"requests": 2, "tokens": 300}, ends=10.75)
    # Then a call is spent from the oldest slice first
    assert balance.spend({"requests": 1, "tokens": 250}, now=10.0)
    assert balance.held("tokens", 10.0) == 350
    # And what a call needs beyond the balance is refused whole, nothing spent
    assert not balance.spend({"requests": 1, "tokens": 400}, now=10.0)
    assert balance.held("requests", 10.0) == 3
    # And once the older slice ended, only the newer one's units are left; after both, none
    assert balance.held("tokens", 10.6) == 300
    assert not balance.covers({"requests": 1}, now=10.8)


def test_an_auto_limit_climbs_on_a_fast_engine_and_stays_within_its_bounds() -> None:
    # Given a worker's calls with engine_concurrency: auto between 2 and 16, and a 10 ms engine
    calls, gauge = WorkerCalls(), Gauge()
    rows = as_frame([{"_id": f"c{i}", "payload": {"i": i}, "priority": 0, "attempts": 1} for i in range(300)])
    try:
        outcome = run_partition(gauge, rows, 16, None, calls, adaptive=(2, 16))
        gate = calls.gate(16, (2, 16))
    finally:
        calls.close()
    # Then every row completed, the limit rose above its minimum, and calls in flight never passed the maximum
    assert len(outcome.results) == 300
    assert 2 < gauge.most <= 16
    assert gate.limit > 2
