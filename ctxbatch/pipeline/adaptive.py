"""`worker.engine_concurrency: auto`: a worker's limit on calls in flight, learnt from its calls.

A gradient rule (after Netflix's concurrency-limits Gradient2): the limit follows
limit x floor / recent + sqrt(limit), where `floor` is a slow average of the calls' latency (what
the service takes when it is not queueing) and `recent` a fast one. While recent latency stays
within `TOLERANCE` x floor the gradient is 1 and the sqrt(limit) allowance makes the limit climb;
once the service queues, recent latency rises and the limit comes down to where it does not. An
overload signal (RetryLater, a timeout) halves it at once (AIMD), once per window of calls: the calls
in flight when it came met the same overload, and each halving on their answers would take the limit
to its minimum for what was one event. It starts at `START` calls, where a worker already fills most
services' queue a little, rather than at the minimum, which took seconds of calls to climb from.
Pure: no clock, samples are given.
"""

from __future__ import annotations

import math

TOLERANCE = 1.25  # recent latency up to 1.25 x the floor is not queueing yet
SMOOTHING = 0.2  # how far one sample moves the limit towards the rule's value
FLOOR_WEIGHT = 0.001  # the floor follows ~1,000 samples: a service slower for good becomes the new floor
RECENT_WEIGHT = 0.1  # the recent latency follows ~10 samples
START = 16  # the first limit (within the bounds): two workers keep 32 calls in flight from the start


def first_limit(minimum: int, maximum: int, start: int = START) -> int:
    """Where a limit between `minimum` and `maximum` starts."""
    return max(minimum, min(maximum, start))


class AdaptiveLimit:
    """Calls in flight allowed on one worker, between `minimum` and `maximum`, from latencies seen."""

    def __init__(self, minimum: int, maximum: int, start: int = START) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.limit = float(first_limit(minimum, maximum, start))
        self.floor: float | None = None
        self.recent: float | None = None
        self._calm_for = 0  # answers to see before the next overload may lower the limit again

    def observe(self, seconds: float, in_flight: int) -> None:
        """One call answered in `seconds`, with `in_flight` calls in flight when it ended."""
        self._calm_for = max(0, self._calm_for - 1)
        if self.floor is None or self.recent is None:
            self.floor = self.recent = seconds
            return
        self.recent += RECENT_WEIGHT * (seconds - self.recent)
        self.floor = min(self.floor + FLOOR_WEIGHT * (seconds - self.floor), self.recent)
        gradient = max(0.5, min(1.0, TOLERANCE * self.floor / self.recent))
        wanted = self.limit * gradient + math.sqrt(self.limit)
        if wanted > self.limit and in_flight < self.limit / 2:
            return  # the calls do not use the limit: no evidence that a higher one would be served
        self._set(self.limit + SMOOTHING * (wanted - self.limit))

    def overloaded(self) -> None:
        """The service said "not now" (RetryLater) or a call timed out: halve the limit, once per window."""
        if self._calm_for:
            return
        self._calm_for = int(self.limit)  # the calls in flight now answer before it can halve again
        self._set(self.limit * 0.5)

    def _set(self, limit: float) -> None:
        self.limit = max(float(self.minimum), min(float(self.maximum), limit))
