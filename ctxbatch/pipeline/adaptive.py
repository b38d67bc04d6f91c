"""`worker.engine_concurrency: auto`: a worker's limit on calls in flight, learnt from its calls.

A gradient rule (after Netflix's concurrency-limits Gradient2): the limit follows
limit x floor / recent + sqrt(limit), where `floor` is a slow average of the calls' latency (what
the service takes when it is not queueing) and `recent` a fast one. While recent latency stays
within `TOLERANCE` x floor the gradient is 1 and the sqrt(limit) allowance makes the limit climb;
once the service queues, recent latency rises and the limit comes down to where it does not. An
overload signal (RetryLater, a timeout) halves it at once (AIMD). Pure: no clock, samples are given.
"""

from __future__ import annotations

import math

TOLERANCE = 1.5  # recent latency up to 1.5 x the floor is not queueing yet
SMOOTHING = 0.2  # how far one sample moves the limit towards the rule's value
FLOOR_WEIGHT = 0.001  # the floor follows ~1,000 samples: a service slower for good becomes the new floor
RECENT_WEIGHT = 0.1  # the recent latency follows ~10 samples


class AdaptiveLimit:
    """Calls in flight allowed on one worker, between `minimum` and `maximum`, from latencies seen."""

    def __init__(self, minimum: int, maximum: int) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.limit = float(minimum)
        self.floor: float | None = None
        self.recent: float | None = None

    def observe(self, seconds: float, in_flight: int) -> None:
        """One call answered in `seconds`, with `in_flight` calls in flight when it ended."""
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
        """The service said "not now" (RetryLater) or a call timed out: halve the limit."""
        self._set(self.limit * 0.5)

    def _set(self, limit: float) -> None:
        self.limit = max(float(self.minimum), min(float(self.maximum), limit))
