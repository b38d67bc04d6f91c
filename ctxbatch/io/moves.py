"""Committed submissions on their way into the queue, and the janitor of submissions whose submitter left.

A submission is acknowledged at its commit (io/staging.py): `store.submit` returns the batch id
right after that one update, and the move into the queue follows in a thread of the submitting
process (`start`). The move is idempotent: the batch document is written first, each staged chunk
goes into `contexts` with the ids given at encoding (a resumed move skips what is there), the
idempotency key's answer is written, and the submission's record goes last. It runs under a short
lease renewed per chunk; when its process dies, the janitor (`tidy`, every loop's upkeep, every
submit and CLI command) or a reader that needs the batch whole (`await_moved`) takes it over once
that lease has expired.

Until the move is done, readers see the batch whole anyway: its document is read from the
submission when not written yet, and its contexts not yet moved count as pending (io/views.py);
the store that submitted waits for its own moves before it claims or lists (io/store.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from typing import Any

import bson
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from ctxbatch.config import DEFAULT_QUEUE
from ctxbatch.io import moments
from ctxbatch.io.connection import Connection
from ctxbatch.io.deadlines import deadline_ms
from ctxbatch.io.idempotency import IdempotencyKeys
from ctxbatch.io.ordering import QueueOrders
from ctxbatch.io.schema import epoch_ms, eq, utcnow

log = logging.getLogger("ctxbatch.io.moves")

STAGING = "staging"
COMMITTED = "committed"
# A committed submission's move is leased for less than its staging, renewed per chunk: a loop waiting
# for it (see `arriving`) takes over this soon after its submitter stopped. Taking over early costs
# nothing but work done twice: the move is idempotent.
MOVE_LEASE_SECONDS = 5.0
DUPLICATE_KEY = 11000
# How often a reader waiting for another process's move looks again.
POLL_SECONDS = 0.05


def expires_ms(seconds: float) -> int:
    return epoch_ms(utcnow() + dt.timedelta(seconds=seconds))


# A staged chunk's contexts as the bytes they were encoded to: inserted as they are, never decoded
# and encoded again (only an id is read, from a duplicate key's document).
AS_STAGED: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)


def _move(connection: Connection, batch_id: str, documents: list[RawBSONDocument]) -> None:
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


class Moves:
    """Committed submissions moving into `contexts` and `batches`; the janitor of the others."""

    def __init__(self, connection: Connection, keys: IdempotencyKeys) -> None:
        self.connection = connection
        self.keys = keys
        self._own: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    # -- this process's moves ------------------------------------------------------------------

    def start(self, batch_id: str) -> None:
        """Move a just-committed submission in, in a thread of this process (not a daemon: an exiting
        interpreter waits for it; a killed one leaves it to the janitor)."""
        thread = threading.Thread(target=self._move_in_quietly, args=(batch_id,), name=f"ctxbatch-move-{batch_id}")
        with self._lock:
            self._own[batch_id] = thread
        thread.start()

    def _move_in_quietly(self, batch_id: str) -> None:
        try:
            moments.reached(moments.ACKNOWLEDGED)
            self.move_in(batch_id)
        except PyMongoError as exc:
            # Committed, so whole and durable: the janitor moves it in when the database is back.
            log.warning("batch %s is stored; its move into the queue finishes later (%s)", batch_id, exc)
        except Exception:
            log.exception("batch %s is stored; its move into the queue stopped and finishes later", batch_id)
        finally:
            with self._lock:
                self._own.pop(batch_id, None)

    def wait_own(self, batch_id: str | None = None) -> None:
        """Wait for this process's moves (of the batch, when given); at once when there are none."""
        with self._lock:
            threads = list(self._own.values()) if batch_id is None else [self._own.get(batch_id)]
        for thread in threads:
            if thread is not None and thread is not threading.current_thread():
                thread.join()

    def await_moved(self, batch_id: str) -> None:
        """Return once the batch is wholly in the queue, whoever moves it: taken over when its mover stopped."""
        self.wait_own(batch_id)
        while True:
            moving = self.committed(batch_id)
            if moving is None:
                return
            if moving["lease"]["expires_ms"] < epoch_ms(utcnow()):
                self.move_in(batch_id)
                return
            time.sleep(POLL_SECONDS)

    # -- any process's ----------------------------------------------------------------------------

    def committed(self, batch_id: str) -> dict[str, Any] | None:
        """The record of the batch's submission while it is committed and not yet wholly moved in."""
        return self.connection.submissions.find_one({"_id": eq(batch_id), "state": eq(COMMITTED)})

    def move_in(self, batch_id: str) -> None:
        """Move a committed submission into `contexts` and `batches`, then drop its staging; idempotent.

        The move's lease is renewed before each chunk, so nobody takes over a move that is going on.
        """
        submissions, staged = self.connection.submissions, self.connection.staged
        submission = self.committed(batch_id)
        if submission is None:
            return
        stamp = submission["created_at"]
        fields = submission.get("batch", {"name": submission.get("name")})
        if fields.get("window_seconds") is not None and "expires_ms" not in fields:
            # Committed before the commit set the deadline (io/staging.py): it runs from the move.
            fields["deadline_ms"] = fields["expires_ms"] = deadline_ms(fields["window_seconds"])
        # Written first: a resumed move finds it there.
        with contextlib.suppress(DuplicateKeyError):
            self.connection.batches.insert_one(
                {"_id": batch_id, **fields, "total": submission["total"], "created_at": stamp, "updated_at": stamp}
            )
        if fields.get("idempotency_key") is not None:
            self.keys.answered(fields["idempotency_key"], batch_id, submission["total"], submission["fingerprint"])
        for chunk in staged.find({"batch_id": eq(batch_id)}).sort("seq", ASCENDING).batch_size(1):
            submissions.update_one({"_id": batch_id}, {"$set": {"lease.expires_ms": expires_ms(MOVE_LEASE_SECONDS)}})
            _move(self.connection, batch_id, bson.decode_all(chunk["contexts"], AS_STAGED))
            staged.delete_one({"_id": chunk["_id"]})
            moments.reached(moments.MOVE)
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
        never races a submit that is still streaming or moving. Expired idempotency keys go too.
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
        self.keys.forget_expired()
        return settled
