"""Idempotency keys, as Stripe's API has them: a submission retried with its key gets the first answer.

A key is held in `idempotency`, one document per key: `{_id: key, batch_id, expires_ms}`, and
once its submission is committed also the answer it got (`fingerprint`, `count`). The document
is written before anything is staged, naming the batch id the attempt will commit under; the
commit itself stays the one update of the submission (io/staging.py), so the truth about a key
whose answer is not written yet is its submission: committed (answer it), still staging under a
live lease (in progress: HTTP 409), or gone or stalled past its lease (never committed: the key
is free again, taken over by a compare-and-set on the document).

Content is compared by its fingerprint: a SHA-256 of the batch's options and each validated
request in canonical JSON, updated as the submission streams, so it is never held whole.

A key is kept `api.idempotency_hours` from its first use. nx-27017 honours no TTL index, so an
expired key is treated as absent when met, and the janitor deletes expired keys now and then.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pymongo.errors import DuplicateKeyError

from ctxbatch.errors import SubmitError
from ctxbatch.io.connection import Connection
from ctxbatch.io.schema import ContextRequest, epoch_ms, eq, utcnow

MAX_KEY_LENGTH = 255
# A few rounds of compare-and-set against other attempts with the same key, then the key is busy.
RESERVE_ROUNDS = 5
COMMITTED = "committed"  # io/staging.py's state of a committed submission


def validate_key(key: Any) -> str:
    """An idempotency key: 1 to 255 printable characters (Stripe's limit), or SubmitError."""
    if not (isinstance(key, str) and 0 < len(key) <= MAX_KEY_LENGTH and key.isprintable()):
        shown = key if not isinstance(key, str) else f"{len(key)} characters"
        raise SubmitError(None, "idempotency_key", f"must be 1 to {MAX_KEY_LENGTH} printable characters, got {shown}")
    return key


class Fingerprint:
    """The SHA-256 of a submission's content in canonical JSON, updated as its requests stream by."""

    def __init__(self, options: Mapping[str, Any]) -> None:
        self._hash = hashlib.sha256(_canonical(options))

    def through(self, requests: Iterable[ContextRequest]) -> Iterator[ContextRequest]:
        """The requests as they are, each added to the fingerprint as it passes."""
        for request in requests:
            fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
            self._hash.update(_canonical(fields))
            yield request

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _canonical(value: Any) -> bytes:
    # A record separator after each value: two requests never hash as one.
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return text.encode("utf-8") + b"\x1e"


@dataclass(frozen=True)
class FirstAnswer:
    """What the first submission with a key was answered: its batch, how many contexts, its fingerprint."""

    batch_id: str
    count: int
    fingerprint: str


class Held(enum.Enum):
    """A key's state for an attempt that asked for it."""

    RESERVED = "reserved"  # this attempt holds it: stage and commit
    IN_PROGRESS = "in progress"  # another attempt is still storing its submission


class IdempotencyKeys:
    """The `idempotency` collection: who holds a key, and the first answer given under it."""

    def __init__(self, connection: Connection, hours: float) -> None:
        self.connection = connection
        self.hours = hours

    def reserve(self, key: str, batch_id: str) -> Held | FirstAnswer:
        """Take the key for the attempt that will commit `batch_id`, or say who has it."""
        keys = self.connection.idempotency
        for _ in range(RESERVE_ROUNDS):
            now_ms = epoch_ms(utcnow())
            mine = {"_id": key, "batch_id": batch_id, "expires_ms": now_ms + int(self.hours * 3_600_000)}
            try:
                keys.insert_one(mine)
                return Held.RESERVED
            except DuplicateKeyError:
                pass
            found = keys.find_one({"_id": eq(key)})
            if found is None:
                continue  # released meanwhile
            if found["expires_ms"] > now_ms:
                if "fingerprint" in found:
                    return _answer(found)
                state = self._attempt(key, found["batch_id"])
                if state is not None:
                    return state
            # Expired, or its attempt was never committed: free, taken over only if unchanged since read.
            unchanged = {"_id": key, "batch_id": eq(found["batch_id"]), "expires_ms": eq(found["expires_ms"])}
            if keys.replace_one(unchanged, mine).matched_count:
                return Held.RESERVED
        return Held.IN_PROGRESS

    def _attempt(self, key: str, batch_id: str) -> Held | FirstAnswer | None:
        """The attempt holding a key: committed (its answer), in progress, or None when it is dead."""
        submission = self.connection.submissions.find_one({"_id": eq(batch_id)})
        if submission is None:
            # Moved in (the answer is written on the key before the submission's record goes) or dropped.
            found = self.connection.idempotency.find_one({"_id": eq(key), "batch_id": eq(batch_id)})
            return _answer(found) if found is not None and "fingerprint" in found else None
        if submission["state"] == COMMITTED:
            return FirstAnswer(batch_id, submission["total"], submission["fingerprint"])
        if submission["lease"]["expires_ms"] > epoch_ms(utcnow()):
            return Held.IN_PROGRESS
        # Stalled past its lease: the janitor's delete, so it can never commit after we take its key.
        stalled = {"_id": batch_id, "state": eq(submission["state"]), "lease.expires_ms": {"$lt": epoch_ms(utcnow())}}
        if self.connection.submissions.delete_one(stalled).deleted_count:
            self.connection.staged.delete_many({"batch_id": eq(batch_id)})
            return None
        return Held.IN_PROGRESS  # renewed meanwhile: alive after all

    def answered(self, key: str, batch_id: str, count: int, fingerprint: str) -> None:
        """Keep the first answer on the key (idempotent): called before the submission's record goes."""
        self.connection.idempotency.update_one(
            {"_id": key, "batch_id": eq(batch_id)}, {"$set": {"count": count, "fingerprint": fingerprint}}
        )

    def release(self, key: str, batch_id: str) -> None:
        """Free a key whose attempt was refused: as Stripe does, a refused request saves no answer."""
        unanswered = {"_id": key, "batch_id": eq(batch_id), "fingerprint": {"$exists": False}}
        self.connection.idempotency.delete_one(unanswered)

    def forget_expired(self) -> int:
        """Delete the keys past their hours (read as absent already); how many."""
        return self.connection.idempotency.delete_many({"expires_ms": {"$lt": epoch_ms(utcnow())}}).deleted_count


def _answer(found: Mapping[str, Any]) -> FirstAnswer:
    return FirstAnswer(found["batch_id"], found["count"], found["fingerprint"])
