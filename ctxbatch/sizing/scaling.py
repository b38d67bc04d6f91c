"""Worker scaling: the seed's "Resource Manager -> Worker Scaling", from queue length and throughput.

When the pipeline owns its LocalCluster and `dask.adaptive: {minimum, maximum}` is set, it asks
for as many workers as drain the pending contexts within a horizon of a few target batch
durations, at the throughput one worker has shown; with an external cluster it only reports
that number (the cluster's own deployment decides).

Dask's `Adaptive` scales from the scheduler's task queue, which here holds one batch at a time;
the contexts waiting in MongoDB are invisible to it. So the want comes from our queue instead.

The per-worker rate is measured from partition times, not wall times: contexts per
engine-second, times the threads one worker has, is what one more worker adds when it is kept
busy; wall times also hold the claim, the write and the overlap of batches in flight.

`WorkerScaler` adds the hysteresis: it scales up at once (the queue is waiting) and down only
after `patience` consecutive wants below the current count (a worker started and stopped again
costs more than it gives).
"""

from __future__ import annotations

import math

from ctxbatch.sizing.base import Observation

# Drain the queue within this many target batch durations.
HORIZON_BATCHES = 3
# Weight of the newest batch in the smoothed per-worker rate.
RATE_ALPHA = 0.3


def wanted_workers(
    pending: int,
    per_worker_rate: float | None,
    current: int,
    minimum: int,
    maximum: int,
    target_seconds: float,
) -> int:
    """Workers that drain `pending` contexts within HORIZON_BATCHES target durations, within bounds.

    With the rate unknown (no batch finished yet), the current count, within bounds.
    """
    if minimum > maximum:
        raise ValueError(f"minimum ({minimum}) is larger than maximum ({maximum})")
    if per_worker_rate is None or not math.isfinite(per_worker_rate) or per_worker_rate <= 0:
        want = current
    elif pending <= 0:
        want = minimum
    else:
        horizon = HORIZON_BATCHES * target_seconds
        want = math.ceil(pending / (per_worker_rate * horizon))
    return min(max(want, minimum), maximum)


class WorkerScaler:
    """Learns the per-worker rate from observations and answers how many workers to have."""

    def __init__(self, minimum: int, maximum: int, target_seconds: float, *, patience: int = 3) -> None:
        if minimum > maximum:
            raise ValueError(f"minimum ({minimum}) is larger than maximum ({maximum})")
        self.minimum = minimum
        self.maximum = maximum
        self.target_seconds = target_seconds
        self.patience = patience
        self.per_worker_rate: float | None = None
        self._lower_wants = 0

    def __repr__(self) -> str:
        rate = "-" if self.per_worker_rate is None else f"{self.per_worker_rate:.1f}/s"
        return f"<WorkerScaler {self.minimum}..{self.maximum} per_worker_rate={rate}>"

    def observe(self, observation: Observation) -> None:
        """Update the per-worker rate from a finished batch's partition times."""
        busy = sum(observation.partition_seconds)
        readings = observation.readings
        if observation.critical or not observation.contexts or busy <= 0 or readings.workers < 1:
            return
        sample = observation.contexts / busy * (readings.threads / readings.workers)
        previous = self.per_worker_rate
        self.per_worker_rate = sample if previous is None else previous + RATE_ALPHA * (sample - previous)

    def want(self, pending: int, current: int) -> int:
        """The worker count to have now: up at once, down after `patience` lower wants in a row."""
        want = wanted_workers(pending, self.per_worker_rate, current, self.minimum, self.maximum, self.target_seconds)
        if want >= current or current > self.maximum:
            self._lower_wants = 0
            return want
        self._lower_wants += 1
        if self._lower_wants < self.patience:
            return current
        self._lower_wants = 0
        return want
