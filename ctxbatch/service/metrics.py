"""Prometheus metrics of the HTTP API: submissions, requests and their latency, and the queue.

Each app has its own registry, so several apps in one process (tests) never collide. The queue's
metrics are the database's (ctxbatch.monitoring.database), the same as every loop serves.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ctxbatch.io import ContextStore
from ctxbatch.monitoring.database import DatabaseCollector


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
        self.registry.register(DatabaseCollector(store))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
