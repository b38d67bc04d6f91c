"""The loop's events: a user subscriber hears every kind, in order; a raising one is skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import small_run
from distributed import Client
from subscribers import Recorder

from ctxbatch import ConfigError, ContextStore, Pipeline
from ctxbatch.pipeline.events import HOOKS, BatchCritical, LeasesReaped, PartitionFinished


# Batches of 4, one at a time; a context retry, so the reaped contexts (tried once by the dead
# loop) run again.
def settings() -> dict[str, Any]:
    return small_run(batch_size=4, max_parallel_batches=1, retry={"context_retries": 1})


def test_a_subscriber_hears_every_event_of_a_run_in_order(store: ContextStore, client: Client, tmp_path: Path) -> None:
    # Given 8 contexts whose first batch meets a critical error once, and 2 more under another
    # loop's lease that has already run out (so the reaper has work)
    store.submit([{"payload": {"i": i, "marker_dir": str(tmp_path)}} for i in range(8)])
    store.claim(2, "a-loop-that-died", lease_seconds=0.001)
    recorder = Recorder()
    # When a run drains the queue
    pipeline = Pipeline("tests.engines:critical_first_time", settings(), store, client, subscribers=[recorder])
    report = pipeline.run(until_empty=True)
    hooks = recorder.hooks()
    # Then every kind of event came (but an async engine's limit: test_window.py hears that one), the run's
    # start first and its end last
    assert set(hooks) == set(HOOKS) - {"on_engine_concurrency"}
    ends = (hooks[0], hooks[-1], hooks.count("on_run_started"), hooks.count("on_run_finished"))
    assert ends == ("on_run_started", "on_run_finished", 1, 1)
    assert hooks.index("on_sizing_decision") < hooks.index("on_batch_claimed")
    assert recorder.events("on_leases_reaped") == [LeasesReaped(2)]
    # A batch's partitions and its end come after its claim; the critical one is retried
    position = {(hook, getattr(event, "seq", None)): i for i, (hook, event) in enumerate(recorder.seen)}
    for claimed in recorder.events("on_batch_claimed"):
        assert position[("on_batch_claimed", claimed.seq)] < position[("on_batch_finished", claimed.seq)]
    for part in recorder.events("on_partition_finished"):
        assert position[("on_batch_claimed", part.seq)] < position[("on_partition_finished", part.seq)]
    (critical,) = recorder.events("on_batch_critical")
    assert isinstance(critical, BatchCritical)
    assert (critical.error["type"], critical.retries_left, critical.failed) == ("CriticalError", 1, 0)
    # And the partitions' counts add up to the report's
    parts: list[PartitionFinished] = recorder.events("on_partition_finished")
    assert sum(p.completed for p in parts) == report.completed == 8
    assert recorder.events("on_run_finished")[0].report is report


def test_a_raising_subscriber_named_by_module_callable_is_logged_and_skipped(
    store: ContextStore, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    store.submit([{"payload": {"i": i}} for i in range(10)])
    recorder = Recorder()
    with caplog.at_level("ERROR", logger="ctxbatch.pipeline"):
        report = Pipeline(
            "tests.engines:echo", settings(), store, client, subscribers=["tests.subscribers:Raising", recorder]
        ).run(until_empty=True)
    # The run completed, the subscriber after the raising one still heard everything
    assert report.completed == 10
    assert recorder.hooks()[-1] == "on_run_finished"
    raised = {
        r.getMessage().rsplit(" in ", 1)[1].split(";")[0] for r in caplog.records if "raised in" in r.getMessage()
    }
    assert {"on_run_started", "on_batch_claimed", "on_partition_finished", "on_run_finished"} <= raised


def test_a_subscriber_name_that_does_not_resolve_is_refused(store: ContextStore) -> None:
    with pytest.raises(ConfigError, match=r"subscriber 'no_such_module_xyz:Thing': cannot import"):
        Pipeline("tests.engines:echo", settings(), store, subscribers=["no_such_module_xyz:Thing"])
