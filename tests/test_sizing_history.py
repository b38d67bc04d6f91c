"""A sizer that remembers (issue 22), on the real loop: the embedded server, a real LocalCluster, the CLI.

A run of the dynamic sizer keeps what it learned in `sizing_history`, one document per engine,
queues and setup; the next run under the same key starts from it instead of searching up from
`batch_size`. test_sizing_memory.py drives the sizer's side with synthetic batches.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

from conftest import DYNAMIC_RUN, Commands, Invoke
from distributed import Client

from ctxbatch import ContextStore, Pipeline
from ctxbatch.config import SIZING_HISTORY_DAYS, load_config
from ctxbatch.io import utcnow
from ctxbatch.pipeline.cluster import ClusterStart
from ctxbatch.pipeline.remember import KEEP_EVERY_SECONDS

CLUSTER = {"threads_per_worker": 2}
ENGINE = "tests.engines:nap"  # sleeps payload["sleep"] seconds: its speed is the payload's
CONTEXTS = 400
TARGET_SECONDS = 0.5

DYNAMIC: dict[str, Any] = {**DYNAMIC_RUN, "worker": {**DYNAMIC_RUN["worker"], "target_batch_seconds": TARGET_SECONDS}}


def dynamic(**worker: Any) -> dict[str, Any]:
    settings = copy.deepcopy(DYNAMIC)
    settings["worker"].update(worker)
    return settings


def contexts(count: int = CONTEXTS, sleep: float = 0.0) -> list[dict[str, Any]]:
    return [{"payload": {"i": i, "sleep": sleep}} for i in range(count)]


def first_run(store: ContextStore, client: Client) -> int:
    """A run of the cheap engine from batch_size 10 over CONTEXTS contexts; the size it ended on."""
    store.submit(contexts())
    pipeline = Pipeline(ENGINE, dynamic(), store, client)
    pipeline.run(until_empty=True)
    ended = pipeline.sizer.remember()
    assert ended is not None
    return ended.size


def test_a_second_run_starts_at_the_size_the_first_ended_on(store: ContextStore, client: Client) -> None:
    # Given a first run that climbed from 10 (each batch of the cheap engine is mostly fixed cost)
    ended = first_run(store, client)
    kept = store.sizing_history()
    assert ended > 10
    assert [(entry["engine"], entry["queues"], entry["size"]) for entry in kept] == [(ENGINE, ["default"], ended)]

    # When a second run of the same engine on the same queue starts
    store.submit(contexts())
    report = Pipeline(ENGINE, dynamic(), store, client).run(until_empty=True)

    # Then its first batch is the size the first run ended on, and its decision says why
    assert report.decisions[0].size == ended
    assert "an earlier run" in report.decisions[0].reason


def test_a_run_that_claims_while_its_own_cluster_starts_starts_from_the_history_too(store: ContextStore) -> None:
    # Given a first run on a cluster of its own (whose first batch is claimed while the cluster starts)
    settings = load_config({**dynamic(), "dask": {"processes": False, "n_workers": 1, **CLUSTER}})
    store.submit(contexts())
    first = Pipeline(ENGINE, settings, store, ClusterStart(settings.dask))
    first.run(until_empty=True)
    ended = first.sizer.remember()
    assert ended is not None and ended.size > 10

    # When a second such run starts
    store.submit(contexts())
    report = Pipeline(ENGINE, settings, store, ClusterStart(settings.dask)).run(until_empty=True)

    # Then its first batch, claimed before its cluster was up, is the size the first run ended on
    assert report.decisions[0].size == ended.size
    assert "an earlier run" in report.decisions[0].reason


def test_a_run_keeps_what_it_learned_every_few_seconds_not_every_batch(
    watched: ContextStore, commands: Commands, client: Client
) -> None:
    watched.submit(contexts(sleep=0.001))

    report = Pipeline(ENGINE, dynamic(), watched, client).run(until_empty=True)

    writes = commands.on("update", "sizing_history")
    reads = commands.on("find", "sizing_history")
    assert report.batches > 5
    assert 1 <= len(writes) <= 2 + report.wall_seconds / KEEP_EVERY_SECONDS  # the first batch's, timed ones, the end
    assert len(reads) == 1  # once, when the run started


def test_history_of_another_engine_queue_or_setup_is_not_used(store: ContextStore, client: Client) -> None:
    # Given a first run of the cheap engine on the default queue, remembered
    ended = first_run(store, client)
    assert ended > 10

    # When runs of another engine, on another queue, and with another setup start
    store.submit(contexts(20))
    other_engine = Pipeline("tests.engines:echo", dynamic(), store, client).run(until_empty=True)
    store.submit(contexts(20), queue="other")
    other_queue = Pipeline(ENGINE, dynamic(queues=["other"]), store, client).run(until_empty=True)
    store.submit(contexts(20))
    other_setup = Pipeline(ENGINE, dynamic(max_parallel_batches=2), store, client).run(until_empty=True)

    # Then each searches from batch_size 10, and each keeps its own history beside the first one's
    for report in (other_engine, other_queue, other_setup):
        assert report.decisions[0].size == 10
        assert "earlier run" not in report.decisions[0].reason
    assert len(store.sizing_history()) == 4
    assert ended in [entry["size"] for entry in store.sizing_history(ENGINE, "default")]


def test_a_run_with_history_moves_away_from_it_when_the_engine_got_slower(store: ContextStore, client: Client) -> None:
    # Given a first run of the cheap engine that ended on a size
    ended = first_run(store, client)

    # When the same engine now costs so much per context that a batch of that size takes 3x the target
    # (the batch's two partitions run side by side, one per thread)
    sleep = 3 * TARGET_SECONDS * 2 / ended
    store.submit(contexts(2 * ended, sleep=sleep))
    report = Pipeline(ENGINE, dynamic(), store, client).run(until_empty=True)

    # Then it starts at the remembered size, and comes down to fit the target duration
    sizes = [decision.size for decision in report.decisions]
    assert sizes[0] == ended
    assert min(sizes[1:]) < ended / 2
    assert any("> target" in decision.reason for decision in report.decisions)


def test_with_history_off_a_run_neither_reads_nor_keeps_it(store: ContextStore, client: Client) -> None:
    # Given a run with sizing_history off: nothing is kept
    store.submit(contexts())
    Pipeline(ENGINE, dynamic(sizing_history=False), store, client).run(until_empty=True)
    assert store.sizing_history() == []

    # ... and a run with it on, which keeps a size
    ended = first_run(store, client)
    [kept] = store.sizing_history()

    # When a run with it off starts
    store.submit(contexts(20))
    report = Pipeline(ENGINE, dynamic(sizing_history=False), store, client).run(until_empty=True)

    # Then it searches from batch_size 10, as before history, and leaves the history as it was
    assert report.decisions[0].size == 10
    assert "earlier run" not in report.decisions[0].reason
    assert store.sizing_history() == [kept]
    assert kept["size"] == ended


def test_history_older_than_its_days_is_not_read_and_goes(store: ContextStore) -> None:
    store.keep_sizing("recent", {"engine": "e", "queues": ["default"], "size": 640, "state": "held"})
    old = utcnow() - dt.timedelta(days=SIZING_HISTORY_DAYS, minutes=1)
    store.db["sizing_history"].insert_one({"_id": "old", "engine": "e", "queues": ["default"], "updated_at": old})

    assert store.recall_sizing("old") is None
    assert store.recall_sizing("recent") is not None
    assert [entry["_id"] for entry in store.sizing_history()] == ["recent"]


def keep_three(store: ContextStore) -> None:
    setup = {"cluster": "2 threads", "max_parallel_batches": 2, "target_batch_seconds": 3.0}
    for key, engine, queues, size in (
        ("a", "text", ["default"], 1235),
        ("b", "text", ["bulk"], 80),
        ("c", "echo", ["default", "bulk"], 640),
    ):
        state = "searching" if size == 640 else "held"
        fields = {"engine": engine, "queues": queues, "setup": setup, "size": size, "state": state}
        store.keep_sizing(key, {**fields, "throughput": 700.0})


def test_ctxbatch_sizing_shows_what_each_engine_starts_from(store: ContextStore, ctxbatch: Invoke) -> None:
    keep_three(store)

    shown = ctxbatch("sizing")
    as_json = ctxbatch("sizing", "--engine", "text", "--json")

    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[0].split()[:5] == ["engine", "queues", "size", "state", "contexts/s"]
    assert sorted(line.split()[:4] for line in lines[1:]) == [
        ["echo", "default,bulk", "640", "searching"],
        ["text", "bulk", "80", "held"],
        ["text", "default", "1235", "held"],
    ]
    assert "2 threads; 2 batches in flight; target 3.0 s" in lines[1]
    assert sorted(entry["size"] for entry in json.loads(as_json.stdout)) == [80, 1235]


def test_ctxbatch_sizing_forget_forgets_what_it_names(store: ContextStore, ctxbatch: Invoke) -> None:
    keep_three(store)

    by_queue = ctxbatch("sizing", "--forget", "--queue", "bulk", "--engine", "text")
    left = sorted(entry["_id"] for entry in store.sizing_history())
    everything = ctxbatch("sizing", "--forget")

    assert by_queue.exit_code == 0 and by_queue.stderr.strip() == "forgot 1 remembered batch size"
    assert left == ["a", "c"]
    assert everything.stderr.strip() == "forgot 2 remembered batch sizes"
    assert store.sizing_history() == []
    assert ctxbatch("sizing").stderr.startswith("no batch size remembered")
