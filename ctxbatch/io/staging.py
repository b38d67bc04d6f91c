"""Submissions that are all or nothing on any MongoDB: staged in chunks, committed by one update.

A submission streams in: its records are validated and encoded in chunks (at most CHUNK_CONTEXTS
contexts or CHUNK_BYTES of BSON), and each chunk is written to `staged` as one document holding its
contexts as BSON bytes, under a document in `submissions` in state `staging` that carries a lease
(owner, token, expiry), renewed while the input streams. Nothing of it is in `contexts` or `batches`
yet: not claimable, counted or shown. When the last chunk is stored, ONE single-document update sets
the submission `committed` — the commit point. Then it moves into the queue (`move_in`): the chunks
go into `contexts` (insert_many ordered=False with the ids given at encoding, so a resumed move
skips what is there), the batch document is written, and the staging is deleted.

A refused or interrupted submission is deleted at once when possible; otherwise the janitor
(`tidy`, run by the loop's reaper and at the start of every submit and CLI command) deletes the
staging of a submission whose lease expired before its commit, and finishes moving a committed one
in. No multi-document transaction is needed, so it works on a standalone mongod as on nx-27017.

Contexts are held as BSON bytes, not as subdocuments: a payload may nest to MongoDB's limit inside
its context document, which nested two levels deeper in a chunk document would pass; and the bytes
go back into `contexts` exactly as encoded (dates included).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bson
import pandas as pd
from bson import ObjectId
from pymongo import ASCENDING
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from ctxbatch.config import DEFAULT_QUEUE
from ctxbatch.errors import SubmitError
from ctxbatch.io.connection import Connection
from ctxbatch.io.deadlines import deadline_ms, window_seconds
from ctxbatch.io.openai_batch import records_of
from ctxbatch.io.ordering import QueueOrders
from ctxbatch.io.schema import (
    MAX_BSON_BYTES,
    ContextRequest,
    context_document,
    epoch_ms,
    eq,
    iter_requests,
    utcnow,
    validate_name,
    validate_queue,
    validate_tenant,
)

log = logging.getLogger("ctxbatch.io.staging")

CHUNK_CONTEXTS = 5_000
# A chunk document holds its contexts' BSON plus a few small fields.
CHUNK_BYTES = MAX_BSON_BYTES - 32 * 1024
LEASE_SECONDS = 60.0
# A committed submission's move is leased for less, renewed per chunk: a loop waiting for it (see
# `arriving`) takes over this soon after its submitter stopped. Taking over early costs nothing but
# work done twice: the move is idempotent.
MOVE_LEASE_SECONDS = 5.0
DUPLICATE_KEY = 11000
STAGING = "staging"
COMMITTED = "committed"


def _expires_ms(seconds: float) -> int:
    return epoch_ms(utcnow() + dt.timedelta(seconds=seconds))


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class BatchOptions:
    """What a submission says about its batch as a whole, validated."""

    name: str | None = None
    queue: str = DEFAULT_QUEUE
    window_seconds: float | None = None
    # Fields kept on the batch document as they are (OpenAI's endpoint, completion_window, metadata...).
    extra: dict[str, Any] = field(default_factory=dict)
    # The tenant of the records that name none.
    tenant: str | None = None

    @classmethod
    def of(
        cls,
        name: Any = None,
        queue: Any = DEFAULT_QUEUE,
        completion_window: str | float | None = None,
        extra: dict[str, Any] | None = None,
        tenant: Any = None,
    ) -> BatchOptions:
        """Validated options; SubmitError names the one that is wrong."""
        return cls(
            validate_name(name),
            validate_queue(queue),
            window_seconds(completion_window),
            dict(extra or {}),
            validate_tenant(tenant),
        )

    def batch_fields(self) -> dict[str, Any]:
        """The fields of the batch document these options set."""
        fields: dict[str, Any] = {"name": self.name, "queue": self.queue, **self.extra}
        if self.window_seconds is not None:
            fields["window_seconds"] = self.window_seconds
        if self.tenant is not None:
            fields["tenant"] = self.tenant
        return fields


class Stager:
    """One submission on its way in: chunks staged under a lease, then committed and moved."""

    def __init__(self, connection: Connection, options: BatchOptions, aging_seconds: float | None = None) -> None:
        self.connection = connection
        self.options = options
        # The claim order of its queue when it began (io/ordering.py): every context's `due` follows it.
        self.aging_seconds = aging_seconds
        self.batch_id = str(ObjectId())
        self.token = uuid.uuid4().hex
        self.created_at = utcnow()
        self.count = 0
        self.chunks = 0
        # Whether any of its contexts has a tenant: then its status counts them per tenant.
        self.tenanted = options.tenant is not None
        self._renew_at = 0.0

    def _lease(self, seconds: float = LEASE_SECONDS) -> dict[str, Any]:
        self._renew_at = time.monotonic() + seconds / 3
        return {"owner": _owner(), "token": self.token, "expires_ms": _expires_ms(seconds)}

    def _mine(self) -> dict[str, Any]:
        return {"_id": self.batch_id, "lease.token": eq(self.token)}

    def begin(self) -> None:
        self.connection.submissions.insert_one(
            {
                "_id": self.batch_id,
                "state": STAGING,
                "batch": self.options.batch_fields(),
                "created_at": self.created_at,
                "lease": self._lease(),
            }
        )

    def renew(self) -> None:
        """Extend the lease when a third of it is spent; lost to the janitor means refused."""
        if time.monotonic() < self._renew_at:
            return
        if not self.connection.submissions.update_one(self._mine(), {"$set": {"lease": self._lease()}}).matched_count:
            raise SubmitError(None, None, "the submission stalled past its lease and was cleaned up")

    def stage(self, documents: list[bytes]) -> None:
        self.renew()
        self.connection.staged.insert_one(
            {
                "_id": f"{self.batch_id}:{self.chunks:08d}",
                "batch_id": self.batch_id,
                "seq": self.chunks,
                "n": len(documents),
                "contexts": bson.Binary(b"".join(documents)),
            }
        )
        self.chunks += 1
        self.count += len(documents)

    def commit(self) -> None:
        """The commit point: one single-document update, only while this lease holds the submission.

        When the update's answer is lost (the connection or the server went down), it may have been
        applied: the submission's state is read back, so that a submission is refused only when it
        is not committed, never acknowledged as failed and then moved into the queue anyway.
        """
        uncommitted = {**self._mine(), "state": eq(STAGING)}
        committed = {"$set": {"state": COMMITTED, "total": self.count, "lease": self._lease(MOVE_LEASE_SECONDS)}}
        if self.tenanted:
            committed["$set"]["batch.tenanted"] = True
        try:
            done = self.connection.submissions.update_one(uncommitted, committed).matched_count
        except ConnectionFailure:
            found = self.connection.submissions.find_one(self._mine(), {"state": 1})
            done = found is not None and (
                found["state"] == COMMITTED
                or self.connection.submissions.update_one(uncommitted, committed).matched_count
            )
        if not done:
            raise SubmitError(None, None, "the submission stalled past its lease and was cleaned up")

    def abandon(self) -> None:
        """Best effort: delete what was staged (the janitor does it later if the database is away)."""
        try:
            if self.connection.submissions.delete_one({**self._mine(), "state": eq(STAGING)}).deleted_count:
                self.connection.staged.delete_many({"batch_id": eq(self.batch_id)})
        except PyMongoError as exc:
            log.info("submission %s: staging left for the janitor (%s)", self.batch_id, type(exc).__name__)


def _encoded(requests: Iterable[ContextRequest], stager: Stager) -> Iterator[list[bytes]]:
    """The requests as BSON context documents, in chunks of at most CHUNK_CONTEXTS and CHUNK_BYTES."""
    chunk: list[bytes] = []
    size = 0
    now = stager.created_at
    for position, request in enumerate(requests):
        context_id = request.key if request.key is not None else str(ObjectId())
        document = context_document(
            request,
            context_id,
            stager.batch_id,
            now,
            position,
            stager.options.queue,
            aging_seconds=stager.aging_seconds,
            tenant=stager.options.tenant,
        )
        stager.tenanted = stager.tenanted or request.tenant is not None
        encoded = bson.encode(document)
        if chunk and (len(chunk) >= CHUNK_CONTEXTS or size + len(encoded) > CHUNK_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(encoded)
        size += len(encoded)
    if chunk:
        yield chunk


def _refuse_known_keys(connection: Connection, chunk: list[bytes], first_index: int) -> None:
    """A chunk's keys already in `contexts` refuse the submission, naming the user's record."""
    keyed: dict[str, int] = {}
    for offset, raw in enumerate(chunk):
        document = bson.decode(raw)
        if "key" in document:
            keyed[document["_id"]] = first_index + offset
    if keyed:
        found = connection.contexts.find_one({"_id": {"$in": list(keyed)}}, {"batch_id": 1})
        if found:
            message = f"{found['_id']!r} already exists (batch {found['batch_id']})"
            raise SubmitError(keyed[found["_id"]], "key", message)


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


def _move(connection: Connection, batch_id: str, documents: list[dict[str, Any]]) -> None:
    try:
        connection.contexts.insert_many(documents, ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        # A resumed move finds its own contexts there; a key another batch took in between is not ours.
        ids = [documents[e["index"]]["_id"] for e in errors]
        foreign = connection.contexts.count_documents({"_id": {"$in": ids}, "batch_id": {"$ne": batch_id}})
        if foreign:
            log.warning("batch %s: %d keyed contexts were taken by another batch meanwhile", batch_id, foreign)


class Submissions:
    """Submissions on their way into the queue: staged, committed, moved in; and their janitor."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def submit_counted(
        self,
        records: Iterable[Any] | pd.DataFrame,
        priority: int | None,
        options: BatchOptions,
        form: str | None = None,
    ) -> tuple[str, int]:
        """Stage, commit and move in a submission (see the module's note); (batch id, contexts).

        `form` "openai" reads the records as OpenAI batch lines; None recognises them by the first.
        """
        requests = iter_requests(records_of(as_records(records), form), priority)
        self.connection.ensure_indexes()
        self.tidy()
        return self._stage_and_move_in(requests, options)

    def _stage_and_move_in(self, requests: Iterable[ContextRequest], options: BatchOptions) -> tuple[str, int]:
        stager = Stager(self.connection, options, QueueOrders(self.connection).aging_of(options.queue))
        stager.begin()
        try:
            for chunk in _encoded(requests, stager):
                _refuse_known_keys(self.connection, chunk, stager.count)
                stager.stage(chunk)
            if not stager.count:
                raise SubmitError(None, None, "the submission holds no contexts")
            stager.commit()
        except BaseException:
            stager.abandon()
            raise
        try:
            self.move_in(stager.batch_id)
        except PyMongoError as exc:
            # Committed, so whole and durable: the janitor moves it in when the database is back.
            log.warning("batch %s is stored; its move into the queue finishes later (%s)", stager.batch_id, exc)
        return stager.batch_id, stager.count

    def refuse(self, options: BatchOptions, errors: list[dict[str, Any]]) -> str:
        """A batch that failed before any of it was stored, as OpenAI's Batch API keeps one: its
        document alone, `failed_at` and the `errors`, no contexts; its id."""
        batch_id = str(ObjectId())
        now = utcnow()
        document = {"_id": batch_id, **options.batch_fields(), "total": 0, "errors": errors}
        self.connection.batches.insert_one({**document, "created_at": now, "updated_at": now, "failed_at": now})
        return batch_id

    def move_in(self, batch_id: str) -> None:
        """Move a committed submission into `contexts` and `batches`, then drop its staging; idempotent.

        The move's lease is renewed before each chunk, so nobody takes over a move that is going on.
        """
        submissions, staged = self.connection.submissions, self.connection.staged
        submission = submissions.find_one({"_id": eq(batch_id)})
        if submission is None or submission["state"] != COMMITTED:
            return
        stamp = submission["created_at"]
        fields = submission.get("batch", {"name": submission.get("name")})
        if fields.get("window_seconds") is not None:
            # The window runs from when the batch becomes visible, so a slow upload does not eat it.
            # `expires_ms` stays to be shown; `deadline_ms` goes once acted on (io/deadlines.py).
            fields["deadline_ms"] = fields["expires_ms"] = deadline_ms(fields["window_seconds"])
        # Written first: a resumed move finds it there.
        with contextlib.suppress(DuplicateKeyError):
            self.connection.batches.insert_one(
                {"_id": batch_id, **fields, "total": submission["total"], "created_at": stamp, "updated_at": stamp}
            )
        for chunk in staged.find({"batch_id": eq(batch_id)}).sort("seq", ASCENDING).batch_size(1):
            submissions.update_one({"_id": batch_id}, {"$set": {"lease.expires_ms": _expires_ms(MOVE_LEASE_SECONDS)}})
            _move(self.connection, batch_id, bson.decode_all(chunk["contexts"]))
            staged.delete_one({"_id": chunk["_id"]})
        if fields.get("tenanted"):
            # Once all of it is in: a loop that counts its tenants now finds them (io/tenants.py).
            QueueOrders(self.connection).note_tenants(fields.get("queue", DEFAULT_QUEUE))
        submissions.delete_one({"_id": batch_id})

    def arriving(self) -> bool:
        """Whether a committed submission is still on its way into the queue: work a drained queue waits for."""
        return self.connection.submissions.find_one({"state": eq(COMMITTED)}, {"_id": 1}) is not None

    def tidy(self) -> int:
        """The janitor: drop the staging of expired uncommitted submissions, move committed ones in.

        Returns how many submissions it settled. Acts only on submissions whose lease expired, so it
        never races a submit that is still streaming or moving.
        """
        submissions = self.connection.submissions
        now_ms = epoch_ms(utcnow())
        settled = 0
        for submission in submissions.find({"lease.expires_ms": {"$lt": now_ms}}, {"state": 1}):
            batch_id = submission["_id"]
            if submission["state"] == COMMITTED:
                self.move_in(batch_id)
            elif submissions.delete_one(
                {"_id": batch_id, "state": eq(STAGING), "lease.expires_ms": {"$lt": now_ms}}
            ).deleted_count:
                self.connection.staged.delete_many({"batch_id": eq(batch_id)})
            settled += 1
        return settled
