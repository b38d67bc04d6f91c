"""The sizing interface the scheduler loop calls: readings in, a plan out, an observation back.

Before each claim the loop takes one `Readings` snapshot (`resources.read`) and asks the sizer
for a `Plan`: how many contexts to claim and into how many partitions to split them. After the
batch it tells the sizer what happened (`Observation`). Nothing outside `ctxbatch.sizing` knows
more than this.

`Sizer` is a template method, as dramatiq's `RateLimiter` is: the public `plan()` clamps what
the subclass's `_next_size()` returns to the bounds, splits, and records a `Decision`, so no
strategy can forget a bound or skip the record; `observe()` keeps the bookkeeping every sizer
needs (the per-context work cost that splitting uses) and then calls `_observe()`. A strategy
that raises is logged and skipped (as dramatiq's `emit_after` does with middleware): the loop
keeps its last size. A sizer that `remembers` says what the next run should start from
(`remember()` -> a `Memory`) and takes up an earlier run's before its first plan (`resume()`).
"""

from __future__ import annotations

import logging
import math
import threading
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from ctxbatch.config import WorkerSettings
from ctxbatch.sizing.memory import Memory
from ctxbatch.sizing.split import partitions_for

log = logging.getLogger("ctxbatch.sizing")

# A run of a million batches should not keep a million decisions: past this many, the oldest
# half is dropped (in place, so a RunReport holding the list sees the same object).
MAX_DECISIONS = 10_000
# Weight of the newest batch in the smoothed work cost per context that splitting follows.
WORK_COST_ALPHA = 0.3
# With an async engine and no sizes configured, batches range from its window to this many windows.
WINDOW_SPAN = 4

Inputs = dict[str, float | int | None]


@dataclass(frozen=True)
class Readings:
    """One snapshot of the load, taken once per batch by `resources.read`; None is "not known"."""

    worker_memory_fraction: float | None  # max over workers of memory / memory_limit
    worker_cpu_fraction: float | None  # mean over workers of cpu% / (100 * nthreads)
    host_cpu_fraction: float | None
    host_memory_fraction: float | None
    db_rtt_seconds: float | None
    in_flight_claims: int  # batches this loop has in flight
    threads: int = 1  # total worker threads in the cluster (>= 1)
    workers: int = 0
    window: int = 0  # an async engine's calls in flight allowed over the cluster (its limit x workers); else 0

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    @property
    def memory_fraction(self) -> float | None:
        """The workers' memory use, else the loop host's (a LocalCluster shares it)."""
        return self.worker_memory_fraction if self.worker_memory_fraction is not None else self.host_memory_fraction

    @property
    def cpu_fraction(self) -> float | None:
        """The workers' CPU use, else the loop host's."""
        return self.worker_cpu_fraction if self.worker_cpu_fraction is not None else self.host_cpu_fraction


UNKNOWN = Readings(None, None, None, None, None, in_flight_claims=0)


@dataclass(frozen=True)
class Plan:
    """How many contexts to claim, and into how many partitions to split them."""

    size: int
    partitions: int

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= self.size:
            raise ValueError(f"a plan needs 1 <= partitions <= size, got {self.partitions} and {self.size}")


@dataclass(frozen=True)
class Observation:
    """What one batch did, told to the sizer after the batch was written back (or stopped)."""

    contexts: int  # contexts the batch actually held (may be < planned size)
    planned: int  # the size that was planned
    wall_seconds: float  # claim-to-written wall time of the batch
    partition_seconds: list[float]  # engine wall time per partition
    errors: int  # rows that failed (retried or for good) or were deferred: told, not a reason to resize
    critical: bool  # the batch was stopped by a critical error
    readings: Readings = UNKNOWN
    lost: int = 0  # contexts whose lease expired before they were written: renewals fell behind

    @property
    def throughput(self) -> float | None:
        """Contexts per second of wall time, when the batch held any and took any time."""
        return self.contexts / self.wall_seconds if self.contexts and self.wall_seconds > 0 else None

    @property
    def error_rate(self) -> float:
        return self.errors / self.contexts if self.contexts else 0.0


@dataclass(frozen=True)
class Decision:
    """One plan: its size and split, why, and what the sizer knew when it chose."""

    batch: int
    size: int
    partitions: int
    reason: str
    inputs: Inputs = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        """Flat, for `pandas.DataFrame([d.as_row() for d in sizer.decisions])` in a notebook."""
        row = asdict(self)
        return {**row.pop("inputs"), **row}


class Sizer(ABC):
    """Chooses each batch's size and split; subclasses implement `_next_size` (and `_observe`)."""

    name: ClassVar[str] = "custom"
    # Whether it keeps what it learned between runs (`remember`, `resume`): a run wires its history only then.
    remembers: ClassVar[bool] = False

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.decisions: list[Decision] = []
        self.batches_planned = 0
        self.batches_observed = 0
        # Engine seconds per context (summed over partitions), which splitting follows.
        self.work_per_context: float | None = None
        # Whether the batch being observed was planned while a batch of another size was in flight:
        # they shared the threads, so its wall time says as much about that batch as about its size.
        self.ran_beside = False
        self._in_flight: Counter[int] = Counter()  # sizes planned and not yet observed
        self._beside: Counter[int] = Counter()  # of those, how many per size were planned beside another
        self._last_size: int | None = None
        self.window = 0  # the async engine's window the last readings gave (0: not an async engine)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        size = self._last_size if self._last_size is not None else "-"
        return (
            f"<{type(self).__name__} size={size} bounds={self.bounds[0]}..{self.bounds[1]} "
            f"planned={self.batches_planned} observed={self.batches_observed}>"
        )

    @property
    def bounds(self) -> tuple[int, int]:
        """The sizes `plan()` may return: the configured ones, raised to an async engine's window.

        With an async engine and no batch size in the config, a batch holds at least the window the
        engine's limit allows in flight (Little's law: calls in flight = rate x latency, and the limit
        is where the service's latency holds), and up to WINDOW_SPAN times it; explicit sizes are kept.
        """
        low, high = self.configured_bounds
        if self.window and not self.settings.sizes_given:
            low, high = max(low, self.window), max(high, WINDOW_SPAN * self.window)
        return low, high

    @property
    def configured_bounds(self) -> tuple[int, int]:
        """[min_batch_size, max_batch_size]."""
        return self.settings.min_batch_size, self.settings.max_batch_size

    # -- the public template methods ------------------------------------------------------

    def plan(self, readings: Readings) -> Plan:
        """The next batch's size (within bounds) and partition count; records and logs the decision."""
        with self._lock:
            self.window = readings.window
            low, high = self.bounds
            try:
                raw = self._next_size(readings)
                wanted = int(raw)
                reason = self._reason()
            except Exception as exc:  # a strategy's bug must not stop the loop
                log.exception("sizer %s failed to plan; keeping the last size", type(self).__name__)
                wanted = self._last_size if self._last_size is not None else self.settings.batch_size
                reason = f"sizer failed ({type(exc).__name__}: {exc}) -> keep {wanted}"
            size = min(max(wanted, low), high)
            if size != wanted:
                window = f", the window of {self.window} calls" if low == self.window and size == low else ""
                reason = f"{reason}; clamped to {size} (bounds {low}..{high}{window})"
            partitions = self.split(size, readings)
            self._note_in_flight(size, readings.in_flight_claims)
            self.batches_planned += 1
            self._last_size = size
            inputs: Inputs = {
                "memory": readings.memory_fraction,
                "cpu": readings.cpu_fraction,
                "db_rtt_seconds": readings.db_rtt_seconds,
                "in_flight": readings.in_flight_claims,
                "threads": readings.threads,
                "workers": readings.workers,
                "window": readings.window or None,
                "work_per_context": self.work_per_context,
                **self._inputs(),
            }
            decision = Decision(self.batches_planned, size, partitions, reason, inputs)
            self._record(decision)
            return Plan(size, partitions)

    def observe(self, observation: Observation) -> None:
        """Learn from a finished (or critically stopped) batch."""
        with self._lock:
            self.batches_observed += 1
            self._settle_in_flight(observation.planned)
            self._learn_work_cost(observation)
            try:
                self._observe(observation)
            except Exception:  # a strategy's bug must not stop the loop
                log.exception("sizer %s failed to observe a batch; ignoring it", type(self).__name__)

    def remember(self) -> Memory | None:
        """What the next run should start from; None when there is nothing (new) worth keeping."""
        with self._lock:
            try:
                return self._remember()
            except Exception:  # a strategy's bug must not stop the loop
                log.exception("sizer %s failed to say what it learned; keeping nothing", type(self).__name__)
                return None

    def resume(self, memory: Memory) -> bool:
        """Start from what an earlier run learned (within today's bounds); only before the first plan."""
        with self._lock:
            if self.batches_planned:  # what this sizer measured itself beats what another run did
                return False
            try:
                return self._resume(memory)
            except Exception:
                log.exception("sizer %s failed to resume from %s; starting afresh", type(self).__name__, memory)
                return False

    def split(self, size: int, readings: Readings) -> int:
        """Partitions for a batch of `size`: follows the threads, the work per context and the batches in flight."""
        return partitions_for(size, readings.threads, self.work_per_context, readings.in_flight_claims)

    # -- what subclasses implement --------------------------------------------------------

    @abstractmethod
    def _next_size(self, readings: Readings) -> int:
        """The size this strategy wants; `plan()` clamps it to `bounds`."""

    def _observe(self, observation: Observation) -> None:  # noqa: B027 - optional hook
        """Learn from a batch (nothing by default)."""

    def _remember(self) -> Memory | None:
        """What to keep for the next run (nothing by default; set `remembers` when overriding)."""
        return None

    def _resume(self, memory: Memory) -> bool:
        """Take up an earlier run's memory; whether it did (not by default)."""
        return False

    def _reason(self) -> str:
        """One line on why the last `_next_size` is what it is."""
        return "custom sizer"

    def _inputs(self) -> Inputs:
        """What the strategy knew, recorded with each decision."""
        return {}

    # -- bookkeeping ----------------------------------------------------------------------

    def _note_in_flight(self, size: int, in_flight: int) -> None:
        if in_flight == 0:  # nothing runs: forget plans that never became batches
            self._in_flight.clear()
            self._beside.clear()
        if any(other != size for other in self._in_flight):
            self._beside[size] += 1
        self._in_flight[size] += 1

    def _settle_in_flight(self, planned: int) -> None:
        # Batches of one size are told apart by count only: how many of them ran beside another
        # size is what matters, not which.
        self.ran_beside = self._beside[planned] > 0
        for counts in (self._beside, self._in_flight):
            if counts[planned] > 1:
                counts[planned] -= 1
            else:
                counts.pop(planned, None)

    def _learn_work_cost(self, observation: Observation) -> None:
        if observation.critical or not observation.contexts or not observation.partition_seconds:
            return
        sample = sum(observation.partition_seconds) / observation.contexts
        if not math.isfinite(sample) or sample < 0:
            return
        previous = self.work_per_context
        self.work_per_context = sample if previous is None else previous + WORK_COST_ALPHA * (sample - previous)

    def _record(self, decision: Decision) -> None:
        if len(self.decisions) >= MAX_DECISIONS:
            del self.decisions[: MAX_DECISIONS // 2]
        self.decisions.append(decision)
        log.debug(
            "batch %d: size %d in %d partition(s): %s",
            decision.batch,
            decision.size,
            decision.partitions,
            decision.reason,
        )
