"""A deferral (RetryLater) is told apart from a retry everywhere a run shows its counts."""

from __future__ import annotations

from conftest import small_run
from distributed import Client
from service_app import Script, serve

from ctxbatch import ContextStore, Pipeline, Subscriber
from ctxbatch.pipeline.events import PartitionFinished
from ctxbatch.pipeline.progress import Total, progress_line


class Partitions(Subscriber):
    def __init__(self) -> None:
        self.seen: list[PartitionFinished] = []

    def on_partition_finished(self, event: PartitionFinished) -> None:
        self.seen.append(event)


def test_a_deferral_reaches_the_report_the_events_the_progress_line_and_the_metrics(
    store: ContextStore, client: Client
) -> None:
    # Given a service that answers 429 to the first call of every payload, and retries that a deferral must not spend
    partitions = Partitions()
    with serve(Script(busy_first=1, retry_after="0")) as url:
        store.submit([{"payload": {"i": i, "url": url}} for i in range(12)])
        settings = small_run(retry={"context_retries": 1})
        pipeline = Pipeline("tests.engines:call_service", settings, store, client, subscribers=[partitions])
        # When the loop runs until the queue is empty
        report = pipeline.run(until_empty=True)
    # Then each context was deferred once and then completed: deferrals, not retries
    assert (report.completed, report.deferred, report.retried, report.failed) == (12, 12, 0, 0)
    # And the events carry them, as the report counted them
    assert sum(p.deferred for p in partitions.seen) == 12
    assert sum(p.retried for p in partitions.seen) == 0
    # And the progress line shows them apart from the retries, and not as failures
    assert progress_line(report, Total(12)).endswith("failures 0 (failed 0, retried 0)  deferred 12")
    # And the loop's metrics count them under their own outcome
    assert pipeline.monitor is not None
    registry = pipeline.monitor.metrics.registry
    assert registry.get_sample_value("ctxbatch_contexts_processed_total", {"outcome": "deferred"}) == 12
    assert registry.get_sample_value("ctxbatch_contexts_processed_total", {"outcome": "retried"}) == 0
