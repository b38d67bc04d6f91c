"""A worker's local balance of a shared budget: the slices it took from the database, each with an end.

Units are spent from the oldest slice first; a slice's units left unused at its end are dropped,
never given back. That is what keeps the database's bound true at the service: a unit is spent
(its call started) no later than `SLICE_LIFE` after the database granted it. Pure: times are given.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

Cost = dict[str, float]  # units of each kind ("requests", "tokens") one call needs


@dataclass
class Slice:
    ends: float  # monotonic seconds
    units: Cost


@dataclass
class Balance:
    """What a worker holds of each kind, slice by slice."""

    slices: deque[Slice] = field(default_factory=deque)

    def held(self, kind: str, now: float) -> float:
        self._drop_ended(now)
        return sum(s.units.get(kind, 0.0) for s in self.slices)

    def covers(self, cost: Cost, now: float) -> bool:
        return all(self.held(kind, now) >= units for kind, units in cost.items())

    def spend(self, cost: Cost, now: float) -> bool:
        """Take `cost` from the oldest slices first; False (nothing taken) when they do not hold it."""
        if not self.covers(cost, now):
            return False
        for kind, units in cost.items():
            for piece in self.slices:
                spent = min(units, piece.units.get(kind, 0.0))
                if spent > 0:
                    piece.units[kind] -= spent
                    units -= spent
                if units <= 0:
                    break
        while self.slices and all(v <= 1e-9 for v in self.slices[0].units.values()):
            self.slices.popleft()
        return True

    def add(self, units: Cost, ends: float) -> None:
        if any(v > 0 for v in units.values()):
            self.slices.append(Slice(ends, dict(units)))

    def _drop_ended(self, now: float) -> None:
        while self.slices and self.slices[0].ends <= now:
            self.slices.popleft()
