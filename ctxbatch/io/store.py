"""ContextStore: the contexts queue in MongoDB — submit, claim, settle, status, results.

Every write back is fenced by the claim's lease token: an update only matches a context that
is still `processing` under that token, so a loop whose lease expired changes nothing.

nx-27017 note: `$set` (and `$min`/`$max`) of a top-level datetime stores it as a string there,
which breaks every later date comparison. So updates stamp times with `$currentDate` (the
server's clock, right on both servers), and the one future time we write (a retried context's
`next_attempt_at`) goes in with a fenced replace of the whole document. A datetime inside a
subdocument is stored as a date but does not compare in `find` there, so the lease also
carries its expiry as epoch milliseconds (`lease.expires_ms`), which the reaper queries.
A top-level date does compare, but in Python, row by row over every pending context (a claim
took 10x longer at 100k pending than at 10k), so the claim compares `next_attempt_ms`, the
same moment as a number, which the server compares in SQL.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, MongoClient, ReplaceOne, UpdateMany, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, PyMongoError

from ctxbatch.errors import BatchNotFound, ContextNotFound, InvalidCursor, SubmitError
from ctxbatch.io.claims import Claim, WriteReport
from ctxbatch.io.schema import (
    BATCH_INDEXES,
    CONTEXT_INDEXES,
    ContextRequest,
    Status,
    context_document,
    utcnow,
    validate_name,
    validate_requests,
)

INSERT_CHUNK = 10_000
ID_LOOKUP_CHUNK = 5_000
CLAIM_ROUNDS = 3
RESULT_COLUMNS = [
    "id", "batch_id", "key", "status", "priority", "payload", "result", "error",
    "attempts", "next_attempt_at", "created_at", "started_at", "finished_at",
]  # fmt: skip
DEFAULT_LEVELS = {"high": (0, 10), "medium": (11, 50), "low": (51, 100)}
INTERNAL_FIELDS = ("_id", "lease", "settled_by", "next_attempt_ms")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def mask_uri(uri: str) -> str:
    """The URI with its password replaced, fit for logs and reprs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _eq(value: Any) -> dict[str, Any]:
    return {"$eq": value}


def _epoch_ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def _lease(owner: str, token: str, expires_at: dt.datetime) -> dict[str, Any]:
    return {"owner": owner, "token": token, "expires_at": expires_at, "expires_ms": _epoch_ms(expires_at)}


def _claimable(now: dt.datetime) -> dict[str, Any]:
    return {"status": _eq(Status.PENDING.value), "next_attempt_ms": {"$lte": _epoch_ms(now)}}


def _stamp(*fields: str) -> dict[str, dict[str, bool]]:
    """`$currentDate` for these fields (see the module's note on datetimes)."""
    return {"$currentDate": dict.fromkeys(fields, True)}


def as_records(source: Iterable[Any] | pd.DataFrame) -> list[Any]:
    """What `submit` accepts: records (dicts), or a DataFrame with a `payload` column."""
    if not isinstance(source, pd.DataFrame):
        return list(source)
    if "payload" not in source.columns:
        raise SubmitError(None, "payload", "the DataFrame has no 'payload' column")
    frame = source.astype(object).where(source.notna(), None)
    rows = [{k: v for k, v in row.items() if v is not None} for row in frame.to_dict("records")]
    for row in rows:
        # A gap (a row without priority) makes pandas hold the column as floats: 3.0 is priority 3.
        if isinstance(row.get("priority"), float) and row["priority"].is_integer():
            row["priority"] = int(row["priority"])
    return rows


class ContextStore:
    """The queue of contexts and their batches in one MongoDB database."""

    def __init__(
        self,
        uri: str,
        database: str = "ctxbatch",
        *,
        levels: Mapping[str, tuple[int, int]] | None = None,
        client: MongoClient[dict[str, Any]] | None = None,
    ) -> None:
        self.uri = uri
        self.database_name = database
        self.levels = dict(levels or DEFAULT_LEVELS)
        self.client: MongoClient[dict[str, Any]] = client or MongoClient(uri, tz_aware=True, connect=False)
        self.db = self.client[database]
        self.contexts: Collection[dict[str, Any]] = self.db["contexts"]
        self.batches: Collection[dict[str, Any]] = self.db["batches"]
        self._indexed = False

    def __repr__(self) -> str:
        return f"<ContextStore {mask_uri(self.uri)} database={self.database_name!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled to Dask workers as its address; each worker opens its own client.
        return (ContextStore, (self.uri, self.database_name), {"levels": self.levels})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.levels = state["levels"]

    def close(self) -> None:
        self.client.close()

    def ping(self) -> float:
        """Round-trip time of a ping, in seconds."""
        start = time.perf_counter()
        self.client.admin.command("ping")
        return time.perf_counter() - start

    def ensure_indexes(self) -> None:
        if not self._indexed:
            self.contexts.create_indexes(CONTEXT_INDEXES)
            self.batches.create_indexes(BATCH_INDEXES)
            self._indexed = True

    # -- submit ---------------------------------------------------------------------------

    def submit(
        self,
        records: Iterable[Any] | pd.DataFrame,
        priority: int | None = None,
        name: str | None = None,
    ) -> str:
        """Store a whole submission as one batch and return its id; all of it or nothing."""
        name = validate_name(name)
        requests = validate_requests(as_records(records), priority)
        self.ensure_indexes()
        self._refuse_known_keys(requests)
        batch_id = str(ObjectId())
        now = utcnow()
        try:
            for start in range(0, len(requests), INSERT_CHUNK):
                chunk = requests[start : start + INSERT_CHUNK]
                documents = [
                    context_document(r, r.key if r.key is not None else str(ObjectId()), batch_id, now) for r in chunk
                ]
                try:
                    self.contexts.insert_many(documents, ordered=False)
                except BulkWriteError as exc:
                    first = exc.details["writeErrors"][0]
                    # Point at the user's record, not the chunk's.
                    raise SubmitError(start + first["index"], "key", first.get("errmsg", "refused")) from exc
            self.batches.insert_one(
                {"_id": batch_id, "name": name, "total": len(requests), "created_at": now, "updated_at": now}
            )
        except (SubmitError, PyMongoError):
            self.contexts.delete_many({"batch_id": _eq(batch_id)})
            raise
        return batch_id

    def _refuse_known_keys(self, requests: list[ContextRequest]) -> None:
        keyed = {r.key: i for i, r in enumerate(requests) if r.key is not None}
        keys = list(keyed)
        for start in range(0, len(keys), ID_LOOKUP_CHUNK):
            found = self.contexts.find_one({"_id": {"$in": keys[start : start + ID_LOOKUP_CHUNK]}}, {"batch_id": 1})
            if found:
                raise SubmitError(
                    keyed[found["_id"]], "key", f"{found['_id']!r} already exists (batch {found['batch_id']})"
                )

    # -- claim and settle -----------------------------------------------------------------

    def claim(self, n: int, owner: str, lease_seconds: float = 300, *, by_priority: bool = True) -> Claim:
        """Take up to n claimable contexts, most urgent then oldest first, under a fresh lease."""
        token = uuid.uuid4().hex
        now = utcnow()
        expires_at = now + dt.timedelta(seconds=lease_seconds)
        order = [("priority", ASCENDING), ("created_at", ASCENDING)] if by_priority else [("created_at", ASCENDING)]
        claimable = _claimable(now)
        lease = _lease(owner, token, expires_at)
        fields = {"_id": 1, "attempts": 1, "priority": 1, "batch_id": 1}
        held: list[dict[str, Any]] = []
        for _ in range(CLAIM_ROUNDS):
            # batch_size: the whole answer in one reply, not one getMore per 101 documents.
            wanted = n - len(held)
            found = list(self.contexts.find(claimable, fields).sort(order).limit(wanted).batch_size(wanted))
            if not found:
                break
            # The status condition makes this the one conditional update: a context another
            # loop took between the find and here is simply not matched. `$in`, not `$eq`: with
            # `$eq` nx-27017 walks the status index over every pending context instead of the ids.
            won = self.contexts.update_many(
                {"_id": {"$in": [d["_id"] for d in found]}, "status": {"$in": [Status.PENDING.value]}},
                {"$set": {"status": Status.PROCESSING.value, "lease": lease},
                 "$unset": {"settled_by": ""}, "$inc": {"attempts": 1}, **_stamp("started_at")},
            ).modified_count  # fmt: skip
            if won < len(found):
                # Another loop took some in between: ask which ones this lease holds.
                mine = {d["_id"] for d in self.contexts.find({"lease.token": _eq(token)}, {"_id": 1})}
                found = [d for d in found if d["_id"] in mine]
            held += [{**d, "attempts": d["attempts"] + 1} for d in found]
            if len(held) >= n:
                break
        if by_priority:
            held.sort(key=lambda d: d["priority"])  # rounds after the first may hold more urgent ones
        return Claim(
            token=token,
            owner=owner,
            expires_at=expires_at,
            ids=[d["_id"] for d in held],
            attempts={d["_id"]: d["attempts"] for d in held},
            batch_ids=sorted({d["batch_id"] for d in held}),
        )

    def settle(
        self,
        claim: Claim,
        results: Mapping[str, Any] | None = None,
        errors: Mapping[str, Mapping[str, Any]] | None = None,
        retry_at: Mapping[str, dt.datetime | None] | dt.datetime | None = None,
        release: Iterable[str] = (),
    ) -> WriteReport:
        """One fenced bulk write: complete `results`, fail or reschedule `errors`, release the rest.

        `retry_at` gives, per failed context (or for all), when it may run again; None fails it
        for good. Released contexts go back to `pending` as they were, their try uncounted.
        """
        fence = {"status": _eq(Status.PROCESSING.value), "lease.token": _eq(claim.token)}
        # `settled_by` names the lease that made the last change, which is how a partly
        # fenced-out write finds out which contexts it lost.
        done = {"settled_by": claim.token}
        ops: list[UpdateOne | UpdateMany | ReplaceOne[dict[str, Any]]] = [
            UpdateOne({"_id": cid, **fence}, {
                "$set": {"status": Status.COMPLETED.value, "result": result, **done},
                "$unset": {"lease": "", "error": ""}, **_stamp("finished_at"),
            })
            for cid, result in (results or {}).items()
        ]  # fmt: skip
        if errors:
            ops += self._failure_ops(claim, errors, retry_at, fence, done)
        released = list(release)
        if released:
            ops.append(UpdateMany(
                {"_id": {"$in": released}, **fence},
                {"$set": {"status": Status.PENDING.value, **done}, "$unset": {"lease": ""},
                 "$inc": {"attempts": -1}},
            ))  # fmt: skip
        ids = [*(results or {}), *(errors or {}), *released]
        if not ops:
            return WriteReport(0, sorted(ids))
        written = self.contexts.bulk_write(ops, ordered=False).modified_count
        lost: list[str] = []
        if written < len(ids):
            lost = sorted(
                d["_id"]
                for d in self.contexts.find({"_id": {"$in": ids}, "settled_by": {"$ne": claim.token}}, {"_id": 1})
            )
        self._touch(claim.batch_ids)
        return WriteReport(written, lost)

    def _failure_ops(
        self,
        claim: Claim,
        errors: Mapping[str, Mapping[str, Any]],
        retry_at: Mapping[str, dt.datetime | None] | dt.datetime | None,
        fence: dict[str, Any],
        done: dict[str, str],
    ) -> list[ReplaceOne[dict[str, Any]]]:
        # Whole-document replaces, fenced like the rest: the only way to store a future
        # `next_attempt_at` as a date on nx-27017 (see the module's note).
        now = utcnow()
        held = self.contexts.find({"_id": {"$in": list(errors)}, **fence})
        ops = []
        for doc in held:
            cid = doc.pop("_id")
            doc.pop("lease", None)
            when = retry_at.get(cid) if isinstance(retry_at, Mapping) else retry_at
            if when is None:
                doc.update(status=Status.FAILED.value, finished_at=now)
            else:
                doc.update(status=Status.PENDING.value, next_attempt_at=when, next_attempt_ms=_epoch_ms(when))
            doc.update(error=dict(errors[cid]), **done)
            ops.append(ReplaceOne({"_id": cid, **fence}, doc))
        return ops

    def complete(self, claim: Claim, results: Mapping[str, Any]) -> WriteReport:
        """Mark contexts completed with their results (fenced)."""
        return self.settle(claim, results=results)

    def fail(
        self,
        claim: Claim,
        errors: Mapping[str, Mapping[str, Any]],
        retry_at: Mapping[str, dt.datetime | None] | dt.datetime | None = None,
    ) -> WriteReport:
        """Record errors: pending again from `retry_at`, or failed for good when it is None (fenced)."""
        return self.settle(claim, errors=errors, retry_at=retry_at)

    def release(self, claim: Claim, ids: Iterable[str] | None = None) -> WriteReport:
        """Give contexts back unchanged (all of the claim by default), fenced."""
        return self.settle(claim, release=claim.ids if ids is None else ids)

    def claimable(self, limit: int) -> int:
        """How many contexts could be claimed now, counting no further than `limit` (index-backed)."""
        return len(list(self.contexts.find(_claimable(utcnow()), {"_id": 1}).limit(limit)))

    def held(self, claim: Claim) -> Claim:
        """The part of a claim its lease still holds, in claim order."""
        still = {d["_id"] for d in self.contexts.find({"lease.token": _eq(claim.token)}, {"_id": 1})}
        return claim.subset([cid for cid in claim.ids if cid in still])

    def renew(self, claim: Claim, lease_seconds: float = 300) -> int:
        """Extend the lease; returns how many contexts it still holds."""
        expires_at = utcnow() + dt.timedelta(seconds=lease_seconds)
        # The whole lease is written: a dotted `$set` of a datetime is stored as a string.
        lease = _lease(claim.owner, claim.token, expires_at)
        held = self.contexts.update_many(
            {"lease.token": _eq(claim.token), "status": _eq(Status.PROCESSING.value)}, {"$set": {"lease": lease}}
        ).matched_count
        claim.expires_at = expires_at
        return held

    def reap_expired(self, max_attempts: int | None = None) -> int:
        """Return contexts whose lease expired to `pending`; those past max_attempts fail for good.

        A context that keeps killing the process that runs it (a poison row) would otherwise be
        reaped and re-run forever.
        """
        expired = {"status": _eq(Status.PROCESSING.value), "lease.expires_ms": {"$lt": _epoch_ms(utcnow())}}
        reaped = 0
        if max_attempts is not None:
            reaped += self.contexts.update_many(
                {**expired, "attempts": {"$gte": max_attempts}},
                {"$set": {"status": Status.FAILED.value,
                          "error": {"type": "LeaseExpired", "traceback": "",
                                    "message": "the process running it stopped before finishing"}},
                 "$unset": {"lease": ""}, **_stamp("finished_at")},
            ).modified_count  # fmt: skip
        reaped += self.contexts.update_many(
            expired,
            {
                "$set": {"status": Status.PENDING.value, "next_attempt_ms": _epoch_ms(utcnow())},
                "$unset": {"lease": ""},
                **_stamp("next_attempt_at"),
            },
        ).modified_count
        return reaped

    def _touch(self, batch_ids: list[str]) -> None:
        if batch_ids:
            self.batches.update_many({"_id": {"$in": batch_ids}}, _stamp("updated_at"))

    # -- batch management -----------------------------------------------------------------

    def cancel(self, batch_id: str) -> int:
        """Cancel the batch's pending contexts; returns how many."""
        self._batch(batch_id)
        changed = self.contexts.update_many(
            {"batch_id": _eq(batch_id), "status": _eq(Status.PENDING.value)},
            {"$set": {"status": Status.CANCELLED.value}, **_stamp("finished_at")},
        ).modified_count
        self._touch([batch_id])
        return changed

    def retry(self, batch_id: str) -> int:
        """Send the batch's failed contexts back to `pending` with attempts reset; returns how many."""
        self._batch(batch_id)
        changed = self.contexts.update_many(
            {"batch_id": _eq(batch_id), "status": _eq(Status.FAILED.value)},
            {"$set": {"status": Status.PENDING.value, "attempts": 0, "next_attempt_ms": _epoch_ms(utcnow())},
             "$unset": {"finished_at": ""}, **_stamp("next_attempt_at")},
        ).modified_count  # fmt: skip
        self._touch([batch_id])
        return changed

    # -- reading --------------------------------------------------------------------------

    def _batch(self, batch_id: str) -> dict[str, Any]:
        if not isinstance(batch_id, str):
            raise BatchNotFound(str(batch_id))
        found = self.batches.find_one({"_id": _eq(batch_id)})
        if found is None:
            raise BatchNotFound(batch_id)
        return found

    def counts(self, batch_id: str) -> dict[str, int]:
        counts = self._count_by_status({"batch_id": _eq(batch_id)})
        return {"total": sum(counts.values()), **counts}

    def _count_by_status(self, match: dict[str, Any] | None = None) -> dict[str, int]:
        # An aggregate, not count_documents: the latter takes seconds on nx-27017 at 100k.
        stages: list[dict[str, Any]] = [{"$match": match}] if match else []
        counts = {s.value: 0 for s in Status}
        for row in self.contexts.aggregate([*stages, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]):
            counts[row["_id"]] = row["n"]
        return counts

    def batch_status(self, batch_id: str) -> dict[str, Any]:
        """The batch status JSON of DESIGN.md."""
        batch = self._batch(batch_id)
        counts = self.counts(batch_id)
        return {
            "batch_id": batch_id,
            "name": batch.get("name"),
            "status": derive_status(counts),
            "counts": counts,
            "created_at": batch["created_at"].isoformat(),
            "updated_at": batch.get("updated_at", batch["created_at"]).isoformat(),
        }

    def iter_results(self, batch_id: str, *, payload: bool = True) -> Iterator[dict[str, Any]]:
        """The batch's contexts one by one, in submission order, without loading them all."""
        self._batch(batch_id)
        projection = None if payload else {"payload": 0}
        for doc in self.contexts.find({"batch_id": _eq(batch_id)}, projection).sort("_id", ASCENDING):
            yield context_view(doc)

    def results(self, batch_id: str) -> pd.DataFrame:
        """The batch's contexts as a DataFrame (id, status, priority, payload, result, error, ...)."""
        return pd.DataFrame(list(self.iter_results(batch_id)), columns=RESULT_COLUMNS)

    def get_context(self, context_id: str) -> dict[str, Any]:
        found = self.contexts.find_one({"_id": _eq(context_id)}) if isinstance(context_id, str) else None
        if found is None:
            raise ContextNotFound(str(context_id))
        return context_view(found)

    def status_counts(self) -> dict[str, int]:
        """Contexts of every batch by status."""
        return self._count_by_status()

    def queue_length(self, status: Status | str = Status.PENDING) -> dict[str, int]:
        """How many contexts have this status, by priority level."""
        # One group key only: nx-27017 does not evaluate a compound `_id` in $group.
        grouped = self.contexts.aggregate(
            [{"$match": {"status": _eq(str(status))}}, {"$group": {"_id": "$priority", "n": {"$sum": 1}}}]
        )
        lengths = dict.fromkeys(self.levels, 0)
        for row in grouped:
            lengths[self.level_of(row["_id"])] += row["n"]
        return lengths

    def level_of(self, priority: int) -> str:
        for name, (low, high) in self.levels.items():
            if low <= priority <= high:
                return name
        raise ValueError(f"priority {priority} is in no level")

    # -- listing and pages ----------------------------------------------------------------

    def list_batches(self, status: Status | str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest batches first, as batch_status() JSON; only those with `status` if given.

        A batch's status is derived from its contexts, so a filter costs a count per batch looked at.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        wanted = None if status is None else Status(status).value
        # A range on created_at walks the `newest` index on nx-27017, sort included; `{}` scans.
        newest = self.batches.find({"created_at": {"$gte": _EPOCH}}, {"_id": 1}).sort("created_at", DESCENDING)
        if wanted is None:
            newest = newest.limit(limit)
        found: list[dict[str, Any]] = []
        for batch in newest:
            view = self.batch_status(batch["_id"])
            if wanted is None or view["status"] == wanted:
                found.append(view)
                if len(found) >= limit:
                    break
        return found

    def results_page(
        self, batch_id: str, limit: int = 1000, cursor: str | None = None, *, payload: bool = True
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of iter_results(): up to `limit` contexts, and the cursor of the next page (None at the end).

        The cursor is opaque; it holds an offset. That is stable because a batch's contexts never
        change after submit, and it is what nx-27017 serves from an index: `{"_id": {"$gt": ...}}`
        is evaluated in Python over the whole collection there, and `_id` cannot join an index.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._batch(batch_id)
        offset = 0 if cursor is None else self._cursor_offset(cursor)
        projection = None if payload else {"payload": 0}
        found = list(
            self.contexts.find({"batch_id": _eq(batch_id)}, projection)
            .sort("_id", ASCENDING).skip(offset).limit(limit + 1).batch_size(limit + 1)
        )  # fmt: skip
        following = self._page_cursor(offset + limit) if len(found) > limit else None
        return [context_view(doc) for doc in found[:limit]], following

    @staticmethod
    def _page_cursor(offset: int) -> str:
        return base64.urlsafe_b64encode(f"o{offset}".encode()).decode().rstrip("=")

    @staticmethod
    def _cursor_offset(cursor: str) -> int:
        try:
            text = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
        except (binascii.Error, UnicodeError, ValueError):
            raise InvalidCursor(cursor) from None
        if not (text[:1] == "o" and text[1:].isascii() and text[1:].isdigit() and len(text) <= 16):
            raise InvalidCursor(cursor)
        return int(text[1:])


def derive_status(counts: Mapping[str, int]) -> str:
    """Batch status from its contexts' counts."""
    done = counts["completed"] + counts["failed"]
    if counts["processing"] or (counts["pending"] and (done or counts["cancelled"])):
        return Status.PROCESSING.value if counts["processing"] or done else Status.PENDING.value
    if counts["pending"]:
        return Status.PENDING.value
    return Status.CANCELLED.value if counts["cancelled"] else Status.COMPLETED.value


def context_view(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A stored context as users see it: `_id` is `id`; the lease and the store's bookkeeping are internal."""
    view = {"id": doc["_id"], **{k: v for k, v in doc.items() if k not in INTERNAL_FIELDS}}
    for column in RESULT_COLUMNS:
        view.setdefault(column, None)
    return view


def connect(
    uri: str | None = None,
    database: str | None = None,
    *,
    config: Any = None,
    announce: Any = None,
) -> ContextStore:
    """A ContextStore: the given URI, else CTXBATCH_MONGO_URI, else `mongo.uri`, else embedded."""
    from ctxbatch.io import embedded

    uri = uri or os.environ.get("CTXBATCH_MONGO_URI") or (config.mongo.uri if config else None)
    database = database or (config.mongo.database if config else "ctxbatch")
    levels = config.worker.priorities.ranges() if config else None
    if uri is None:
        uri = embedded.ensure_running(announce)
    return ContextStore(uri, database, levels=levels)
