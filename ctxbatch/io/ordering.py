"""Each queue's claim order: the aging its loops run with, recorded where every submission reads it;
and how many submissions naming tenants it had, which tells loops to count its tenants again.

A context's place in the claim is its `due` (io/schema.py `claim_due`: created + priority x aging),
fixed when it is submitted, so that the claim costs one index range however it is ordered. But
`worker.priorities.aging_seconds` is a loop's setting, and submitters (`ctxbatch submit`, the HTTP
API, `store.submit` in a notebook) need not share the loop's config. So a loop records its aging
for its queues when it starts, one document per queue in `queues`, and every submission reads its
queue's document: one `find_one` per submission, and every submitter orders a queue the same way.

A change (a loop started with another aging) orders what is submitted after it; contexts already
waiting keep their `due`, retried ones too. The two orders mix without starving anything: a
context ordered under strict priority (no aging) sorts after every aged context of a priority above
0 and among them by age at priority 0, exactly as strict priority would place it; the aged ones
keep aging. A queue no loop has recorded is strict priority, as before aging existed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ctxbatch.io.connection import Connection
from ctxbatch.io.schema import eq

log = logging.getLogger("ctxbatch.io")


class QueueOrders:
    """The `queues` collection: the aging of each queue, as the last loop started on it set it."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def record(self, queues: Sequence[str], aging_seconds: float | None) -> list[str]:
        """Order these queues' future submissions by `aging_seconds` (None: strict priority); the queues
        whose order that changed (a queue never recorded was strict)."""
        changed = []
        for queue in dict.fromkeys(queues):
            before = self.connection.queues.find_one({"_id": eq(queue)}, {"aging_seconds": 1})
            was = None if before is None else before.get("aging_seconds")
            if before is not None and was == aging_seconds:
                continue
            self.connection.queues.update_one(
                {"_id": eq(queue)},
                {"$set": {"aging_seconds": aging_seconds}, "$currentDate": {"updated_at": True}},
                upsert=True,
            )
            if was != aging_seconds:
                changed.append(queue)
            if before is not None:
                log.warning(
                    "queue %r: aging_seconds %s -> %s; contexts already waiting keep their order",
                    queue,
                    was,
                    aging_seconds,
                )
        return changed

    def note_tenants(self, queue: str) -> None:
        """A submission naming tenants is in the queue: loops count its tenants again (io/tenants.py)."""
        self.connection.queues.update_one({"_id": eq(queue)}, {"$inc": {"tenant_submissions": 1}}, upsert=True)

    def tenant_submissions(self, queue: str) -> int:
        """How many submissions naming tenants the queue has had: a change tells a loop to count again."""
        found = self.connection.queues.find_one({"_id": eq(queue)}, {"tenant_submissions": 1})
        return 0 if found is None else int(found.get("tenant_submissions", 0))

    def aging_of(self, queue: str) -> float | None:
        """The aging a submission to `queue` is ordered by: the recorded one, else None (strict priority)."""
        found = self.connection.queues.find_one({"_id": eq(queue)}, {"aging_seconds": 1})
        return None if found is None else found.get("aging_seconds")
