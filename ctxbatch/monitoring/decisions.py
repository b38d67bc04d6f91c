"""Every loop's sizing decisions, published to the database so the dashboard shows the whole cluster.

A loop's `report.decisions` lives in its own process; the dashboard page runs in the scheduler's and
reads the database, so each loop writes its decisions (size, split, one-line reason) to the
`sizing_decisions` collection as it makes them: one small insert per batch.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pymongo import ASCENDING, DESCENDING

from ctxbatch.io import ContextStore, utcnow
from ctxbatch.pipeline.events import RunStarted, SizingDecision, Subscriber
from ctxbatch.sizing import Decision

log = logging.getLogger("ctxbatch.monitoring")

COLLECTION = "sizing_decisions"
# Kept this long; older ones are deleted now and then by the loops that write new ones.
KEEP = dt.timedelta(days=1)
TRIM_EVERY = 200


class DecisionLog(Subscriber):
    """Writes a loop's sizing decisions to the database (a built-in subscriber of every run)."""

    def __init__(self, store: ContextStore) -> None:
        self.collection = store.db[COLLECTION]
        self.owner = ""
        self._written = 0
        self._indexed = False

    def on_run_started(self, event: RunStarted) -> None:
        self.owner = event.owner
        if not self._indexed:
            self.collection.create_index([("at", ASCENDING)], name="at")
            self._indexed = True

    def on_sizing_decision(self, event: SizingDecision) -> None:
        self.record(event.decision)

    def record(self, decision: Decision) -> None:
        row = {"owner": self.owner, "at": utcnow(), **decision.as_row()}
        self.collection.insert_one(row)
        self._written += 1
        if self._written % TRIM_EVERY == 0:
            self.collection.delete_many({"at": {"$lt": utcnow() - KEEP}})


def recent_decisions(store: ContextStore, window_seconds: float, limit: int = 500) -> list[dict[str, Any]]:
    """The newest decisions of every loop within the window, oldest first (at most `limit`)."""
    since = utcnow() - dt.timedelta(seconds=window_seconds)
    found = store.db[COLLECTION].find({"at": {"$gte": since}}, {"_id": 0}).sort("at", DESCENDING).limit(limit)
    return list(reversed(list(found)))
