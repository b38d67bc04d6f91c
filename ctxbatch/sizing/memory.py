"""What a sizer learned, kept from one run to the next: the seed's "Processing History" input (issue 22).

A sizer says what the next run should start from (`Sizer.remember()`), and a new run's sizer is
given it before its first plan (`Sizer.resume()`). Where it is kept, and for which engine, queues
and setup, is the loop's business (pipeline/remember.py, io/sizing_history.py); this is only the
what. The dynamic sizer remembers one size: the one it held, or, when the run ended mid-search, the
best size the search had measured (`settled` False: the next run searches on from there). With the
size comes what was measured at it, so that a batch of today's engine that costs 3x more or less
per context than it did then starts the search again rather than trusting the past.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ctxbatch.sizing.history import Level

LEVEL_FIELDS = ("samples", "seconds", "throughput", "seconds_per_context")
# A memory's `state` in its document: a run held the size, or its search had reached it.
HELD, SEARCHING = "held", "searching"


@dataclass(frozen=True)
class Memory:
    """The size to start from, whether a run had settled on it, and its measurements (if any)."""

    size: int
    settled: bool
    level: Level | None = None

    def as_document(self) -> dict[str, Any]:
        measured = {name: getattr(self.level, name) if self.level else None for name in LEVEL_FIELDS}
        return {"size": self.size, "state": HELD if self.settled else SEARCHING, **measured}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Memory | None:
        """The memory a document holds; None when it holds no usable one (written by another version)."""
        size, state = document.get("size"), document.get("state")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1 or state not in (HELD, SEARCHING):
            return None
        samples, seconds, throughput, per_context = (_positive(document.get(name)) for name in LEVEL_FIELDS)
        if samples is None or seconds is None or throughput is None or per_context is None:
            return cls(size, state == HELD)
        return cls(size, state == HELD, Level(int(samples), seconds, throughput, per_context))


def _positive(value: Any) -> float | None:
    """The value as a float when it is a finite positive number, else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None
