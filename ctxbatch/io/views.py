"""What users see of the queue: batch status, results, listings and pages, counts, queue lengths.

A part of ContextStore, kept apart because reporting and the queue's mechanics (submit, claim,
settle) change for different reasons.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.cursor import Cursor

from ctxbatch.config import DEFAULT_QUEUE
from ctxbatch.display import html_table, iso_time
from ctxbatch.errors import BatchNotFound, ContextNotFound, InvalidCursor
from ctxbatch.io.columns import context_view, results_dataframe
from ctxbatch.io.connection import Connection
from ctxbatch.io.deadlines import Deadlines
from ctxbatch.io.keyset import EPOCH, page_after
from ctxbatch.io.moves import Moves
from ctxbatch.io.schema import NO_TENANT, Status, epoch_ms, in_one_reply, in_replies_of, utcnow
from ctxbatch.io.schema import eq as _eq
from ctxbatch.io.usage import KINDS, no_usage

if TYPE_CHECKING:
    import pandas as pd

# OpenAI's batch fields a batch submitted through /v1/batches (or with them) keeps and shows.
OPENAI_FIELDS = ("endpoint", "completion_window", "metadata", "input_file_id", "model")
# One reply per this many documents when streaming results (nx-27017 answers a getMore slowly).
STREAM_REPLY = 1000
# Batches a listing shows unless told otherwise (`GET /api/batches`, `ctxbatch batches`).
DEFAULT_BATCH_LIST = 100


@dataclass(frozen=True)
class InFlight:
    """The batches under a lease right now, across every loop: one lease token per claimed batch."""

    batches: int
    contexts: int


class Views:
    """Reads of the queue as users see it (ContextStore documents each public method)."""

    def __init__(
        self,
        connection: Connection,
        levels: dict[str, tuple[int, int]],
        moves: Moves,
        deadlines: Deadlines,
    ) -> None:
        self.connection = connection
        self.levels = levels
        self.moves = moves
        self.deadlines = deadlines

    def batch_document(self, batch_id: str) -> dict[str, Any]:
        """The batch's own document; BatchNotFound when there is none.

        A batch acknowledged and not yet moved in has none yet: its submission stands for it.
        """
        if not isinstance(batch_id, str):
            raise BatchNotFound(str(batch_id))
        found = self.connection.batches.find_one({"_id": _eq(batch_id)})
        if found is None:
            moving = self.moves.committed(batch_id)
            if moving is None:
                raise BatchNotFound(batch_id)
            found = {"_id": batch_id, **moving["batch"], "total": moving["total"], "created_at": moving["created_at"]}
        return found

    def counts(self, batch_id: str) -> dict[str, int]:
        # Read before the counts: what a move in progress has not brought into the queue yet is pending.
        moving = self.moves.committed(batch_id)
        counts = self._count_by_status({"batch_id": _eq(batch_id)})
        if moving is not None:
            counts[Status.PENDING.value] += max(0, moving["total"] - sum(counts.values()))
        return {"total": sum(counts.values()), **counts}

    def count(self, match: dict[str, Any]) -> int:
        """How many contexts match: the `count` command, which both servers answer from an index.

        Not an aggregate: nx-27017 counts the whole collection before every aggregate (a cost that
        grows with history), and pymongo's count_documents is an aggregate (seconds at 100k there).
        """
        contexts = self.connection.contexts
        return int(contexts.database.command("count", contexts.name, query=match)["n"])

    def _count_by_status(self, match: dict[str, Any] | None = None) -> dict[str, int]:
        return {s.value: self.count({**(match or {}), "status": _eq(s.value)}) for s in Status}

    def batch_status(self, batch_id: str, *, per_tenant: bool = True) -> BatchStatus:
        """The batch's status; with `per_tenant`, its counts per tenant too when it has tenants (listings
        leave them out: they cost an aggregate per status)."""
        batch = self.batch_document(batch_id)
        if batch.get("deadline_ms") is not None and batch["deadline_ms"] <= epoch_ms(utcnow()):
            # Read after its deadline and before any loop saw it: expire now, so the status is true.
            self.deadlines.expire_due()
            batch = self.batch_document(batch_id)
        counts = self.counts(batch_id)
        deadline = batch.get("expires_ms")
        return BatchStatus(
            {
                "batch_id": batch_id,
                "name": batch.get("name"),
                "queue": batch.get("queue", DEFAULT_QUEUE),
                # A batch refused as OpenAI refuses one (io/files.py) has no contexts to derive from.
                "status": Status.FAILED.value if batch.get("failed_at") else derive_status(counts),
                "counts": counts,
                "usage": batch_usage(batch),
                "created_at": iso_time(batch["created_at"]),
                "updated_at": iso_time(batch.get("updated_at", batch["created_at"])),
                "expires_at": None if deadline is None else iso_time(_from_ms(deadline)),
                "expired_at": _iso(batch.get("expired_at")),
                "cancelled_at": _iso(batch.get("cancelled_at")),
                "failed_at": _iso(batch.get("failed_at")),
                **({"errors": batch["errors"]} if batch.get("errors") else {}),
                **({"tenants": self.counts_by_tenant(batch_id)} if per_tenant and batch.get("tenanted") else {}),
                **{field: batch[field] for field in OPENAI_FIELDS if field in batch},
            }
        )

    def counts_by_tenant(self, batch_id: str) -> dict[str, dict[str, int]]:
        """A batch's contexts by tenant and status ("" for those of no tenant), for a batch that names tenants.

        Per status, one aggregate grouped by tenant over the batch's contexts of that status: nx-27017
        groups by one field in SQL (a compound group key it does not compute).
        """
        found: dict[str, dict[str, int]] = {}
        for status in Status:
            match = {"batch_id": _eq(batch_id), "status": _eq(status.value)}
            grouped = self.connection.contexts.aggregate(
                [{"$match": match}, {"$group": {"_id": "$tenant", "n": {"$sum": 1}}}]
            )
            for row in grouped:
                counts = found.setdefault(row["_id"] or NO_TENANT, dict.fromkeys([s.value for s in Status], 0))
                counts[status.value] += row["n"]
        return {tenant: {"total": sum(c.values()), **c} for tenant, c in sorted(found.items())}

    def queues(self) -> list[str]:
        """Every queue a batch was submitted to, the default first (a distinct over the small `batches`)."""
        named = {name for name in self.connection.batches.distinct("queue") if isinstance(name, str)}
        return [DEFAULT_QUEUE, *sorted(named - {DEFAULT_QUEUE})]

    def iter_results(self, batch_id: str, *, payload: bool = True) -> Iterator[dict[str, Any]]:
        self.batch_document(batch_id)
        projection = None if payload else {"payload": 0}
        found = self.connection.contexts.find({"batch_id": _eq(batch_id)}, projection).sort("sort_id", ASCENDING)
        for doc in in_replies_of(found, STREAM_REPLY):
            yield context_view(doc)

    def results(self, batch_id: str) -> pd.DataFrame:
        return results_dataframe(list(self.iter_results(batch_id)))

    def positions(self, batch_id: str) -> int:
        """How many positions (`sort_id`s) the batch's contexts take: its last one, plus one; 0 when it has none.

        A batch stored before positions existed is given them now, as its first results page does.
        """
        self._numbered(self.batch_document(batch_id))
        where = {"batch_id": _eq(batch_id), "sort_id": {"$gte": 0}}
        last = self.connection.contexts.find_one(where, {"sort_id": 1}, sort=[("sort_id", DESCENDING)])
        return 0 if last is None else int(last["sort_id"]) + 1

    def get_context(self, context_id: str) -> dict[str, Any]:
        found = self.connection.contexts.find_one({"_id": _eq(context_id)}) if isinstance(context_id, str) else None
        if found is None:
            raise ContextNotFound(str(context_id))
        return context_view(found)

    def status_counts(self) -> dict[str, int]:
        return self._count_by_status()

    def in_queues(self, queues: Sequence[str], statuses: Sequence[Status] | None = None) -> int:
        # Counts from the `queue_levels` index (queue, status, ...): one per queue, or per queue and
        # status. Not a status `$in`, which nx-27017 reads row by row (1.4 s at 100k, 20 ms this way).
        where = [{"queue": _eq(queue)} for queue in dict.fromkeys(queues)]
        if statuses is None:
            return sum(self.count(match) for match in where)
        return sum(self.count({**match, "status": _eq(status.value)}) for match in where for status in statuses)

    def drained(self, queues: Sequence[str] | None = None) -> bool:
        waiting = (Status.PENDING.value, Status.PROCESSING.value)
        contexts = self.connection.contexts
        for queue in self.queues() if queues is None else dict.fromkeys(queues):
            if any(contexts.find_one({"queue": _eq(queue), "status": _eq(s)}, {"_id": 1}) for s in waiting):
                return False
        return not self.moves.arriving()

    def within(self, batch_id: str | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
        """Filters that together cover a batch, or every queue (each led by its queue, for the indexes),
        of one tenant when given."""
        of_tenant = {} if tenant is None else {"tenant": _eq(tenant)}
        if batch_id is not None:
            return [{"batch_id": _eq(batch_id), **of_tenant}]
        return [{"queue": _eq(queue), **of_tenant} for queue in self.queues()]

    def queue_length(
        self, status: Status | str = Status.PENDING, batch_id: str | None = None, tenant: str | None = None
    ) -> dict[str, int]:
        # One count per queue: the `queue_order` index's entries (queue, status, ..., priority) serve each; a
        # tenant's, the claim index (queue, status, tenant, ...) and its documents' priorities.
        within = self.within(batch_id, tenant)
        return {
            name: sum(
                self.count({**where, "status": _eq(str(status)), "priority": {"$gte": low, "$lte": high}})
                for where in within
            )
            for name, (low, high) in self.levels.items()
        }

    def by_queue(self, batch_id: str | None = None, tenant: str | None = None) -> dict[str, dict[str, int]]:
        """Pending and processing contexts of each queue (the batch's queue and its own, when given)."""
        waiting = (Status.PENDING.value, Status.PROCESSING.value)
        if batch_id is not None and tenant is None:
            counts = self.counts(batch_id)
            queue = self.batch_document(batch_id).get("queue", DEFAULT_QUEUE)
            return {queue: {status: counts[status] for status in waiting}}
        if batch_id is not None:
            queue = self.batch_document(batch_id).get("queue", DEFAULT_QUEUE)
            (where,) = self.within(batch_id, tenant)
            return {queue: {status: self.count({**where, "status": _eq(status)}) for status in waiting}}
        of_tenant = {} if tenant is None else {"tenant": _eq(tenant)}
        return {
            queue: {status: self.count({"queue": _eq(queue), **of_tenant, "status": _eq(status)}) for status in waiting}
            for queue in self.queues()
        }

    def tenants_waiting(self, limit: int) -> dict[str | None, dict[str, int]]:
        """Pending and processing contexts per named tenant: the `limit` with the most, the rest under None.

        Per queue and status, one seek of the claim index for a named tenant, and only then one
        aggregate grouped by tenant (nx-27017 groups in SQL: ~30 ms at 100k pending).
        """
        found: dict[str, dict[str, int]] = {}
        for queue in self.queues():
            for status in (Status.PENDING.value, Status.PROCESSING.value):
                match = {"queue": _eq(queue), "status": _eq(status)}
                contexts = self.connection.contexts
                if contexts.find_one({**match, "tenant": {"$gt": NO_TENANT}}, {"_id": 1}) is None:
                    continue
                grouped = contexts.aggregate([{"$match": match}, {"$group": {"_id": "$tenant", "n": {"$sum": 1}}}])
                for row in grouped:
                    if row["_id"]:
                        counts = found.setdefault(row["_id"], {"pending": 0, "processing": 0})
                        counts[status] += row["n"]
        ranked = sorted(found.items(), key=lambda item: (-sum(item[1].values()), item[0]))
        shown: dict[str | None, dict[str, int]] = dict(ranked[:limit])
        if len(ranked) > limit:
            rest = [counts for _, counts in ranked[limit:]]
            shown[None] = {status: sum(c[status] for c in rest) for status in ("pending", "processing")}
        return shown

    def in_flight(self) -> InFlight:
        grouped = self.connection.contexts.aggregate(
            [
                {"$match": {"status": _eq(Status.PROCESSING.value)}},
                {"$group": {"_id": "$lease.token", "n": {"$sum": 1}}},
            ]
        )
        sizes = [row["n"] for row in grouped]
        return InFlight(batches=len(sizes), contexts=sum(sizes))

    # -- listing and pages ----------------------------------------------------------------

    def list_batches(
        self, status: Status | str | None = None, limit: int = DEFAULT_BATCH_LIST, queue: str | None = None
    ) -> list[dict[str, Any]]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        wanted = None if status is None else Status(status).value
        # A range on created_at walks the `newest` index on nx-27017, sort included; `{}` scans.
        # The queue is matched here rather than in the filter, which would leave that index.
        self.deadlines.expire_due()
        newest = self.connection.batches.find({"created_at": {"$gte": EPOCH}}, {"_id": 1, "queue": 1}).sort(
            "created_at", DESCENDING
        )
        if wanted is None and queue is None:
            newest = newest.limit(limit)
        found: list[dict[str, Any]] = []
        for batch in newest:
            if queue is not None and batch.get("queue", DEFAULT_QUEUE) != queue:
                continue
            view = self.batch_status(batch["_id"], per_tenant=False)
            if wanted is None or view["status"] == wanted:
                found.append(view)
                if len(found) >= limit:
                    break
        return found

    def batches_after(self, after: str | None, limit: int, having: str | None = None) -> tuple[list[BatchStatus], bool]:
        """Up to `limit` batches older than `after` (newest first, ties by id), only those with the field
        `having` if given; and whether more follow."""
        self.deadlines.expire_due()
        anchor = None if after is None else self.batch_document(after)
        fields = {"_id": 1, "created_at": 1, **({having: 1} if having else {})}
        found, more = page_after(
            self.connection.batches,
            anchor,
            limit,
            fields=fields,
            keep=lambda batch: having is None or batch.get(having) is not None,
        )
        return [self.batch_status(batch["_id"], per_tenant=False) for batch in found], more

    def results_page(
        self, batch_id: str, limit: int = 1000, cursor: str | None = None, *, payload: bool = True
    ) -> tuple[list[dict[str, Any]], str | None]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        batch = self.batch_document(batch_id)
        start = 0 if cursor is None else cursor_offset(cursor)
        if start == 0:
            self._numbered(batch)
        projection = None if payload else {"payload": 0}
        page = self.connection.contexts.find({"batch_id": _eq(batch_id), "sort_id": {"$gte": start}}, projection)
        found = list(in_one_reply(page.sort("sort_id", ASCENDING).limit(limit + 1), limit + 1))
        following = page_cursor(found[limit]["sort_id"]) if len(found) > limit else None
        return [context_view(doc) for doc in found[:limit]], following

    def _numbered(self, batch: Mapping[str, Any]) -> None:
        """A batch stored before `sort_id` existed is given its positions, at its first read by position."""
        if batch.get("total") and self._unnumbered(batch["_id"]):
            self._number_batch(batch["_id"])

    def _unnumbered(self, batch_id: str) -> bool:
        return (
            self.connection.contexts.find_one({"batch_id": _eq(batch_id), "sort_id": {"$gte": 0}}, {"_id": 1}) is None
        )

    def _number_batch(self, batch_id: str) -> None:
        """Give a batch stored before `sort_id` existed its positions, in id order (once, on its first page)."""
        ids = self.connection.contexts.find({"batch_id": _eq(batch_id)}, {"_id": 1}).sort("_id", ASCENDING)
        ops = [UpdateOne({"_id": d["_id"]}, {"$set": {"sort_id": n}}) for n, d in enumerate(ids)]
        for begin in range(0, len(ops), 10_000):
            self.connection.contexts.bulk_write(ops[begin : begin + 10_000], ordered=False)


def _iso(moment: dt.datetime | None) -> str | None:
    return iso_time(moment) if moment else None


def _from_ms(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)


def page_cursor(offset: int) -> str:
    """The opaque cursor of the results page that starts at this `sort_id`."""
    return base64.urlsafe_b64encode(f"o{offset}".encode()).decode().rstrip("=")


def cursor_offset(cursor: str) -> int:
    """The `sort_id` a page cursor starts at; InvalidCursor when it is not one of page_cursor()'s."""
    try:
        text = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidCursor(cursor) from None
    if not (text[:1] == "o" and text[1:].isascii() and text[1:].isdigit() and len(text) <= 16):
        raise InvalidCursor(cursor)
    return int(text[1:])


class BatchStatus(dict[str, Any]):
    """A batch's status: the JSON of DESIGN.md as a plain dict, with a one-line repr and an HTML table."""

    def __repr__(self) -> str:
        counts = self["counts"]
        name = f" {self['name']!r}" if self.get("name") else ""
        return (
            f"<BatchStatus {self['batch_id']}{name} {self['status']}: {counts['completed']} completed, "
            f"{counts['failed']} failed, {counts['pending']} pending, {counts['processing']} processing "
            f"of {counts['total']}>"
        )

    def _repr_html_(self) -> str:
        rows = [("batch", self["batch_id"]), ("name", self.get("name")), ("status", self["status"])]
        rows += list(self["counts"].items())
        usage = self.get("usage") or no_usage()
        rows.append(("tokens", f"{usage['total']:,} ({usage['input']:,} input, {usage['output']:,} output)"))
        rows += [("created", self["created_at"]), ("updated", self["updated_at"])]
        return html_table("Batch status", rows)


def batch_usage(batch: Mapping[str, Any]) -> dict[str, int]:
    """The tokens the batch's completed results reported, summed at settle (zeros when none did)."""
    stored = batch.get("usage")
    return {kind: int(stored.get(kind, 0)) if isinstance(stored, Mapping) else 0 for kind in KINDS}


def derive_status(counts: Mapping[str, int]) -> str:
    """Batch status from its contexts' counts: once nothing waits, cancelled or expired if any was."""
    done = counts["completed"] + counts["failed"]
    stopped = counts["cancelled"] + counts.get("expired", 0)
    if counts["processing"] or (counts["pending"] and (done or stopped)):
        return Status.PROCESSING.value if counts["processing"] or done else Status.PENDING.value
    if counts["pending"]:
        return Status.PENDING.value
    if counts["cancelled"]:
        return Status.CANCELLED.value
    return Status.EXPIRED.value if counts.get("expired", 0) else Status.COMPLETED.value


def between_positions(contexts: Collection[Any], batch_id: str, start: int, stop: int) -> Cursor[Any]:
    """The batch's contexts at positions [start, stop), in order: one range of the `results` index."""
    found = contexts.find({"batch_id": _eq(batch_id), "sort_id": {"$gte": start, "$lt": stop}})
    return in_replies_of(found.sort("sort_id", ASCENDING), STREAM_REPLY)
