"""`worker.engine_concurrency: auto`: a worker's limit on calls in flight, learnt from its calls.

A gradient rule (after Netflix's concurrency-limits Gradient2): the limit follows
limit x floor / recent + sqrt(limit), where `recent` is the median of the last `WINDOW` answers and
`floor` what the calls take when the service is not queueing: the least of the last `FLOOR_WINDOWS`
medians, as BBR keeps its round-trip floor, so that a service queueing all the time does not lift
it, and a service slower for good raises it once they have passed. While recent latency stays
within `TOLERANCE` x floor the gradient is 1 and the sqrt(limit) allowance makes the limit climb;
once the service queues, recent latency rises and the limit comes down to where it does not. Only
answers are samples (see `calls.Gate.answered`). The rule moves once per window, on its median: a
single slow answer (a garbage collection, a worker's held GIL) delays every call in flight at once,
and followed answer by answer it halved limits that the service was serving well.

It starts at `START` calls, where two workers already keep a service of a few dozen calls at once
busy, and climbs from there by the rule (under a second to 30 per worker on a 100 ms service). No
slow start: doubling per round trip overshot a service's queue before the first queued answers came
back, and its 429s (with Retry-After, a pause for every worker) cost more than the climb saves. An
overload signal (a RetryLater with a time to wait, a timeout; see `calls.overloaded`) halves it at
once (AIMD), once per window of calls: the calls in flight when it came met the same overload, and
each halving on their answers would take the limit to its minimum for what was one event.

An overload also marks a ceiling: the limit it came at. A service that turns calls away beyond its
capacity (429 at once, no queue, so latency never rises) would otherwise be found again within a
few windows, and each time its Retry-After pauses every worker. So the limit climbs back by the rule
to NEAR x the ceiling, then holds there and probes, +1 after PROBE_ROUND_TRIPS round trips, the step
doubling with each probe that meets no overload (after TCP CUBIC: slow near the last overload, fast
once well past it); past MOVED x the ceiling the wall has moved, and the rule climbs on its own. A
probe that meets the wall steps back to NEAR x where it met it, not to half. Pure: no clock, samples
are given; a round trip is `limit` answers.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

TOLERANCE = 1.1  # recent latency up to 1.1 x the floor is not queueing yet
SMOOTHING = 0.3  # how far one window moves the limit towards the rule's value
FLOOR_WINDOWS = 100  # windows the floor is the least of (a few seconds of a busy worker's answers)
WINDOW = 10  # answers per step of the rule
START = 16  # the first limit (within the bounds): two workers keep 32 calls in flight from the start
NEAR = 0.95  # the climb after an overload holds at this share of the limit the overload came at
MOVED = 1.25  # probes past this many times the ceiling met no wall: it moved, and the rule climbs again
PROBE_ROUND_TRIPS = 20  # round trips (of `limit` answers each) between probes above that hold


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
        self._medians: deque[float] = deque(maxlen=FLOOR_WINDOWS)
        self._window: list[float] = []
        self._used = 0  # the most calls in flight seen in the window
        self._calm_for = 0  # answers to see before the next overload may lower the limit again
        self.ceiling: float | None = None  # the limit the last overload came at
        self._probe_step = 1.0
        self._since_probe = 0  # answers since the last probe above the hold

    def observe(self, seconds: float, in_flight: int) -> None:
        """One call answered in `seconds`, with `in_flight` calls in flight when it ended."""
        self._calm_for = max(0, self._calm_for - 1)
        self._window.append(seconds)
        self._used = max(self._used, in_flight)
        if len(self._window) < WINDOW:
            return
        recent, used = statistics.median(self._window), self._used
        self._window, self._used = [], 0
        self._medians.append(recent)
        self.recent = recent
        floor = self.floor = min(self._medians)
        gradient = max(0.5, min(1.0, TOLERANCE * floor / recent))
        wanted = self.limit * gradient + math.sqrt(self.limit)
        if wanted > self.limit and used < self.limit / 2:
            return  # the calls do not use the limit: no evidence that a higher one would be served
        smoothed = self.limit + SMOOTHING * (wanted - self.limit)
        self._set(smoothed if smoothed <= self.limit else self._climb(smoothed))

    def _climb(self, wanted: float) -> float:
        """Where a climb towards `wanted` goes: by the rule up to the hold, then by probes."""
        if self.ceiling is not None and self.limit > MOVED * self.ceiling:
            self.ceiling = None  # the service serves more than it did: no hold
        if self.ceiling is None or wanted <= NEAR * self.ceiling:
            return wanted
        if self.limit < NEAR * self.ceiling:
            return NEAR * self.ceiling
        self._since_probe += WINDOW
        if self._since_probe < PROBE_ROUND_TRIPS * self.limit:
            return self.limit
        self._since_probe = 0
        step, self._probe_step = self._probe_step, self._probe_step * 2
        return min(wanted, self.limit + step)

    def overloaded(self) -> None:
        """The service said "wait" (RetryLater after some seconds) or a call timed out: halve, once per window
        (or, when a probe above the hold met it, step back below where it came)."""
        if self._calm_for:
            return
        self._calm_for = int(self.limit)  # the calls in flight now answer before it can halve again
        # A probe above the hold found the ceiling where it was: back to below it, not to half.
        probing = self.ceiling is not None and self.limit >= NEAR * self.ceiling
        self.ceiling, self._probe_step, self._since_probe = self.limit, 1.0, 0
        self._set(self.limit * (NEAR if probing else 0.5))

    def _set(self, limit: float) -> None:
        self.limit = max(float(self.minimum), min(float(self.maximum), limit))
