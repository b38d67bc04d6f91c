"""How big the next batch is and how it is split: the one interface the scheduler loop calls.

Once per batch the loop reads the load (`resources.read(client, store, in_flight)`), asks
`sizer.plan(readings)` for a size and a partition count, and after the batch tells the sizer
what happened (`sizer.observe(Observation(...))`); `sizer.decisions` says why each size was chosen.
Between runs a sizer keeps what it learned: `sizer.remember()` -> a `Memory` -> `sizer.resume(memory)`.
"""

from ctxbatch.sizing import resources
from ctxbatch.sizing.base import Decision, Observation, Plan, Readings, Sizer
from ctxbatch.sizing.choose import resolve_sizer
from ctxbatch.sizing.dynamic import DynamicSizer, Tuning
from ctxbatch.sizing.fixed import FixedSizer
from ctxbatch.sizing.memory import Memory
from ctxbatch.sizing.scaling import WorkerScaler, wanted_workers
from ctxbatch.sizing.split import partitions_for

__all__ = [
    # The interface
    "Decision",
    "Memory",
    "Observation",
    "Plan",
    "Readings",
    "Sizer",
    "resolve_sizer",
    # Strategies
    "DynamicSizer",
    "FixedSizer",
    "Tuning",
    # Parts
    "WorkerScaler",
    "partitions_for",
    "resources",
    "wanted_workers",
]
