"""Submissions that are all or nothing on any MongoDB: staged in chunks, committed by one update.

A submission streams in: its records are validated and encoded in chunks (at most CHUNK_CONTEXTS
contexts or CHUNK_BYTES of BSON), and each chunk is written to `staged` as one document holding its
contexts as BSON bytes, under a document in `submissions` in state `staging` that carries a lease
(owner, token, expiry), renewed while the input streams. Nothing of it is in `contexts` or `batches`
yet: not claimable, counted or shown. When the last chunk is stored, ONE single-document update sets
the submission `committed` — the commit point, and the acknowledgement: `submit` returns the batch
id right after it (the CLI prints it, the API answers 202), so a batch id was given exactly when the
whole submission will be processed. The move into the queue follows (io/moves.py).

A refused or interrupted submission is deleted at once when possible; otherwise the janitor
(io/moves.py `tidy`, run by the loop's reaper and at the start of every submit and CLI command)
deletes the staging of a submission whose lease expired before its commit, and finishes moving a
committed one in. No multi-document transaction is needed, so it works on a standalone mongod as on
nx-27017.

With an idempotency key (io/idempotency.py), the key is taken before anything is staged: a retry
of a committed submission is answered as it was and stores nothing; one whose first attempt is
still being stored waits for it (or is refused as in progress: the HTTP API's 409).

Contexts are held as BSON bytes, not as subdocuments: a payload may nest to MongoDB's limit inside
its context document, which nested two levels deeper in a chunk document would pass; and the bytes
go back into `contexts` exactly as encoded (dates included).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import bson
from bson import ObjectId
from pymongo.errors import ConnectionFailure, PyMongoError

from ctxbatch.config import DEFAULT_QUEUE
from ctxbatch.errors import IdempotencyKeyInUse, IdempotencyKeyReused, SubmitError
from ctxbatch.io import moments
from ctxbatch.io.connection import Connection
from ctxbatch.io.deadlines import deadline_ms, window_seconds
from ctxbatch.io.idempotency import Fingerprint, FirstAnswer, Held, IdempotencyKeys, validate_key
from ctxbatch.io.moves import COMMITTED, MOVE_LEASE_SECONDS, STAGING, Moves, expires_ms
from ctxbatch.io.openai_batch import records_of
from ctxbatch.io.ordering import QueueOrders
from ctxbatch.io.schema import (
    MAX_BSON_BYTES,
    ContextRequest,
    context_document,
    eq,
    iter_requests,
    utcnow,
    validate_name,
    validate_queue,
    validate_tenant,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("ctxbatch.io.staging")

CHUNK_CONTEXTS = 5_000
# A chunk document holds its contexts' BSON plus a few small fields.
CHUNK_BYTES = MAX_BSON_BYTES - 32 * 1024
LEASE_SECONDS = 60.0
# How often a retry waiting for the first submission with its idempotency key looks again.
KEY_POLL_SECONDS = 0.2


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
    """One submission on its way in: chunks staged under a lease, then committed (and moved, io/moves.py)."""

    def __init__(
        self,
        connection: Connection,
        options: BatchOptions,
        idempotency_key: str | None = None,
        aging_seconds: float | None = None,
    ) -> None:
        self.connection = connection
        self.options = options
        self.idempotency_key = idempotency_key
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
        return {"owner": _owner(), "token": self.token, "expires_ms": expires_ms(seconds)}

    def _mine(self) -> dict[str, Any]:
        return {"_id": self.batch_id, "lease.token": eq(self.token)}

    def begin(self) -> None:
        batch = self.options.batch_fields()
        if self.idempotency_key is not None:
            batch["idempotency_key"] = self.idempotency_key  # kept on the batch document
        self.connection.submissions.insert_one(
            {
                "_id": self.batch_id,
                "state": STAGING,
                "batch": batch,
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
        moments.reached(moments.STAGING)

    def commit(self, fingerprint: str | None = None) -> None:
        """The commit point: one single-document update, only while this lease holds the submission.

        When the update's answer is lost (the connection or the server went down), it may have been
        applied: the submission's state is read back, so that a submission is refused only when it
        is not committed, never acknowledged as failed and then moved into the queue anyway.
        `fingerprint` is its content's, kept for retries with its idempotency key.
        """
        moments.reached(moments.COMMIT)
        uncommitted = {**self._mine(), "state": eq(STAGING)}
        fields = {"state": COMMITTED, "total": self.count, "lease": self._lease(MOVE_LEASE_SECONDS)}
        if self.options.window_seconds is not None:
            # The window runs from the acknowledgement, so a slow upload does not eat it; set here, so a
            # batch read while it still moves in shows its deadline. `expires_ms` stays to be shown;
            # `deadline_ms` goes once acted on (io/deadlines.py).
            due = deadline_ms(self.options.window_seconds)
            fields.update({"batch.deadline_ms": due, "batch.expires_ms": due})
        if self.tenanted:
            fields["batch.tenanted"] = True
        committed = {"$set": {**fields, **({"fingerprint": fingerprint} if fingerprint else {})}}
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

    def abandon(self) -> bool:
        """Best effort: delete what was staged (the janitor does it later if the database is away).

        True when its record was deleted here, before any commit: then it never will be committed.
        """
        submissions = self.connection.submissions
        try:
            deleted = bool(submissions.delete_one({**self._mine(), "state": eq(STAGING)}).deleted_count)
            # Gone already (the janitor, or a retry that took its idempotency key, dropped it): chunks
            # staged since then would be left to nobody.
            if deleted or submissions.find_one({"_id": eq(self.batch_id)}, {"_id": 1}) is None:
                self.connection.staged.delete_many({"batch_id": eq(self.batch_id)})
            return deleted
        except PyMongoError as exc:
            log.info("submission %s: staging left for the janitor (%s)", self.batch_id, type(exc).__name__)
        return False


@dataclass
class Chunk:
    """Contexts staged as one document: their BSON, and the user's record of each keyed one by its id."""

    documents: list[bytes] = field(default_factory=list)
    size: int = 0
    keyed: dict[str, int] = field(default_factory=dict)


def _encoded(requests: Iterable[ContextRequest], stager: Stager) -> Iterator[Chunk]:
    """The requests as BSON context documents, in chunks of at most CHUNK_CONTEXTS and CHUNK_BYTES."""
    chunk = Chunk()
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
        if chunk.documents and (len(chunk.documents) >= CHUNK_CONTEXTS or chunk.size + len(encoded) > CHUNK_BYTES):
            yield chunk
            chunk = Chunk()
        chunk.documents.append(encoded)
        chunk.size += len(encoded)
        if request.key is not None:
            chunk.keyed[context_id] = position
    if chunk.documents:
        yield chunk


def _refuse_known_keys(connection: Connection, chunk: Chunk) -> None:
    """A chunk's keys already in `contexts` refuse the submission, naming the user's record."""
    if chunk.keyed:
        found = connection.contexts.find_one({"_id": {"$in": list(chunk.keyed)}}, {"batch_id": 1})
        if found:
            message = f"{found['_id']!r} already exists (batch {found['batch_id']})"
            raise SubmitError(chunk.keyed[found["_id"]], "key", message)


def _stage_behind(chunks: Iterator[Chunk], stage: Callable[[Chunk], None]) -> None:
    """Stage each chunk in a thread while the next is read, validated and encoded.

    The server stores one chunk while this process makes the next: the two take turns otherwise.
    At most two chunks are held. Whatever fails first (a record, a chunk's write) stops both, and
    no chunk is still being written when this returns or raises: what abandon() deletes is all.
    Of two refusals, the earlier record's is raised, as when the two took turns.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="ctxbatch-stage") as writer:
        staging: Future[None] | None = None
        try:
            for chunk in chunks:
                if staging is not None:
                    staging.result()
                staging = writer.submit(stage, chunk)
        except SubmitError:
            # A record of this chunk is refused while the chunk before it is being written: that
            # chunk's own refusal (a key already stored) names an earlier record.
            earlier = staging.exception() if staging is not None else None
            if isinstance(earlier, SubmitError):
                raise earlier from None
            raise
        if staging is not None:
            staging.result()


def as_records(source: Iterable[Any] | pd.DataFrame) -> Iterable[Any]:
    """What `submit` accepts: records (dicts, streamed as given), or a DataFrame with a `payload` column."""
    pd = sys.modules.get("pandas")  # not imported here: a DataFrame means pandas was imported already
    if pd is None or not isinstance(source, pd.DataFrame):
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


@dataclass(frozen=True)
class Submitted:
    """How a submission was answered: its batch, how many contexts, and whether it was a replay
    (a retry with an idempotency key, answered as the first was, with nothing stored)."""

    batch_id: str
    count: int
    replayed: bool = False


class Submissions:
    """Submissions on their way in: staged, committed (acknowledged), moved in; their idempotency keys."""

    def __init__(self, connection: Connection, moves: Moves, keys: IdempotencyKeys) -> None:
        self.connection = connection
        self.moves = moves
        self.keys = keys

    def submit(
        self,
        records: Iterable[Any] | pd.DataFrame,
        priority: int | None,
        options: BatchOptions,
        form: str | None = None,
        *,
        idempotency_key: str | None = None,
        wait: bool = True,
    ) -> Submitted:
        """Stage and commit a submission, then start its move in (see the module's note).

        `form` "openai" reads the records as OpenAI batch lines; None recognises them by the first.
        With `idempotency_key`, a submission already committed under it is answered again (or
        refused, IdempotencyKeyReused, when the content differs); one still being stored is waited
        for (`wait`) or refused (IdempotencyKeyInUse).
        """
        key = None if idempotency_key is None else validate_key(idempotency_key)
        requests = iter_requests(records_of(as_records(records), form), priority)
        self.connection.ensure_indexes()
        self.moves.tidy()
        stager = Stager(self.connection, options, key, QueueOrders(self.connection).aging_of(options.queue))
        fingerprint = Fingerprint(options.batch_fields())
        stager.begin()
        held: Held | FirstAnswer = Held.RESERVED
        try:
            if key is not None:
                requests = fingerprint.through(requests)
                # Taken after `begin`: a key always names a submission that exists or existed.
                held = self.keys.reserve(key, stager.batch_id)
                if held is Held.IN_PROGRESS and not wait:
                    raise IdempotencyKeyInUse(key)
            if not isinstance(held, FirstAnswer):
                _stage_behind(_encoded(requests, stager), self._stage_one(stager))
                if key is not None and held is Held.IN_PROGRESS:
                    held = self._wait_for_first(key, stager)
            if isinstance(held, FirstAnswer):
                assert key is not None
                stager.abandon()
                return _replay(key, held, fingerprint, requests)
            if not stager.count:
                raise SubmitError(None, None, "the submission holds no contexts")
            stager.commit(fingerprint.hexdigest() if key is not None else None)
        except BaseException:
            if stager.abandon() and key is not None:
                self.keys.release(key, stager.batch_id)
            raise
        # Acknowledged: whatever happens to this process now, the janitor finishes the move.
        self.moves.start(stager.batch_id)
        return Submitted(stager.batch_id, stager.count)

    def _stage_one(self, stager: Stager) -> Callable[[Chunk], None]:
        def stage(chunk: Chunk) -> None:
            _refuse_known_keys(self.connection, chunk)
            stager.stage(chunk.documents)

        return stage

    def _wait_for_first(self, key: str, stager: Stager) -> Held | FirstAnswer:
        """Wait while the first submission with `key` is being stored (this one staged meanwhile):
        its answer, or the key, taken over when it was never committed."""
        log.warning("idempotency key %r: a submission with it is still being stored; waiting for it", key)
        while True:
            time.sleep(KEY_POLL_SECONDS)
            stager.renew()
            held = self.keys.reserve(key, stager.batch_id)
            if held is not Held.IN_PROGRESS:
                return held

    def refuse(self, options: BatchOptions, errors: list[dict[str, Any]]) -> str:
        """A batch that failed before any of it was stored, as OpenAI's Batch API keeps one: its
        document alone, `failed_at` and the `errors`, no contexts; its id."""
        batch_id = str(ObjectId())
        now = utcnow()
        document = {"_id": batch_id, **options.batch_fields(), "total": 0, "errors": errors}
        self.connection.batches.insert_one({**document, "created_at": now, "updated_at": now, "failed_at": now})
        return batch_id


def _replay(key: str, first: FirstAnswer, fingerprint: Fingerprint, requests: Iterable[ContextRequest]) -> Submitted:
    """The first answer again when this content is the first's (read to its end for its fingerprint)."""
    try:
        for _ in requests:
            pass
    except SubmitError:
        raise IdempotencyKeyReused(key, first.batch_id) from None  # the first's content was valid
    if fingerprint.hexdigest() != first.fingerprint:
        raise IdempotencyKeyReused(key, first.batch_id)
    return Submitted(first.batch_id, first.count, replayed=True)
