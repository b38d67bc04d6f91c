"""Dynamic sizing inside a real run: the embedded server, a real LocalCluster, the scheduler loop.

The synthetic-workload tests in test_sizing.py check the controller's choices; this one checks that
the loop wires it up: it plans every batch with the sizer, measures what the batches did, and the
size it claims follows what the sizer learned (issue 4).
"""

from __future__ import annotations

from conftest import DYNAMIC_RUN
from distributed import Client

from ctxbatch import ContextStore, Pipeline

CLUSTER = {"threads_per_worker": 2}
CONTEXTS = 400


def test_a_dynamic_run_changes_its_batch_size_and_records_why(store: ContextStore, client: Client) -> None:
    # Given a few hundred contexts and a cheap engine, so every batch is mostly its fixed cost
    # (claim, Dask's compute, the write) and bigger batches are faster per context
    store.submit([{"payload": {"i": i}} for i in range(CONTEXTS)])

    # When a run with dynamic sizing starting at 10 drains the queue
    report = Pipeline("tests.engines:echo", DYNAMIC_RUN, store, client).run(until_empty=True)

    # Then it claimed batches of more than one size, and each decision says why
    assert report.completed == CONTEXTS
    assert report.decisions, "the run recorded no sizing decisions"
    assert len({d.size for d in report.decisions}) > 1
    assert all(d.reason.strip() for d in report.decisions)
