"""How many partitions a batch is split into.

Two costs pull against each other. Dask spends a few milliseconds per task (scheduling,
serialising the partition's function, a MongoDB read and write per partition in our tasks), so a
partition with too little work is mostly overhead. And a batch in one or two partitions leaves
the other threads idle while one worker holds the whole batch. So:

- each partition should carry at least `MIN_PARTITION_SECONDS` of engine work (with the smoothed
  per-context cost known), which keeps Dask's per-task cost a small share of it;
- no more than `PARTITIONS_PER_THREAD` partitions per thread: two per thread let a fast thread
  take a second partition while a slow one finishes (rows are rarely equal), and more only adds
  tasks;
- but only one per thread while other batches are in flight: their partitions fill a thread that
  finishes early, and every extra partition costs a thread its own load, write and engine call.
  On the real loop (2 threads, 2 batches in flight, a batch engine paying 50 ms per call, as in
  benchmarks/sizing.py) two per thread cost fixed sizes 200 and 1,000 18% and 5% of their
  throughput, and misled the dynamic sizer's search, which saw sizes at varying splits;
- never more partitions than contexts;
- with the cost not yet known (the first batch), one partition per thread.
"""

from __future__ import annotations

import math

# Dask's per-task cost is a few ms; 0.1 s of work per partition keeps it to a few percent.
MIN_PARTITION_SECONDS = 0.1
PARTITIONS_PER_THREAD = 2


def partitions_for(size: int, threads: int, per_context_seconds: float | None, in_flight: int = 0) -> int:
    """Partitions for `size` contexts on `threads` threads, given the engine seconds per context and
    the number of other batches in flight.

    >>> partitions_for(1000, 4, None)   # cost unknown: one per thread
    4
    >>> partitions_for(1000, 4, 0.0001)  # 0.1 s of work in all: one partition
    1
    >>> partitions_for(1000, 4, 0.01)    # 10 s of work: two per thread
    8
    >>> partitions_for(1000, 4, 0.01, in_flight=1)  # ... one per thread beside another batch
    4
    """
    if size < 1:
        raise ValueError(f"a batch holds at least one context, got {size}")
    threads = max(1, threads)
    if per_context_seconds is None or not math.isfinite(per_context_seconds):
        wanted = threads
    else:
        work = size * max(per_context_seconds, 0.0)
        per_thread = 1 if in_flight > 0 else PARTITIONS_PER_THREAD
        wanted = min(int(work / MIN_PARTITION_SECONDS), per_thread * threads)
    return max(1, min(wanted, size))
