"""The scheduler loop, the partition flow on the workers, the engine adapters, and the loop's events."""

from ctxbatch.pipeline.engine import Engine, batch_engine, resolve_engine
from ctxbatch.pipeline.events import Subscriber
from ctxbatch.pipeline.isolate import PartitionOutcome, run_partition
from ctxbatch.pipeline.report import RunReport
from ctxbatch.pipeline.scheduler import Pipeline

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
