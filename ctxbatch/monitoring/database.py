"""The metrics read from the database at scrape time: one implementation for `serve` and every loop.

Nothing is kept in the process: any number of API processes and scheduler loops report the same
queue, because they all read it from the database when Prometheus scrapes them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pymongo
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pymongo.errors import PyMongoError

from ctxbatch.io import ContextStore, Status, utcnow

log = logging.getLogger("ctxbatch.monitoring")

QUEUE_STATUSES = (Status.PENDING, Status.PROCESSING)
SCRAPE_DB_TIMEOUT_SECONDS = 5.0
# Tenants labelled one by one (those with the most contexts waiting); the rest are summed under
# OTHER_TENANTS, so a database of a million tenants still makes a few series.
TENANT_LABELS = 10
OTHER_TENANTS = "(others)"


class DatabaseCollector(Collector):
    """`ctxbatch_queue_length{level,status}`, `ctxbatch_oldest_pending_seconds{level}`,
    `ctxbatch_contexts{status}`, `ctxbatch_database_up`, and `ctxbatch_tenant_queue_length{tenant,status}`
    while a named tenant has contexts pending or processing: the TENANT_LABELS tenants with the most,
    the others summed as tenant OTHER_TENANTS.

    Each scrape costs an indexed count per queue, level and status, one per status, an indexed
    `find_one` per queue and level, and per queue and status an index seek for a named tenant (an
    aggregate grouped by tenant only when there is one).
    """

    def __init__(self, store: ContextStore) -> None:
        self.store = store

    def _families(
        self,
    ) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "ctxbatch_queue_length",
                "Contexts pending or processing, by priority level and status.",
                labels=["level", "status"],
            ),
            GaugeMetricFamily(
                "ctxbatch_oldest_pending_seconds",
                "Age of the oldest pending context of each priority level (0 when none waits).",
                labels=["level"],
            ),
            GaugeMetricFamily(
                "ctxbatch_contexts",
                "Contexts in the database by status (expired: still pending when their batch's deadline passed).",
                labels=["status"],
            ),
            GaugeMetricFamily("ctxbatch_database_up", "1 when the database answered this scrape, else 0."),
            GaugeMetricFamily(
                "ctxbatch_tenant_queue_length",
                f"Contexts pending or processing by tenant: the {TENANT_LABELS} with the most, the others as "
                f"{OTHER_TENANTS!r}; absent while no named tenant has any.",
                labels=["tenant", "status"],
            ),
        )

    def describe(self) -> Iterator[Metric]:
        # Without describe(), registering would call collect() and so the database.
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        queue, oldest, by_status, up, by_tenant = self._families()
        try:
            with pymongo.timeout(SCRAPE_DB_TIMEOUT_SECONDS):
                lengths = {status.value: self.store.queue_length(status) for status in QUEUE_STATUSES}
                since = {level: self.store.oldest_pending(level=level) for level in self.store.levels}
                counts = self.store.status_counts()
                tenants = self.store.tenants_waiting(TENANT_LABELS)
        except PyMongoError as exc:
            log.warning("metrics: the database did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        for status, by_level in lengths.items():
            for level, length in by_level.items():
                queue.add_metric([level, status], length)
        now = utcnow()
        for level, created in since.items():
            oldest.add_metric([level], 0.0 if created is None else max((now - created).total_seconds(), 0.0))
        for status, count in counts.items():
            by_status.add_metric([status], count)
        up.add_metric([], 1)
        yield from (queue, oldest, by_status, up)
        if tenants:
            for tenant, waiting in tenants.items():
                for status, count in waiting.items():
                    by_tenant.add_metric([OTHER_TENANTS if tenant is None else tenant, status], count)
            yield by_tenant
