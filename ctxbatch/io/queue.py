"""The queue's mechanics: claim contexts under a lease, settle them, renew and reap leases, cancel and retry.

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
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any

from pymongo import ReplaceOne, UpdateMany, UpdateOne
from pymongo.errors import ConnectionFailure, PyMongoError

from ctxbatch.config import DEFAULT_QUEUE, LEASE_SECONDS
from ctxbatch.io.claims import Claim, WriteReport
from ctxbatch.io.connection import Connection
from ctxbatch.io.deadlines import Deadlines, deadline_ms
from ctxbatch.io.schema import Status, claimable_now, epoch_ms, eq, held_by, held_of, in_one_reply, of_status, utcnow
from ctxbatch.io.tenants import EQUAL_SHARES, SharedClaims, TenantShares
from ctxbatch.io.usage import summed, usage_by_batch
from ctxbatch.io.views import Views

log = logging.getLogger("ctxbatch.io")
CLAIM_ROUNDS = 3
RetryAt = Mapping[str, dt.datetime | None] | dt.datetime | None


def _lease(owner: str, token: str, expires_at: dt.datetime) -> dict[str, Any]:
    return {"owner": owner, "token": token, "expires_at": expires_at, "expires_ms": epoch_ms(expires_at)}


def _stamp(*fields: str) -> dict[str, dict[str, bool]]:
    """`$currentDate` for these fields (see the module's note on datetimes)."""
    return {"$currentDate": dict.fromkeys(fields, True)}


class Queue:
    """Claims, their fenced writes and leases, and a batch's cancel and retry (ContextStore documents each)."""

    def __init__(self, connection: Connection, views: Views, deadlines: Deadlines) -> None:
        self.connection = connection
        self.views = views
        self.deadlines = deadlines
        # Claims whose update may have been applied though no answer came (see claim()).
        self._unanswered: list[Claim] = []
        self.shared = SharedClaims(connection, views)

    def claim(
        self,
        n: int,
        owner: str,
        lease_seconds: float = LEASE_SECONDS,
        *,
        queues: Sequence[str] = (DEFAULT_QUEUE,),
        aging_seconds: float | None = None,
        shares: TenantShares = EQUAL_SHARES,
    ) -> Claim:
        self.release_unanswered()
        self.deadlines.expire_due_now_and_then()
        token = uuid.uuid4().hex
        now = utcnow()
        expires_at = now + dt.timedelta(seconds=lease_seconds)
        lease = _lease(owner, token, expires_at)
        held: list[dict[str, Any]] = []
        asked: list[str] = []  # every id an update of this lease was sent for
        try:
            for _ in range(CLAIM_ROUNDS):
                found = self._first(n - len(held), now, queues, aging_seconds, shares)
                if not found:
                    break
                asked += [d["_id"] for d in found]
                # The status condition makes this the one conditional update: a context another
                # loop took between the find and here is simply not matched.
                won = self.connection.contexts.update_many(
                    of_status([d["_id"] for d in found], Status.PENDING),
                    {
                        "$set": {"status": Status.PROCESSING.value, "lease": lease},
                        "$inc": {"attempts": 1},
                        **_stamp("started_at"),
                    },
                ).modified_count
                if won < len(found):
                    # Another loop took some in between: ask which ones this lease holds.
                    taken = self.connection.contexts.find(held_of(token, [d["_id"] for d in found]), {"_id": 1})
                    mine = {d["_id"] for d in taken}
                    found = [d for d in found if d["_id"] in mine]
                held += [{**d, "attempts": d["attempts"] + 1} for d in found]
                if len(held) >= n:
                    break
            if shares.in_flight is not None:
                held = self.shared.within_caps(held, token, shares)
        except PyMongoError:
            if asked:
                self._unanswered.append(Claim(token, owner, expires_at, asked))
            raise
        held.sort(key=lambda d: d["due"])  # rounds after the first may hold more urgent ones
        # One string object per batch, so a pickled claim holds each batch id once (see Claim.batch_of).
        batches = {d["batch_id"]: d["batch_id"] for d in held}
        return Claim(
            token=token,
            owner=owner,
            expires_at=expires_at,
            ids=[d["_id"] for d in held],
            attempts={d["_id"]: d["attempts"] for d in held},
            batch_ids=sorted(batches.values()),
            batch_of={d["_id"]: batches[d["batch_id"]] for d in held},
        )

    def _first(
        self, wanted: int, now: dt.datetime, queues: Sequence[str], aging_seconds: float | None, shares: TenantShares
    ) -> list[dict[str, Any]]:
        """The `wanted` most urgent claimable contexts of the queues (their ids, tries, order, batches)."""
        found: list[dict[str, Any]] = []
        for queue in dict.fromkeys(queues):
            found += self.shared.first(queue, wanted, now, aging_seconds, shares)
        if len(queues) > 1:
            found.sort(key=lambda d: d["due"])
        return found[:wanted]

    def release_unanswered(self) -> int:
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
        retry_at: RetryAt = None,
        release: Iterable[str] = (),
        deferred: Set[str] = frozenset(),
    ) -> WriteReport:
        # A settled context keeps its last lease (users never see it): its token says which
        # claim made the last change, so a partly fenced-out write can tell what it lost, and
        # leaving it costs the server less than removing it. Only `processing` is held.
        contexts = self.connection.contexts
        fence = held_by(claim.token)
        finished_ms = epoch_ms(utcnow())
        ops: list[UpdateOne | UpdateMany | ReplaceOne[dict[str, Any]]] = [
            UpdateOne(
                {"_id": cid, **fence},
                {
                    "$set": {"status": Status.COMPLETED.value, "result": result, "finished_ms": finished_ms},
                    "$unset": {"error": ""},
                    **_stamp("finished_at"),
                },
            )
            for cid, result in (results or {}).items()
        ]
        if errors:
            ops += self._failure_ops(errors, retry_at, claim.token, deferred)
        released = list(release)
        if released:
            # Back to `pending` as if never claimed; the lease stays, as on every settled context.
            ops.append(
                UpdateMany(
                    held_of(claim.token, released),
                    {"$set": {"status": Status.PENDING.value}, "$inc": {"attempts": -1}},
                )
            )
        ids = [*(results or {}), *(errors or {}), *released]
        if not ops:
            return WriteReport(0, sorted(ids))
        written = contexts.bulk_write(ops, ordered=False).modified_count
        lost: list[str] = []
        if written < len(ids):
            # Lost: under another lease now, or under none (reaped).
            lost = sorted(
                d["_id"] for d in contexts.find({"_id": {"$in": ids}, "lease.token": {"$ne": claim.token}}, {"_id": 1})
            )
        # Only the results written count: a lost one is another lease's to write (and to count).
        gone = set(lost)
        kept = {cid: result for cid, result in (results or {}).items() if cid not in gone}
        by_batch = usage_by_batch(kept, claim.batch_of)
        try:
            self._touch(claim.batch_ids, by_batch)
        except ConnectionFailure as exc:
            # The contexts are written. A settle the outage cut off is tried again (a partition's
            # results are kept through it), and a second `$inc` would count these tokens twice:
            # so the stamp is left undone and the tokens uncounted, as when a loop dies here.
            log.warning("batches' usage and stamp not written (%s): the database went away", type(exc).__name__)
        return WriteReport(written, lost, summed(by_batch.values()))

    def complete(self, claim: Claim, results: Mapping[str, Any]) -> WriteReport:
        return self.settle(claim, results=results)

    def fail(self, claim: Claim, errors: Mapping[str, Mapping[str, Any]], retry_at: RetryAt = None) -> WriteReport:
        return self.settle(claim, errors=errors, retry_at=retry_at)

    def release(self, claim: Claim, ids: Iterable[str] | None = None) -> WriteReport:
        return self.settle(claim, release=claim.ids if ids is None else ids)

    def _failure_ops(
        self,
        errors: Mapping[str, Mapping[str, Any]],
        retry_at: RetryAt,
        token: str,
        deferred: Set[str],
    ) -> list[ReplaceOne[dict[str, Any]]]:
        # Whole-document replaces, fenced like the rest: the only way to store a future
        # `next_attempt_at` as a date on nx-27017 (see the module's note).
        now = utcnow()
        held = self.connection.contexts.find(held_of(token, list(errors)))
        fence = held_by(token)
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

    def load(self, claim: Claim) -> list[dict[str, Any]]:
        # Found by their ids (there is no lease index: it would cost every status change). Whole
        # documents, as nx-27017 projects in Python, which costs it more than sending the rest.
        found = in_one_reply(self.connection.contexts.find(held_of(claim.token, claim.ids)), len(claim))
        by_id = {d["_id"]: d for d in found}
        return [by_id[i] for i in claim.ids if i in by_id]  # claim order, not the server's

    def claimable(self, limit: int, queues: Sequence[str] = (DEFAULT_QUEUE,)) -> int:
        found = 0
        for queue in dict.fromkeys(queues):
            if found < limit:
                matching = self.connection.contexts.find(claimable_now(utcnow(), queue), {"_id": 1})
                found += len(list(matching.limit(limit - found)))
        return found

    def held(self, claim: Claim) -> Claim:
        still = {d["_id"] for d in self.connection.contexts.find(held_of(claim.token, claim.ids), {"_id": 1})}
        return claim.subset([cid for cid in claim.ids if cid in still])

    def renew(self, claim: Claim, lease_seconds: float = LEASE_SECONDS) -> int:
        expires_at = utcnow() + dt.timedelta(seconds=lease_seconds)
        # The whole lease is written: a dotted `$set` of a datetime is stored as a string.
        lease = _lease(claim.owner, claim.token, expires_at)
        found = held_of(claim.token, claim.ids)
        held = self.connection.contexts.update_many(found, {"$set": {"lease": lease}}).matched_count
        claim.expires_at = expires_at
        return held

    def reap_expired(self, max_attempts: int | None = None) -> int:
        contexts = self.connection.contexts
        expired = {"status": eq(Status.PROCESSING.value), "lease.expires_ms": {"$lt": epoch_ms(utcnow())}}
        reaped = 0
        if max_attempts is not None:
            reaped += contexts.update_many(
                {**expired, "attempts": {"$gte": max_attempts}},
                {
                    "$set": {
                        "status": Status.FAILED.value,
                        "finished_ms": epoch_ms(utcnow()),
                        "error": {
                            "type": "LeaseExpired",
                            "traceback": "",
                            "message": "the process running it stopped before finishing",
                        },
                    },
                    "$unset": {"lease": ""},
                    **_stamp("finished_at"),
                },
            ).modified_count
        reaped += contexts.update_many(
            expired,
            {
                "$set": {"status": Status.PENDING.value, "next_attempt_ms": epoch_ms(utcnow())},
                "$unset": {"lease": ""},
                **_stamp("next_attempt_at"),
            },
        ).modified_count
        return reaped

    def _touch(self, batch_ids: list[str], usage: Mapping[str, Mapping[str, int]] | None = None) -> None:
        """Stamp the batches' `updated_at` and add each one's `usage`: one write for all of them.

        The usage is added after the contexts' own write (there are no transactions): a loop that
        dies in between leaves those tokens uncounted, never counted twice.
        """
        usage = usage or {}
        ops: list[UpdateOne | UpdateMany] = [
            UpdateOne(
                {"_id": eq(batch_id)},
                {"$inc": {f"usage.{kind}": n for kind, n in used.items()}, **_stamp("updated_at")},
            )
            for batch_id, used in usage.items()
        ]
        rest = [batch_id for batch_id in batch_ids if batch_id not in usage]
        if rest:
            ops.append(UpdateMany({"_id": {"$in": rest}}, _stamp("updated_at")))
        if ops:
            self.connection.batches.bulk_write(ops, ordered=False)

    def cancel(self, batch_id: str) -> int:
        self.views.batch_document(batch_id)
        changed = self.connection.contexts.update_many(
            {"batch_id": eq(batch_id), "status": eq(Status.PENDING.value)},
            {"$set": {"status": Status.CANCELLED.value}, **_stamp("finished_at")},
        ).modified_count
        self._touch([batch_id])
        running = self.connection.contexts.find_one(
            {"batch_id": eq(batch_id), "status": eq(Status.PROCESSING.value)}, {"_id": 1}
        )
        if changed or running:
            # When the cancel was first asked (OpenAI's `cancelling_at`); kept by a second cancel.
            self.connection.batches.update_one(
                {"_id": eq(batch_id), "cancelled_at": {"$exists": False}}, _stamp("cancelled_at")
            )
        return changed

    def retry(self, batch_id: str, *, expired: bool = False) -> int:
        batch = self.views.batch_document(batch_id)
        status = Status.EXPIRED if expired else Status.FAILED
        if expired and batch.get("window_seconds"):
            # A fresh window, set before the contexts are pending again, so none is without one.
            due = deadline_ms(batch["window_seconds"])
            fresh = {"deadline_ms": due, "expires_ms": due}
            self.connection.batches.update_one({"_id": eq(batch_id)}, {"$set": fresh, "$unset": {"expired_at": ""}})
        changed = self.connection.contexts.update_many(
            {"batch_id": eq(batch_id), "status": eq(status.value)},
            {
                "$set": {"status": Status.PENDING.value, "attempts": 0, "next_attempt_ms": epoch_ms(utcnow())},
                "$unset": {"finished_at": "", "finished_ms": ""},
                **_stamp("next_attempt_at"),
            },
        ).modified_count
        self._touch([batch_id])
        return changed
