"""The scheduler loop, the partition flow on the workers, the engine adapters, and the loop's events.

The names load on first use: the scheduler imports distributed and the dashboard's bokeh (seconds
on a busy machine), which a run that finds nothing to do, or a look at a report, should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctxbatch.pipeline.engine import Engine, batch_engine, resolve_engine
    from ctxbatch.pipeline.events import Subscriber
    from ctxbatch.pipeline.isolate import PartitionOutcome, run_partition
    from ctxbatch.pipeline.report import RunReport
    from ctxbatch.pipeline.scheduler import Pipeline

_HOMES = {
    "Engine": "engine",
    "batch_engine": "engine",
    "resolve_engine": "engine",
    "Subscriber": "events",
    "PartitionOutcome": "isolate",
    "run_partition": "isolate",
    "RunReport": "report",
    "Pipeline": "scheduler",
}


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(importlib.import_module(f"ctxbatch.pipeline.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'ctxbatch.pipeline' has no attribute {name!r}")


__all__ = [
    "Engine",
    "PartitionOutcome",
    "Pipeline",
    "RunReport",
    "Subscriber",
    "batch_engine",
    "resolve_engine",
    "run_partition",
]
