"""The alerts' shared state and the critical-error log, in the database every loop reads.

Several loops evaluate the same rules over the same stats; the alert's document decides which of
them announces a change. Each document (`_id`: the rule's name) holds the state and a `token` that
changes with every transition; a loop moves it from the state it read, conditional on that token,
so of several loops that saw the same change exactly one wins the update and sends the
notification, and a loop that read an older state changes nothing (the fence of the leases, for
alerts). Times are epoch milliseconds and ISO text: nx-27017 stores a `$set` datetime as a string.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from ctxbatch.display import iso_time
from ctxbatch.io.connection import Connection
from ctxbatch.io.schema import epoch_ms
from ctxbatch.io.schema import eq as _eq

FIRING = "firing"
RESOLVED = "resolved"
CRITICAL_INDEXES = [IndexModel([("at_ms", ASCENDING)], name="at")]


@dataclass(frozen=True)
class AlertState:
    """What the database says of one alert."""

    name: str
    status: str  # FIRING or RESOLVED
    token: str
    starts_at: str  # ISO 8601, when it (last) started firing
    ends_at: str | None  # ISO 8601, when it resolved; None while firing
    owner: str  # the loop that made the last change
    value: float | None  # the metric's value at that change

    @classmethod
    def of(cls, doc: dict[str, Any]) -> AlertState:
        return cls(
            doc["_id"],
            doc["status"],
            doc["token"],
            doc["starts_at"],
            doc.get("ends_at"),
            doc["owner"],
            doc.get("value"),
        )


class AlertBook:
    """The `alerts` collection (one document per rule) and the `critical_errors` log."""

    def __init__(self, source: Connection | Database[dict[str, Any]]) -> None:
        # A store's book reaches its collections through the connection, so it follows a moved server.
        self.source = source
        self._indexed = False

    @property
    def alerts(self) -> Collection[dict[str, Any]]:
        return self.source.bound.alerts if isinstance(self.source, Connection) else self.source["alerts"]

    @property
    def critical(self) -> Collection[dict[str, Any]]:
        source = self.source
        return source.bound.critical_errors if isinstance(source, Connection) else source["critical_errors"]

    def states(self) -> dict[str, AlertState]:
        """Every alert's last known state, by name (a small collection: one document per rule)."""
        return {doc["_id"]: AlertState.of(doc) for doc in self.alerts.find({"_id": {"$gte": ""}})}

    def fire(self, name: str, seen: AlertState | None, owner: str, value: float | None, now: dt.datetime) -> bool:
        """Mark the alert firing, if it is still as `seen` (None: never recorded); True if this call did."""
        doc = {
            "status": FIRING,
            "token": uuid.uuid4().hex,
            "starts_at": iso_time(now),
            "starts_ms": epoch_ms(now),
            "ends_at": None,
            "owner": owner,
            "value": value,
        }
        if seen is None:
            try:
                self.alerts.insert_one({"_id": name, **doc})
            except DuplicateKeyError:
                return False  # another loop recorded it first
            return True
        if seen.status == FIRING:
            return False
        fence = {"_id": _eq(name), "token": _eq(seen.token)}
        return self.alerts.update_one(fence, {"$set": doc}).modified_count == 1

    def resolve(self, seen: AlertState, owner: str, value: float | None, now: dt.datetime) -> bool:
        """Mark a firing alert resolved, if it is still the firing `seen`; True if this call did."""
        if seen.status != FIRING:
            return False
        fence = {"_id": _eq(seen.name), "token": _eq(seen.token)}
        change = {
            "status": RESOLVED,
            "token": uuid.uuid4().hex,
            "ends_at": iso_time(now),
            "owner": owner,
            "value": value,
        }
        return self.alerts.update_one(fence, {"$set": change}).modified_count == 1

    # -- critical errors ----------------------------------------------------------------------

    def record_critical(self, owner: str, label: str, error: dict[str, Any], now: dt.datetime) -> None:
        """Note a critical error that stopped a batch, so that every loop's `critical_errors` counts it."""
        if not self._indexed:
            self.critical.create_indexes(CRITICAL_INDEXES)
            self._indexed = True
        self.critical.insert_one(
            {
                "at_ms": epoch_ms(now),
                "owner": owner,
                "batch": label,
                "type": str(error.get("type", "")),
                "message": str(error.get("message", ""))[:500],
            }
        )

    def critical_errors(self, window_seconds: float, now: dt.datetime) -> int:
        """How many critical errors any loop recorded in the last `window_seconds`."""
        end = epoch_ms(now)
        match = {"at_ms": {"$gte": end - int(window_seconds * 1000), "$lte": end}}
        found = list(self.critical.aggregate([{"$match": match}, {"$group": {"_id": None, "n": {"$sum": 1}}}]))
        return int(found[0]["n"]) if found else 0
