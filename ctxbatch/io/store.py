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
same moment as a number, which the server compares in SQL; for the same reason a context
finished for good (completed or failed) carries `finished_ms`, which stats() queries.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Set
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
from pymongo import ASCENDING, MongoClient, ReplaceOne, UpdateMany, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from ctxbatch.config import DEFAULT_LEVELS, level_ranges
from ctxbatch.errors import SubmitError
from ctxbatch.io import staging
from ctxbatch.io.claims import Claim, WriteReport
from ctxbatch.io.schema import (
    BATCH_INDEXES,
    CONTEXT_INDEXES,
    RETIRED_INDEXES,
    Status,
    epoch_ms,
    held_by,
    held_of,
    in_one_reply,
    iter_requests,
    utcnow,
    validate_name,
)
from ctxbatch.io.schema import (
    eq as _eq,
)
from ctxbatch.io.stats import Statistics

CLAIM_ROUNDS = 3


def mask_uri(uri: str) -> str:
    """The URI with its password replaced, fit for logs and reprs."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _lease(owner: str, token: str, expires_at: dt.datetime) -> dict[str, Any]:
    return {"owner": owner, "token": token, "expires_at": expires_at, "expires_ms": epoch_ms(expires_at)}


def _claimable(now: dt.datetime) -> dict[str, Any]:
    return {"status": _eq(Status.PENDING.value), "next_attempt_ms": {"$lte": epoch_ms(now)}}


def _stamp(*fields: str) -> dict[str, dict[str, bool]]:
    """`$currentDate` for these fields (see the module's note on datetimes)."""
    return {"$currentDate": dict.fromkeys(fields, True)}


def as_records(source: Iterable[Any] | pd.DataFrame) -> Iterable[Any]:
    """What `submit` accepts: records (dicts, streamed as given), or a DataFrame with a `payload` column."""
    if not isinstance(source, pd.DataFrame):
        return source
    if "payload" not in source.columns:
        raise SubmitError(None, "payload", "the DataFrame has no 'payload' column")
    frame = source.astype(object).where(source.notna(), None)
    rows = [{k: v for k, v in row.items() if v is not None} for row in frame.to_dict("records")]
    for row in rows:
        # A gap (a row without priority) makes pandas hold the column as floats: 3.0 is priority 3.
        if isinstance(row.get("priority"), float) and row["priority"].is_integer():
            row["priority"] = int(row["priority"])
    return rows


class ContextStore(Statistics):
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
        self.levels = dict(levels or level_ranges(DEFAULT_LEVELS))
        self._bind(client or MongoClient(uri, tz_aware=True, connect=False))
        self._indexed = False
        # Claims whose update may have been applied though no answer came (see claim()).
        self._unanswered: list[Claim] = []
        # Set by connect() when this store is on the embedded default, whose port may move.
        self.embedded = False

    def _bind(self, client: MongoClient[dict[str, Any]]) -> None:
        self.client = client
        self.db = self.client[self.database_name]
        self.contexts: Collection[dict[str, Any]] = self.db["contexts"]
        self.batches: Collection[dict[str, Any]] = self.db["batches"]
        # Submissions on their way in, and their staged chunks (io/staging.py).
        self.submissions: Collection[dict[str, Any]] = self.db["submissions"]
        self.staged: Collection[dict[str, Any]] = self.db["staged"]

    def follow_embedded(self) -> bool:
        """On the embedded default: reconnect when the server now runs elsewhere; True if it moved.

        Called when the database does not answer. The server comes back on its port when it can
        (io/embedded.py); this covers the case where that port was taken meanwhile.
        """
        if not self.embedded:
            return False
        from ctxbatch.io import embedded

        uri = embedded.located()
        if uri is None or uri == self.uri:
            return False
        # The old client is left open: parts of the loop (its monitor) may hold it; it idles.
        self.uri = uri
        self._bind(MongoClient(uri, tz_aware=True, connect=False))
        return True

    def __repr__(self) -> str:
        return f"<ContextStore {mask_uri(self.uri)} database={self.database_name!r}>"

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
            for name in RETIRED_INDEXES:
                if name in self.contexts.index_information():
                    self.contexts.drop_index(name)
            self.batches.create_indexes(BATCH_INDEXES)
            self.staged.create_indexes(staging.STAGED_INDEXES)
            self._indexed = True

    # -- submit ---------------------------------------------------------------------------

    def submit(
        self,
        records: Iterable[Any] | pd.DataFrame,
        priority: int | None = None,
        name: str | None = None,
    ) -> str:
        """Store a whole submission as one batch and return its id; all of it or nothing."""
        return self.submit_counted(records, priority, name)[0]

    def submit_counted(
        self,
        records: Iterable[Any] | pd.DataFrame,
        priority: int | None = None,
        name: str | None = None,
    ) -> tuple[str, int]:
        """submit(), also returning how many contexts were stored.

        The records are streamed (an iterator is never held whole): validated, encoded and
        staged in chunks, and invisible until the whole submission is committed (io/staging.py).
        """
        name = validate_name(name)
        requests = iter_requests(as_records(records), priority)
        self.ensure_indexes()
        staging.tidy(self)
        return staging.submit_staged(self, requests, name)

    def tidy_submissions(self) -> int:
        """The janitor of interrupted submissions (see io/staging.py); how many it settled."""
        return staging.tidy(self)

    # -- claim and settle -----------------------------------------------------------------

    def claim(self, n: int, owner: str, lease_seconds: float = 300, *, by_priority: bool = True) -> Claim:
        """Take up to n claimable contexts, most urgent then oldest first, under a fresh lease.

        When the database stops answering midway, the contexts this lease may have taken are
        given back (fenced by its token) at the start of the next claim, their try uncounted:
        otherwise they would sit under a lease nobody holds until it expired, and a context out
        of retries would then fail for good without having run.
        """
        self.release_unanswered()
        token = uuid.uuid4().hex
        now = utcnow()
        expires_at = now + dt.timedelta(seconds=lease_seconds)
        order = [("priority", ASCENDING), ("created_at", ASCENDING)] if by_priority else [("created_at", ASCENDING)]
        claimable = _claimable(now)
        lease = _lease(owner, token, expires_at)
        fields = {"_id": 1, "attempts": 1, "priority": 1, "batch_id": 1}
        held: list[dict[str, Any]] = []
        asked: list[str] = []  # every id an update of this lease was sent for
        try:
            for _ in range(CLAIM_ROUNDS):
                wanted = n - len(held)
                found = list(in_one_reply(self.contexts.find(claimable, fields).sort(order).limit(wanted), wanted))
                if not found:
                    break
                asked += [d["_id"] for d in found]
                # The status condition makes this the one conditional update: a context another
                # loop took between the find and here is simply not matched. `$in`, not `$eq`: with
                # `$eq` nx-27017 walks the status index over every pending context instead of the ids.
                won = self.contexts.update_many(
                    {"_id": {"$in": [d["_id"] for d in found]}, "status": {"$in": [Status.PENDING.value]}},
                    {"$set": {"status": Status.PROCESSING.value, "lease": lease},
                     "$inc": {"attempts": 1}, **_stamp("started_at")},
                ).modified_count  # fmt: skip
                if won < len(found):
                    # Another loop took some in between: ask which ones this lease holds.
                    mine = {d["_id"] for d in self.contexts.find(held_of(token, [d["_id"] for d in found]), {"_id": 1})}
                    found = [d for d in found if d["_id"] in mine]
                held += [{**d, "attempts": d["attempts"] + 1} for d in found]
                if len(held) >= n:
                    break
        except PyMongoError:
            if asked:
                self._unanswered.append(Claim(token, owner, expires_at, asked))
            raise
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

    def release_unanswered(self) -> int:
        """Give back what claims cut off by the database took; how many. Raises while it is still away."""
        given = 0
        while self._unanswered:
            given += self.release(self._unanswered[0]).written
            self._unanswered.pop(0)
        return given

    def settle(
        self,
        claim: Claim,
        results: Mapping[str, Any] | None = None,
        errors: Mapping[str, Mapping[str, Any]] | None = None,
        retry_at: Mapping[str, dt.datetime | None] | dt.datetime | None = None,
        release: Iterable[str] = (),
        deferred: Set[str] = frozenset(),
    ) -> WriteReport:
        """One fenced bulk write: complete `results`, fail or reschedule `errors`, release the rest.

        `retry_at` gives, per failed context (or for all), when it may run again; None fails it
        for good. Released contexts go back to `pending` as they were, their try uncounted.
        `deferred` names the rescheduled errors that are deferrals (RetryLater): their try is not
        counted in `attempts` but in `deferrals`.
        """
        # A settled context keeps its last lease (users never see it): its token says which
        # claim made the last change, so a partly fenced-out write can tell what it lost, and
        # leaving it costs the server less than removing it. Only `processing` is held.
        fence = held_by(claim.token)
        finished_ms = epoch_ms(utcnow())
        ops: list[UpdateOne | UpdateMany | ReplaceOne[dict[str, Any]]] = [
            UpdateOne({"_id": cid, **fence}, {
                "$set": {"status": Status.COMPLETED.value, "result": result, "finished_ms": finished_ms},
                "$unset": {"error": ""}, **_stamp("finished_at"),
            })
            for cid, result in (results or {}).items()
        ]  # fmt: skip
        if errors:
            ops += self._failure_ops(claim, errors, retry_at, fence, deferred)
        released = list(release)
        if released:
            # Back to `pending` as if never claimed; the lease stays, as on every settled context.
            ops.append(UpdateMany(
                {"_id": {"$in": released}, **fence},
                {"$set": {"status": Status.PENDING.value}, "$inc": {"attempts": -1}},
            ))  # fmt: skip
        ids = [*(results or {}), *(errors or {}), *released]
        if not ops:
            return WriteReport(0, sorted(ids))
        written = self.contexts.bulk_write(ops, ordered=False).modified_count
        lost: list[str] = []
        if written < len(ids):
            # Lost: under another lease now, or under none (reaped).
            lost = sorted(
                d["_id"]
                for d in self.contexts.find({"_id": {"$in": ids}, "lease.token": {"$ne": claim.token}}, {"_id": 1})
            )
        self._touch(claim.batch_ids)
        return WriteReport(written, lost)

    def _failure_ops(
        self,
        claim: Claim,
        errors: Mapping[str, Mapping[str, Any]],
        retry_at: Mapping[str, dt.datetime | None] | dt.datetime | None,
        fence: dict[str, Any],
        deferred: Set[str] = frozenset(),
    ) -> list[ReplaceOne[dict[str, Any]]]:
        # Whole-document replaces, fenced like the rest: the only way to store a future
        # `next_attempt_at` as a date on nx-27017 (see the module's note).
        now = utcnow()
        held = self.contexts.find({"_id": {"$in": list(errors)}, **fence})
        ops = []
        for doc in held:
            cid = doc.pop("_id")
            when = retry_at.get(cid) if isinstance(retry_at, Mapping) else retry_at
            if when is None:
                doc.update(status=Status.FAILED.value, finished_at=now, finished_ms=epoch_ms(now))
            else:
                doc.update(status=Status.PENDING.value, next_attempt_at=when, next_attempt_ms=epoch_ms(when))
                if cid in deferred:
                    doc.update(attempts=doc["attempts"] - 1, deferrals=doc.get("deferrals", 0) + 1)
            doc.update(error=dict(errors[cid]))
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

    def load(self, claim: Claim) -> list[dict[str, Any]]:
        """The claim's contexts, whole documents in claim order, as long as its lease still holds them.

        Found by their ids (there is no lease index: it would cost every status change). Whole
        documents, as nx-27017 projects in Python, which costs it more than sending the rest.
        """
        found = in_one_reply(self.contexts.find(held_of(claim.token, claim.ids)), len(claim))
        by_id = {d["_id"]: d for d in found}
        return [by_id[i] for i in claim.ids if i in by_id]  # claim order, not the server's

    def claimable(self, limit: int) -> int:
        """How many contexts could be claimed now, counting no further than `limit` (index-backed)."""
        return len(list(self.contexts.find(_claimable(utcnow()), {"_id": 1}).limit(limit)))

    def held(self, claim: Claim) -> Claim:
        """The part of a claim its lease still holds, in claim order."""
        still = {d["_id"] for d in self.contexts.find(held_of(claim.token, claim.ids), {"_id": 1})}
        return claim.subset([cid for cid in claim.ids if cid in still])

    def renew(self, claim: Claim, lease_seconds: float = 300) -> int:
        """Extend the lease; returns how many contexts it still holds."""
        expires_at = utcnow() + dt.timedelta(seconds=lease_seconds)
        # The whole lease is written: a dotted `$set` of a datetime is stored as a string.
        lease = _lease(claim.owner, claim.token, expires_at)
        held = self.contexts.update_many(held_of(claim.token, claim.ids), {"$set": {"lease": lease}}).matched_count
        claim.expires_at = expires_at
        return held

    def reap_expired(self, max_attempts: int | None = None) -> int:
        """Return contexts whose lease expired to `pending`; those past max_attempts fail for good.

        A context that keeps killing the process that runs it (a poison row) would otherwise be
        reaped and re-run forever.
        """
        expired = {"status": _eq(Status.PROCESSING.value), "lease.expires_ms": {"$lt": epoch_ms(utcnow())}}
        reaped = 0
        if max_attempts is not None:
            reaped += self.contexts.update_many(
                {**expired, "attempts": {"$gte": max_attempts}},
                {"$set": {"status": Status.FAILED.value, "finished_ms": epoch_ms(utcnow()),
                          "error": {"type": "LeaseExpired", "traceback": "",
                                    "message": "the process running it stopped before finishing"}},
                 "$unset": {"lease": ""}, **_stamp("finished_at")},
            ).modified_count  # fmt: skip
        reaped += self.contexts.update_many(
            expired,
            {
                "$set": {"status": Status.PENDING.value, "next_attempt_ms": epoch_ms(utcnow())},
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
            {"$set": {"status": Status.PENDING.value, "attempts": 0, "next_attempt_ms": epoch_ms(utcnow())},
             "$unset": {"finished_at": "", "finished_ms": ""}, **_stamp("next_attempt_at")},
        ).modified_count  # fmt: skip
        self._touch([batch_id])
        return changed


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
    on_default = uri is None
    if uri is None:
        uri = embedded.ensure_running(announce)
    store = ContextStore(uri, database, levels=levels)
    store.embedded = on_default
    return store
