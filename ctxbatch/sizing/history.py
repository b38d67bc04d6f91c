"""The processing history the dynamic sizer climbs on: throughput measured per batch size.

Each size a batch was planned at keeps its own record: how many full batches ran at it, their
wall seconds in all, and a smoothed throughput and cost per context (the plain mean of the first
1/alpha batches, then an exponential moving average, so a size held for long follows today's
conditions). Only the most recent `MAX_SIZES` sizes are kept.

`peak()` answers where the best size lies among those a search visited. Near its best,
throughput is flat, so a x2 grid of sizes can miss the best by 40%; a parabola through the best
measured size and its two neighbours (log size against log throughput, where a saturating or
peaked curve is close to one) places it between them.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

MAX_SIZES = 32


@dataclass
class Level:
    """What the batches planned at one size did."""

    samples: int = 0
    seconds: float = 0.0
    throughput: float = 0.0
    seconds_per_context: float = 0.0

    def add(self, contexts: int, seconds: float, alpha: float) -> None:
        self.samples += 1
        self.seconds += seconds
        weight = max(1 / self.samples, alpha)
        self.throughput += weight * (contexts / seconds - self.throughput)
        self.seconds_per_context += weight * (seconds / contexts - self.seconds_per_context)


class History:
    """Levels by size, most recent `MAX_SIZES` sizes."""

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self._levels: OrderedDict[int, Level] = OrderedDict()

    def __repr__(self) -> str:
        shown = ", ".join(f"{size}: {level.throughput:.0f}/s" for size, level in self._levels.items())
        return f"<History {shown}>"

    def get(self, size: int | None) -> Level | None:
        """The size's level if it has any batch measured."""
        level = self._levels.get(size) if size is not None else None
        return level if level is not None and level.samples else None

    def level(self, size: int) -> Level:
        """The size's level, new and empty if it had none."""
        level = self._levels.get(size)
        if level is None:
            level = self._levels[size] = Level()
            while len(self._levels) > MAX_SIZES:
                self._levels.popitem(last=False)
        return level

    def wall(self, size: int, min_samples: int) -> float | None:
        """Seconds a batch of `size` takes by its own level's cost, once `min_samples` batches are in it."""
        level = self.get(size)
        return level.seconds_per_context * size if level and level.samples >= min_samples else None

    def forget(self, size: int | None = None) -> None:
        """Forget one size (to measure it anew) or, with None, all of them."""
        if size is None:
            self._levels.clear()
        else:
            self._levels.pop(size, None)

    def keep(self, size: int, level: Level) -> None:
        """Take up a level measured elsewhere (an earlier run's, sizing/memory.py)."""
        self._levels[size] = level

    def best(self, sizes: Iterable[int]) -> int | None:
        """The measured size of these with the highest throughput."""
        measured = [s for s in sizes if self.get(s)]
        return max(measured, key=lambda s: self._levels[s].throughput) if measured else None

    def peak(self, sizes: Iterable[int]) -> tuple[int, str] | None:
        """The best of these sizes, refined by the parabola's peak; and how it was found."""
        measured = sorted({s for s in sizes if self.get(s)})
        best = self.best(measured)
        if best is None:
            return None
        i = measured.index(best)
        if i == 0 or i == len(measured) - 1:
            return best, f"best measured {best}"
        trio = measured[i - 1 : i + 2]
        x = [math.log(s) for s in trio]
        y = [math.log(self._levels[s].throughput) for s in trio]
        top = vertex(x, y)
        if top is None:
            return best, f"best measured {best}"
        size = round(math.exp(min(max(top, x[0]), x[2])))
        return size, f"peak near {size} (fit through {trio[0]}, {trio[1]}, {trio[2]})"


def vertex(x: list[float], y: list[float]) -> float | None:
    """The x of the top of the parabola through three points, or None if it opens upward."""
    (x0, x1, x2), (y0, y1, y2) = x, y
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    if denom == 0:
        return None
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    return -b / (2 * a) if a < 0 else None
