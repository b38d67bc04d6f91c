"""A partition on the wire: one find to load it, one bulk write to settle it (plus the batch's timestamp)."""

from __future__ import annotations

from conftest import Commands
from test_claims import expire

from ctxbatch.config import RetrySettings
from ctxbatch.io import ContextStore
from ctxbatch.pipeline.engine import Engine, resolve_engine
from ctxbatch.pipeline.fate import RetryPolicy
from ctxbatch.pipeline.partition import Loaded, PartitionJob, process_with

WRITES = ("insert", "update", "delete", "findAndModify")
POLICY = RetryPolicy(RetrySettings(context_retries=0))


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


def _as_is(engine: Engine) -> Engine:
    return engine


def test_a_partitions_usage_goes_to_its_batch_in_the_write_that_stamps_it(
    watched: ContextStore, commands: Commands
) -> None:
    # Given a partition of 8 contexts whose results report usage
    batch_id = watched.submit([{"payload": {"i": i}} for i in range(8)])
    part = watched.claim(8, "loop")
    job = PartitionJob(resolve_engine("tests.engines:openai_answer"), watched.uri, watched.database_name, POLICY, 4)
    loaded = Loaded.of(watched.load(part))
    # When it is processed and written back
    commands.clear()
    finished = process_with(watched, _as_is, loaded, part, job)
    # Then its event carries the usage, which its batch now holds, added by the one write to the batches
    usage = {"input": sum(10 + i for i in range(8)), "output": sum(i for i in range(8) if i % 4 != 3)}
    usage["total"] = usage["input"] + usage["output"]
    assert finished.usage == watched.batch_status(batch_id)["usage"] == usage
    (touch,) = commands.on("update", "batches")
    assert touch["updates"][0]["u"]["$inc"] == {f"usage.{kind}": n for kind, n in usage.items()}


def test_a_partitions_results_lost_to_another_lease_add_no_usage(store: ContextStore) -> None:
    # Given a partition loaded under a lease that then ran out for half of it (renewed for the other
    # half), was reaped, and claimed by another loop
    batch_id = store.submit([{"payload": {"i": i}} for i in range(4)])
    late = store.claim(4, "loop-a", lease_seconds=0.5)
    loaded = Loaded.of(store.load(late))
    assert store.renew(late.subset(late.ids[:2]), lease_seconds=60) == 2
    expire(late)
    assert store.reap_expired() == 2
    assert len(store.claim(4, "loop-b")) == 2
    job = PartitionJob(resolve_engine("tests.engines:openai_answer"), store.uri, store.database_name, POLICY, 4)
    # When it is processed and written back
    finished = process_with(store, _as_is, loaded, late, job)
    # Then only the two it still held count, in its event and in its batch
    held = [store.get_context(cid)["payload"]["i"] for cid in late.ids[:2]]
    assert (finished.completed, finished.lost) == (2, 2)
    assert finished.usage == store.batch_status(batch_id)["usage"]
    assert finished.usage["input"] == sum(10 + i for i in held)
