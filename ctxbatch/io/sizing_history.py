"""What each engine's dynamic sizer learned, kept between runs: the `sizing_history` collection (issue 22).

One small document per engine, queues and setup (`_id`: the key a run computes, pipeline/remember.py):
the size a new run starts from, whether a run had settled on it, what was measured at it, and for
the reader the engine's name, the queues, the setup and when it was written. A loop writes it as
its sizer learns (at most every few seconds, and when the run ends) and reads it once, by `_id`,
when a run starts; what is older than `SIZING_HISTORY_DAYS` is not read (and that read deletes it).

Why a collection of its own rather than reading it back from `sizing_decisions`, which holds every
decision already: those are one insert per batch, kept a day, with a reason in words; finding a
run's last good size among them would need the engine and queues on each and an index over them,
and every index costs every insert on nx-27017. Here it costs one read per run and one update every
few seconds, on a collection of a few documents with only its `_id` index.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from pymongo.collection import Collection

from ctxbatch.config import SIZING_HISTORY_DAYS
from ctxbatch.io.connection import Connection
from ctxbatch.io.schema import eq, utcnow

MAX_AGE = dt.timedelta(days=SIZING_HISTORY_DAYS)


class SizingHistory:
    """The `sizing_history` collection: one document per engine, queues and setup."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    @property
    def _collection(self) -> Collection[dict[str, Any]]:
        return self.connection.db["sizing_history"]

    def recall(self, key: str, max_age: dt.timedelta = MAX_AGE) -> dict[str, Any] | None:
        """The document kept under `key`, unless it is older than `max_age`; what is older goes."""
        oldest = utcnow() - max_age
        self._collection.delete_many({"updated_at": {"$lt": oldest}})
        return self._collection.find_one({"_id": eq(key), "updated_at": {"$gte": oldest}})

    def keep(self, key: str, fields: Mapping[str, Any]) -> None:
        """Write what is kept under `key` (its fields replaced, stamped now)."""
        # $currentDate, not a datetime in $set: nx-27017 stores a $set datetime of an existing document
        # as a string, which no later date comparison matches (as io/queue.py notes).
        self._collection.update_one(
            {"_id": eq(key)}, {"$set": dict(fields), "$currentDate": {"updated_at": True}}, upsert=True
        )

    def entries(self, engine: str | None = None, queue: str | None = None) -> list[dict[str, Any]]:
        """What was kept for `engine` (its name) on `queue` (one of its queues), or for all; newest first."""
        # Matched here rather than by the filter: nx-27017 does not match an element of an array field.
        return [
            entry
            for entry in self._collection.find().sort("updated_at", -1)
            if (engine is None or entry.get("engine") == engine) and (queue is None or queue in entry.get("queues", ()))
        ]

    def forget(self, engine: str | None = None, queue: str | None = None) -> int:
        """Delete what `entries(engine, queue)` lists; how many documents went."""
        ids = [entry["_id"] for entry in self.entries(engine, queue)]
        return self._collection.delete_many({"_id": {"$in": ids}}).deleted_count if ids else 0
