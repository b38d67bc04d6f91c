"""A partition on the wire: one find to load it, one bulk write to settle it (plus the batch's timestamp)."""

from __future__ import annotations

from conftest import Commands

from ctxbatch.config import RetrySettings
from ctxbatch.io import ContextStore
from ctxbatch.pipeline.engine import Engine, resolve_engine
from ctxbatch.pipeline.fate import RetryPolicy
from ctxbatch.pipeline.partition import Loaded, PartitionJob, process_with

WRITES = ("insert", "update", "delete", "findAndModify")


def test_a_partition_loads_in_one_find_and_writes_back_in_one_bulk_write(
    watched: ContextStore, commands: Commands
) -> None:
    # Given one partition of 20 contexts from a claim of 40, two of which the engine fails for good
    watched.submit([{"payload": {"i": i, "bad": i % 10 == 0}} for i in range(40)])
    part = watched.claim(40, "loop").split(2)[0]
    policy = RetryPolicy(RetrySettings(context_retries=0))
    engine = resolve_engine("tests.engines:fail_when_flagged")
    job = PartitionJob(engine, watched.uri, watched.database_name, policy, concurrency=4)
    # When it is loaded
    commands.clear()
    loaded = Loaded.of(watched.load(part))
    # Then that is one find
    assert (commands.names, len(loaded.frame)) == (["find"], 20)
    # And when it is processed and written back
    commands.clear()

    def ready(engine: Engine) -> Engine:
        return engine

    finished = process_with(watched, ready, loaded, part, job)
    assert (finished.completed, finished.failed) == (18, 2)
    # Then its contexts were written in one bulk write of 20 updates, plus at most the batch's timestamp
    (bulk,) = commands.on("update")
    assert len(bulk["updates"]) == 20
    touches = commands.on("update", "batches")
    assert len(touches) <= 1
    writes = [name for name in commands.names if name in WRITES]
    assert len(writes) == 1 + len(touches)
    # (The only read is the failed contexts' documents, which a fenced replace needs on nx-27017.)
    assert commands.names.count("find") <= 1
