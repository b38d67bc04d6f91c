"""The scheduler loop and the engine adapters."""

from ctxbatch.pipeline.engine import Engine, batch_engine, resolve_engine
from ctxbatch.pipeline.isolate import PartitionOutcome, run_partition
from ctxbatch.pipeline.report import RunReport
from ctxbatch.pipeline.scheduler import Pipeline

__all__ = ["Engine", "PartitionOutcome", "Pipeline", "RunReport", "batch_engine", "resolve_engine", "run_partition"]
