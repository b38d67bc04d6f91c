"""Every loop's sizing decisions, in the database so that the dashboard shows the whole cluster.

A loop's decisions live in its own process; the dashboard page runs in the scheduler's and reads
the database, so each loop writes its decisions (size, split, one-line reason) to the
`sizing_decisions` collection as it makes them: one small insert per batch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel

from ctxbatch.io.connection import Connection
from ctxbatch.io.schema import utcnow

# Kept this long; older ones are deleted now and then by the loops that write new ones.
KEEP = dt.timedelta(days=1)
TRIM_EVERY = 200
DECISION_INDEXES = [IndexModel([("at", ASCENDING)], name="at")]


class SizingDecisions:
    """The `sizing_decisions` collection: one document per decision, stamped with its loop and time."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._written = 0
        self._indexed = False

    def record(self, owner: str, row: Mapping[str, Any]) -> None:
        collection = self.connection.bound.sizing_decisions
        if not self._indexed:
            collection.create_indexes(DECISION_INDEXES)
            self._indexed = True
        collection.insert_one({"owner": owner, "at": utcnow(), **row})
        self._written += 1
        if self._written % TRIM_EVERY == 0:
            collection.delete_many({"at": {"$lt": utcnow() - KEEP}})

    def recent(self, window_seconds: float, limit: int) -> list[dict[str, Any]]:
        since = utcnow() - dt.timedelta(seconds=window_seconds)
        found = self.connection.bound.sizing_decisions.find({"at": {"$gte": since}}, {"_id": 0})
        return list(reversed(list(found.sort("at", DESCENDING).limit(limit))))
