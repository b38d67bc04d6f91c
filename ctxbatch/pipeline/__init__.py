"""The loop over the queue, the partition flow on the workers, the engine adapters, and the loop's events.

`ctxbatch.Pipeline` (ctxbatch/run.py) builds a run from these parts. The names load on first use:
the loop imports distributed (seconds on a busy machine), which a look at a report should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ctxbatch.pipeline.engine import Engine, batch_engine, resolve_engine
    from ctxbatch.pipeline.events import Subscriber
    from ctxbatch.pipeline.isolate import PartitionOutcome, run_partition
    from ctxbatch.pipeline.loop import Loop
    from ctxbatch.pipeline.report import RunReport

_HOMES = {
    "Engine": "engine",
    "batch_engine": "engine",
    "resolve_engine": "engine",
    "Subscriber": "events",
    "PartitionOutcome": "isolate",
    "run_partition": "isolate",
    "Loop": "loop",
    "RunReport": "report",
}


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(importlib.import_module(f"ctxbatch.pipeline.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'ctxbatch.pipeline' has no attribute {name!r}")


__all__ = [
    "Engine",
    "Loop",
    "PartitionOutcome",
    "RunReport",
    "Subscriber",
    "batch_engine",
    "resolve_engine",
    "run_partition",
]
