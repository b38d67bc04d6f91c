"""The dynamic sizer: the seed's "Dynamic Batch Sizing" and its performance feedback loop.

The model. A batch of n contexts takes about F + c*n seconds: F is what every batch pays (the
claim, Dask's `compute`, a per-partition call to an external service), c what each context
costs. Throughput n / (F + c*n) grows with n and saturates at 1/c; past some size it may fall
again (memory, spilling, a service that slows under large requests). Batches must also stay
short, so that leases, cancellation and priorities stay responsive: about
`worker.target_batch_seconds`, which caps n at (target - F) / c.

The controller, deterministic given the same observations (no clock inside):

- **Search.** From the start size it steps x2 (`Tuning.step`) while the throughput measured
  at the new size beats the previous size's by more than the dead band; after a gain past
  `leap_gain` it steps x4, since the curve is still far from saturated. A size is judged on
  `min_samples` full batches and at least `min_seconds` of them (short batches are noisy; a
  gain past `decisive_gain` needs no more; the first size, compared with nothing, needs only
  `min_samples`), then followed by a moving average. When a step gains nothing (after a x4
  leap, once the size in between is measured too), the search ends at the peak of a parabola
  through the best size and its two neighbours (`history.py`); a x2 grid alone could miss the
  best size by 40%.
- **Hold.** Inside the dead band (+-10%) differences are noise: the size stays put.
- **Probe.** After `probe_every` held batches it tries one step up (or down, alternately). A
  probe that gains more than the dead band becomes a new search in that direction; one that
  does not goes back and doubles the interval (up to `max_probe_every`), so a flat curve sees
  a move every few dozen batches at most, not oscillation.
- **Cap.** No step goes past the size the duration model (`cost.py`: wall = fixed + per
  context * n, fitted to recent batches) predicts to take the target; when it predicts the
  current size runs past the target (beyond the dead band), the size drops to that cap at once.
  A cost per context that jumps (3x either way against earlier batches of the same size: the
  workload changed) restarts the model and the search. Where the batches measured at the
  current size run longer than the line predicts (it lags behind a change), they set the cap.
- **Back-off.** What a batch's size costs, and only that: a critical failure (the whole batch runs
  again), contexts lost to an expired lease (renewals fell behind the batch), or worker memory
  above `worker.memory_high_fraction` halves the size (TCP-like multiplicative decrease), at most
  once per round: signals from batches planned before the last back-off are not counted again.
  Failed rows are not a reason: each fails alone (isolated), as does a FailNow, and a RetryLater
  deferral is the service's pace, not the batch's size; a smaller batch would fail or defer the
  same share of its rows (with 3% bad rows, backing off on them held a run at the minimum size, 3.6x
  slower). Memory is judged on the readings given to `plan()`,
  the freshest ones. Afterwards the size holds `recovery_batches` batches and then probes up
  again; back-offs that keep coming double that wait. A search step up that gains nothing
  while CPU is saturated (> `cpu_high`) ends on the smaller size, not the larger.
- **Unmeasured batches.** One that held fewer contexts than planned (the queue ran dry) says
  nothing about its size; nor does one planned beside a batch of another size (`ran_beside`):
  they shared the threads (on the real loop, a batch of 517 queued behind one of 1,280 put 7 s
  of "fixed" cost into the line). A measurement belongs to the size its batch was planned at.
- **Memory.** With `worker.sizing_history`, a run starts where the last run of its engine, queues
  and setup ended (sizing/memory.py): holding the size it held (probed after `recovery_batches`),
  or searching on from the best size its search had measured; within today's bounds, and trusted
  only as far as today's batches agree.

Each decision's reason is one line ("throughput up 35% -> climb to 300", "memory 0.86 > 0.8
-> halve to 150"), and its inputs the numbers behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum

from ctxbatch.config import WorkerSettings
from ctxbatch.sizing.base import Inputs, Observation, Readings, Sizer
from ctxbatch.sizing.cost import DurationModel, jumped
from ctxbatch.sizing.history import History, Level
from ctxbatch.sizing.memory import Memory


@dataclass(frozen=True)
class Tuning:
    """The controller's constants; the defaults are what the benchmarks were run with."""

    dead_band: float = 0.1  # throughput changes within +-10% are noise: hold
    step: float = 2.0  # search and probe step: x2 up, /2 down
    min_samples: int = 2  # full batches measured at a size before it is compared
    min_seconds: float = 1.0  # ... and their wall seconds in all (up to 4x min_samples batches)
    decisive_gain: float = 0.3  # a gain this big needs no min_seconds: noise does not make it
    leap_gain: float = 0.5  # a gain this big on one step takes the next two steps at once
    level_alpha: float = 0.25  # a size's throughput: mean of its first 4 batches, then this weight on the newest
    backoff: float = 0.5  # multiplicative decrease on trouble
    cpu_high: float = 0.9  # CPU fraction that counts as saturated
    short_fraction: float = 0.9  # a batch holding less than this share of its plan is not measured
    cost_jump: float = 3.0  # a cost this many times the smoothed one (or 1/this) is a jump, not noise
    probe_every: int = 20  # full batches held before probing a neighbour
    max_probe_every: int = 160  # the interval doubles after each failed probe, up to this
    recovery_batches: int = 3  # full batches held after a back-off before probing up


class Phase(Enum):
    SEARCH = "search"
    REFINE = "refine"
    PROBE = "probe"
    HOLD = "hold"


class DynamicSizer(Sizer):
    """Sizes batches from throughput history, target duration, trouble and resource readings."""

    name = "dynamic"
    remembers = True

    def __init__(self, settings: WorkerSettings, tuning: Tuning | None = None) -> None:
        super().__init__(settings)
        self.tuning = tuning or Tuning()
        low, high = self.bounds
        self.size = min(max(settings.batch_size, low), high)
        self.phase = Phase.SEARCH
        self.duration = DurationModel()  # wall seconds ~ fixed + per context * n
        self._direction = 1
        self._ref: int | None = None  # the size the current one is compared with
        self._searched: list[int] = [self.size]
        self.history = History(self.tuning.level_alpha)
        self._held = 0
        self._hold_for = self.tuning.probe_every
        self._probe_every = self.tuning.probe_every
        self._recovery = self.tuning.recovery_batches
        self._calm = 0  # full batches since the last back-off
        self._after_backoff = False  # the next probe up is a recovery
        self._open = True  # a back-off may happen (see the module's note on rounds)
        self._readings: Readings | None = None
        self._note = f"start at {self.size}"
        self._move_note: str | None = f"start at {self.size} (batch_size {settings.batch_size})"

    def __repr__(self) -> str:
        return f"<DynamicSizer size={self.size} phase={self.phase.value} observed={self.batches_observed}>"

    # -- the template's hooks -------------------------------------------------------------

    def _next_size(self, readings: Readings) -> int:
        self._readings = readings
        smallest, largest = self.bounds
        if not smallest <= self.size <= largest:  # the bounds follow an async engine's window as it changes
            self._move(min(max(self.size, smallest), largest))
            self._say(f"the async engine's window of {self.window} calls -> {self.size}", moved=True)
        memory, high = readings.memory_fraction, self.settings.memory_high_fraction
        if memory is not None and memory > high:
            self._back_off(f"memory {memory:.2f} > {high:g}")
        return self.size

    def _reason(self) -> str:
        if self._move_note is None:
            return self._note
        # A move is reported once; until the next batch is observed, later plans just wait.
        reason, self._move_note, self._note = self._move_note, None, f"measuring {self.size}"
        return reason

    def _inputs(self) -> Inputs:
        level, ref = self.history.get(self.size), self.history.get(self._ref)
        fit = self.duration.fit()
        return {
            "throughput": level.throughput if level else None,
            "ref_size": self._ref,
            "ref_throughput": ref.throughput if ref else None,
            "fixed_seconds": fit[0] if fit else None,
            "seconds_per_context": fit[1] if fit else None,
            "predicted_seconds": self.duration.predict(self.size),
            "target_seconds": self.settings.target_batch_seconds,
        }

    def _observe(self, observation: Observation) -> None:
        if observation.planned <= self.size:
            self._open = True  # a batch planned since the last back-off: its signals are new
        trouble = self._trouble(observation)
        if trouble:
            self._back_off(trouble)
            return
        if observation.throughput is None or observation.contexts < self.tuning.short_fraction * observation.planned:
            self._say(f"batch held {observation.contexts} of {observation.planned} planned -> hold {self.size}")
            return
        if self.ran_beside:
            self._say(f"a batch of {observation.planned} ran beside one of another size -> hold {self.size}")
            return
        level = self.history.level(observation.planned)
        jump = self._learn_cost(observation, level)
        level.add(observation.contexts, observation.wall_seconds, self.tuning.level_alpha)
        self._calm += 1
        if self._calm >= self.tuning.probe_every:
            self._recovery = self.tuning.recovery_batches
        if self._cap_if_over_target():
            return
        if jump is not None:
            change = f"rose {jump:.1f}x" if jump > 1 else f"fell {1 / jump:.1f}x"
            self._search_from(self.size, f"seconds per context {change} -> search again from {self.size}")
            return
        if observation.planned != self.size:
            self._say(f"a batch of {observation.planned} from before the move finished -> hold {self.size}")
            return
        steps = {Phase.SEARCH: self._search_step, Phase.REFINE: self._refine_step, Phase.PROBE: self._probe_step}
        steps.get(self.phase, self._hold_step)()

    # -- what the next run starts from (sizing/memory.py) ---------------------------------

    def _remember(self) -> Memory | None:
        if self._after_backoff:  # a size halved by trouble is not a good one: the last memory stands
            return None
        if self.phase in (Phase.HOLD, Phase.PROBE):
            held = self._ref if self.phase is Phase.PROBE and self._ref is not None else self.size
            level = self.history.get(held)
            return Memory(held, True, replace(level) if level else None)
        best = self.history.best(self._searched)
        level = self.history.get(best)
        return None if best is None or level is None else Memory(best, False, replace(level))

    def _resume(self, memory: Memory) -> bool:
        low, high = self.bounds
        size = min(max(memory.size, low), high)
        rate = f" ({memory.level.throughput:.0f}/s)" if memory.level else ""
        clamped = f"; clamped to bounds {low}..{high}" if size != memory.size else ""
        self._move_note = None
        if memory.settled:
            self._settle(size, f"start at {size}: an earlier run held {memory.size}{rate}{clamped}")
            # Held under other conditions (load, the service's pace): checked by a probe soon, not in 20 batches.
            self._hold_for = self.tuning.recovery_batches
        else:
            self._search_from(size, f"start at {size}: an earlier run's search reached {memory.size}{rate}{clamped}")
        if memory.level and size == memory.size:
            # Its measurements, as if from the first few batches: a search steps on after one batch, today's
            # batches soon outweigh them, and a cost per context 3x off theirs restarts the search (an engine
            # that got slower or faster is not trusted away).
            kept = min(memory.level.samples, self.tuning.min_samples)
            seconds = memory.level.seconds * kept / memory.level.samples
            self.history.keep(size, replace(memory.level, samples=kept, seconds=seconds))
        self._searched = [size]
        return True

    # -- trouble and back-off -------------------------------------------------------------

    def _trouble(self, observation: Observation) -> str | None:
        if observation.critical:
            return "critical failure"
        if observation.lost:
            return f"{observation.lost} contexts lost to an expired lease (renewals fell behind)"
        return None

    def _back_off(self, why: str) -> None:
        if not self._open:
            self._say(f"{why}, already backed off; waiting for a batch of {self.size} -> hold {self.size}")
            return
        self._open = False
        low = self.bounds[0]
        new = max(low, math.floor(self.size * self.tuning.backoff))
        verb = "halve" if self.tuning.backoff == 0.5 else "back off"
        self._searched = []
        self.history.forget()
        self._settle(new, f"{why} -> {verb} to {new}" if new < self.size else f"{why} -> stay at minimum {new}")
        self._direction = 1
        self._hold_for, self._calm, self._after_backoff = self._recovery, 0, True

    # -- cost and the target duration -----------------------------------------------------

    def _learn_cost(self, observation: Observation, level: Level) -> float | None:
        """Feed the duration model; the ratio new/usual when the cost per context jumped, else None.

        A jump is judged against earlier batches of the same size only: across sizes the
        fixed share makes the cost per context differ by the size ratio, which is no jump.
        """
        sample = observation.wall_seconds / observation.contexts
        jump = jumped(sample, level.seconds_per_context, self.tuning.cost_jump) if level.samples else None
        if jump is not None:
            self.duration.reset()  # the workload changed: start the line from this batch
        self.duration.add(observation.contexts, observation.wall_seconds)
        return jump

    def _cap(self) -> int | None:
        """The largest size fitting the target by the model, or by the current size's batches where longer."""
        target = self.settings.target_batch_seconds
        cap, wall = self.duration.largest_within(target), self.history.wall(self.size, self.tuning.min_samples)
        if wall is not None and wall > target:
            scaled = math.floor(self.size * target / wall)
            cap = scaled if cap is None else min(cap, scaled)
        return cap

    def _cap_if_over_target(self) -> bool:
        cap, predicted, target = self._cap(), self.duration.predict(self.size), self.settings.target_batch_seconds
        if cap is None or predicted is None:
            return False
        predicted = max(predicted, self.history.wall(self.size, self.tuning.min_samples) or 0.0)
        new = max(self.bounds[0], cap)
        if predicted <= target * (1 + self.tuning.dead_band) or new >= self.size:
            return False
        # Mid-search, the best size measured so far may lie below the cap: end the search there.
        peak = self.history.peak(self._searched) if self.phase is not Phase.HOLD else None
        over = f"batch would take ~{predicted:.1f} s > target {target:g} s"
        if peak is not None and peak[0] < new:
            self._settle(peak[0], f"{over} -> {peak[1]}")
        else:
            self._settle(new, f"{over} -> cap at {new}")
        self._direction = -1
        return True

    # -- search, hold, probe --------------------------------------------------------------

    def _search_step(self) -> None:
        level, ref = self.history.level(self.size), self.history.get(self._ref)
        gain = level.throughput / ref.throughput - 1 if ref and level.samples else None
        # The first size is compared with nothing, only sets the reference: min_samples do (waiting for
        # min_seconds too cost the real loop ~8 short batches at its start size).
        ready = level.samples >= self.tuning.min_samples if gain is None else self._measured(level, gain)
        if not ready:
            self._say(f"measuring {self.size} ({level.samples} batches, {level.seconds:.1f} s)")
            return
        if gain is None:
            self._step(f"{level.throughput:.0f}/s at {self.size}")
            return
        if gain > self.tuning.dead_band:
            self._step(f"throughput up {gain:.0%}", leap=self._steep(gain, self._ref))
            return
        cpu = self._readings.cpu_fraction if self._readings else None
        smaller = self._ref
        flat = gain >= -self.tuning.dead_band
        if self._direction > 0 and flat and smaller is not None and cpu is not None and cpu > self.tuning.cpu_high:
            self._settle(smaller, f"cpu {cpu:.2f} saturated and throughput flat ({gain:+.0%}) -> back to {smaller}")
            return
        trend = "down" if gain < -self.tuning.dead_band else "flat"
        if smaller is not None and max(smaller, self.size) > self.tuning.step * 1.01 * min(smaller, self.size):
            # After a leap the peak may lie between the two sizes: measure one in between first.
            middle = round(math.sqrt(smaller * self.size))
            self.phase = Phase.REFINE
            self._move(middle)
            self._searched.append(middle)
            self._say(f"throughput {trend} ({gain:+.0%}) after a leap -> try {middle} in between", moved=True)
            return
        self._settle_at_peak(f"throughput {trend} ({gain:+.0%})")

    def _refine_step(self) -> None:
        level = self.history.level(self.size)
        if not self._measured(level):
            self._say(f"measuring {self.size} ({level.samples} batches, {level.seconds:.1f} s)")
            return
        self._settle_at_peak(f"{level.throughput:.0f}/s at {self.size}")

    def _settle_at_peak(self, why: str) -> None:
        best, how = self.history.peak(self._searched) or (self.size, f"hold {self.size}")
        self._settle(best, f"{why} -> {how}")

    def _step(self, why: str, leap: bool = False) -> None:
        """Take the next search step in the current direction (two at once to `leap`), or settle if blocked."""
        nxt, blocked = self._neighbour(self._direction, self.tuning.step ** (2 if leap else 1))
        if nxt is None:
            self._settle(self.size, f"{why}, {blocked} -> hold {self.size}")
            return
        self._ref = self.size
        self._move(nxt)
        self._searched.append(nxt)
        self._say(f"{why} -> {'climb' if self._direction > 0 else 'descend'} to {nxt}", moved=True)

    def _hold_step(self) -> None:
        self._held += 1
        level = self.history.level(self.size)
        if self._held < self._hold_for:
            left = self._hold_for - self._held
            self._say(f"hold {self.size} ({level.throughput:.0f}/s; next probe in {left} batches)")
            return
        self._held = 0
        if self._after_backoff:  # back-offs that come back after each recovery wait longer each time
            self._recovery = min(2 * self._recovery, self.tuning.max_probe_every)
            self._after_backoff = False
        for direction in (self._direction, -self._direction):
            nxt, _ = self._neighbour(direction)
            if nxt is not None:
                break
        else:
            self._say(f"no other size within bounds and target -> hold {self.size}")
            return
        held, way = self.size, "up" if direction > 0 else "down"
        self._direction, self._ref, self.phase = direction, held, Phase.PROBE
        self._move(nxt)
        self._say(f"held {held} for {self._hold_for} batches -> probe {way} to {nxt}", moved=True)

    def _probe_step(self) -> None:
        held = self._ref
        level, ref = self.history.level(self.size), self.history.get(held)
        if held is None or ref is None:
            self._settle(self.size, f"nothing to compare the probe with -> hold {self.size}")
            return
        gain = level.throughput / ref.throughput - 1 if level.samples else None
        if gain is None or not self._measured(level, gain):
            self._say(f"probing {self.size} ({level.samples} batches, {level.seconds:.1f} s)")
            return
        if gain > self.tuning.dead_band:
            self._probe_every = self.tuning.probe_every
            self.phase, self._searched = Phase.SEARCH, [held, self.size]
            self._step(f"probe of {self.size} gained {gain:.0%}", leap=self._steep(gain, held))
            return
        self._probe_every = min(2 * self._probe_every, self.tuning.max_probe_every)
        self._settle(held, f"probe of {self.size}: throughput {gain:+.0%} -> back to {held}")
        self._direction = -self._direction

    # -- helpers --------------------------------------------------------------------------

    def _search_from(self, size: int, why: str) -> None:
        self.history.forget()
        self.phase, self._ref, self._searched, self._direction = Phase.SEARCH, None, [size], 1
        self._move(size, fresh=True)
        self._say(why, moved=True)

    def _settle(self, size: int, why: str) -> None:
        """Hold `size` (its measurements kept) for the probe interval."""
        self.phase, self._held, self._hold_for = Phase.HOLD, 0, self._probe_every
        self._move(size, fresh=False)
        self._say(why, moved=True)

    def _move(self, size: int, fresh: bool = True) -> None:
        if fresh:
            self.history.forget(size)  # measure it anew, under today's conditions
        self.size = size

    def _neighbour(self, direction: int, stride: float | None = None) -> tuple[int | None, str]:
        """The size a stride away (one step by default), or None and why, when a bound or the cap blocks it."""
        low, high = self.bounds
        stride = stride or self.tuning.step
        if direction < 0:
            down = max(low, min(self.size - 1, math.floor(self.size / stride)))
            return (down, "") if down < self.size else (None, f"at minimum {low}")
        up = min(high, max(self.size + 1, math.ceil(self.size * stride)))
        cap = self._cap()
        if cap is not None and cap < up:
            up = cap
            if up <= self.size:
                return None, f"a bigger batch would take > target {self.settings.target_batch_seconds:g} s"
        return (up, "") if up > self.size else (None, f"at maximum {high}")

    def _steep(self, gain: float, ref: int | None) -> bool:
        """Whether throughput grows with size as fast as `leap_gain` per step (scaled to the step taken)."""
        if ref is None or ref == self.size:
            return False
        elasticity = math.log1p(gain) / abs(math.log(self.size / ref))
        return elasticity > math.log1p(self.tuning.leap_gain) / math.log(self.tuning.step)

    def _measured(self, level: Level, gain: float | None = None) -> bool:
        """Enough batches at this size to judge it: min_samples, and min_seconds unless they are many
        or the gain is beyond doubt."""
        t = self.tuning
        enough = level.seconds >= t.min_seconds or level.samples >= 4 * t.min_samples
        return level.samples >= t.min_samples and (enough or (gain is not None and gain > t.decisive_gain))

    def _say(self, reason: str, moved: bool = False) -> None:
        """Note why; a move's reason is kept (and joined with later moves') until a plan reports it."""
        if moved:
            self._move_note = f"{self._move_note}; {reason}" if self._move_note else reason
        self._note = reason
