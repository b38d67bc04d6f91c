"""Prometheus metrics of the HTTP API: queue lengths, submissions, requests and their latency.

Each app has its own registry, so several apps in one process (tests) never collide. Queue
lengths are read from the database when scraped, not kept in the process: any number of API
processes and scheduler loops then report the same queue.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pymongo
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pymongo.errors import PyMongoError

from ctxbatch.io import ContextStore, Status

log = logging.getLogger("ctxbatch.service")

QUEUE_STATUSES = (Status.PENDING, Status.PROCESSING)
SCRAPE_DB_TIMEOUT_SECONDS = 5.0


class QueueCollector(Collector):
    """`ctxbatch_queue_length{level, status}` for waiting and running contexts, read at scrape time."""

    def __init__(self, store: ContextStore) -> None:
        self.store = store

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "ctxbatch_queue_length",
                "Contexts pending or processing, by priority level and status.",
                labels=["level", "status"],
            ),
            GaugeMetricFamily("ctxbatch_database_up", "1 when the database answered this scrape, else 0."),
        )

    def describe(self) -> Iterator[Metric]:
        # Without describe(), registering would call collect() and so the database.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        queue, up = self._families()
        try:
            with pymongo.timeout(SCRAPE_DB_TIMEOUT_SECONDS):
                lengths = {status.value: self.store.queue_length(status) for status in QUEUE_STATUSES}
        except PyMongoError as exc:
            log.warning("metrics: the database did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        for status, by_level in lengths.items():
            for level, length in by_level.items():
                queue.add_metric([level, status], length)
        up.add_metric([], 1)
        yield queue
        yield up


class ServiceMetrics:
    """The registry of one app and the metrics its routes and middleware update."""

    def __init__(self, store: ContextStore) -> None:
        self.registry = CollectorRegistry()
        self.submitted = Counter(
            "ctxbatch_contexts_submitted", "Contexts accepted through the HTTP API.", registry=self.registry
        )
        self.requests = Counter(
            "ctxbatch_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ctxbatch_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer.",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(QueueCollector(store))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
