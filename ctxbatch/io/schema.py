"""Document shapes, status values, indexes, and validation of context requests.

nx-27017 note: a bare-value filter such as `{"status": "pending"}` carries array-containment
semantics there and scans the collection, while `{"status": {"$eq": "pending"}}` uses the
compound index; so every filter in `io/` is written with explicit operators.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import bson
from bson.errors import InvalidDocument
from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.cursor import Cursor

from ctxbatch.config import DEFAULT_PRIORITY, MAX_TENANT_LENGTH, PRIORITY_MAX, PRIORITY_MIN
from ctxbatch.errors import SubmitError
from ctxbatch.io.document_limits import NotStorable, check_json_value

MAX_KEY_LENGTH = 256
MAX_NAME_LENGTH = 256
MAX_QUEUE_LENGTH = 64
MAX_BSON_BYTES = 16 * 1024 * 1024
REQUEST_FIELDS = ("payload", "priority", "key", "custom_id", "tenant")
# A context of no tenant holds this: one value the claim index orders like any tenant's (a missing
# field or null would need other filters, which nx-27017 serves less well).
NO_TENANT = ""
# Without aging, one priority weighs this many milliseconds of waiting (about 317 years): ascending
# `due` is then priority first, oldest first within one, as the claim ordered before aging existed.
STRICT_PRIORITY_MS = 10**13
# A failed call's response is kept with each row it fails, and a failing batch writes one record
# per row: past this size only its status, request id and the start of its body are kept.
RESPONSE_BYTES = 8_000
RESPONSE_DEPTH = 3  # a context's `error.response`


class Status(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # still pending when its batch's deadline passed


# A context in one of these may be claimed (again): pending, running, or retried by a user.
CLAIMABLE_AGAIN = (Status.PENDING.value, Status.PROCESSING.value, Status.FAILED.value, Status.EXPIRED.value)
# A context in one of these will not change again unless a user retries it.
FINISHED = (Status.COMPLETED.value, Status.FAILED.value, Status.CANCELLED.value, Status.EXPIRED.value)


CONTEXT_INDEXES = [
    # The claim: one queue's pending contexts of one tenant by `due` (its claim order, see claim_due),
    # sort included. Led by the queue, so a queue's claim costs what it would alone; then the tenant,
    # so that each tenant's most urgent contexts are one index range (io/tenants.py). Without
    # tenants every context holds NO_TENANT and this is (queue, status, due).
    # Then `priority` and `created_at`: the counts by priority level and the oldest pending context
    # (views, stats, metrics) are read from this index's entries, not from the documents (those cost
    # ~0.3 s at 100k on nx-27017). One index for both rather than two: on nx-27017 each index whose
    # key a status change changes costs every claim and every settle (~110 ms of server CPU per
    # 1,000 contexts for a second one here: benchmarks/server_cost.py).
    IndexModel(
        [
            ("queue", ASCENDING),
            ("status", ASCENDING),
            ("tenant", ASCENDING),
            ("due", ASCENDING),
            ("priority", ASCENDING),
            ("created_at", ASCENDING),
        ],
        name="queue_order",
    ),
    IndexModel([("batch_id", ASCENDING), ("status", ASCENDING)], name="batch_status"),
    # results pages: a key range over the batch's own ordinal, so a deep page costs what the first does.
    IndexModel([("batch_id", ASCENDING), ("sort_id", ASCENDING)], name="results"),
    # stats() and timeline(): counts of what finished in a window, answered from the index alone
    # (reading a field from the documents costs ~10 us a row on nx-27017). nx-27017 rewrites every
    # index of a document it updates, whichever fields changed: its cost is in benchmarks/monitoring.py.
    IndexModel([("status", ASCENDING), ("finished_ms", ASCENDING), ("attempts", ASCENDING)], name="finished"),
]
# The claim and level indexes of before (status first; then per queue, by priority or oldest first;
# then by `due`, with the levels apart), by name and fields (nx-27017 names an index after its
# fields, whatever name it was given); dropped where found, once the contexts they ordered have a
# queue, a tenant and a `due` (io/connection.py).
RETIRED_CONTEXT_INDEXES = {
    "claim": ("status", "priority", "created_at"),
    "claim_fifo": ("status", "created_at"),
    "queue_claim": ("queue", "status", "priority", "created_at"),
    "queue_claim_fifo": ("queue", "status", "created_at"),
    "queue_due": ("queue", "status", "tenant", "due"),
    "queue_levels": ("queue", "status", "priority", "created_at"),
}
BATCH_INDEXES = [
    IndexModel([("created_at", DESCENDING)], name="newest"),
    # Batches whose deadline is set and not yet acted on (io/deadlines.py).
    IndexModel([("deadline_ms", ASCENDING)], name="deadline"),
]
# A submission's staged chunks, read back in order when it moves into the queue (io/staging.py).
STAGED_INDEXES = [IndexModel([("batch_id", ASCENDING), ("seq", ASCENDING)], name="batch_chunks")]
# Idempotency keys past their hours, deleted by the janitor (nx-27017 honours no TTL index).
IDEMPOTENCY_INDEXES = [IndexModel([("expires_ms", ASCENDING)], name="expiry")]
# OpenAI files (io/files.py): a file's chunks, deleted with it; uploads cut off, found by their lease.
FILE_INDEXES = [
    IndexModel([("file_id", ASCENDING)], name="file_chunks"),
    IndexModel([("expires_ms", ASCENDING)], name="uploading"),
    # The file objects alone have it (a chunk or an upload's marker has none): the list walks them.
    IndexModel([("created_at", DESCENDING)], name="newest_files"),
]


def eq(value: Any) -> dict[str, Any]:
    """An explicit `$eq`: the filter shape nx-27017 serves from an index (see the module's note)."""
    return {"$eq": value}


def in_one_reply(cursor: Cursor[Any], documents: int) -> Cursor[Any]:
    """The cursor's whole answer in one reply: nx-27017 answers each getMore as slowly as a new query.

    Without it pymongo asks for 101 documents first and then the rest in further round trips.
    """
    return cursor.batch_size(max(documents, 1))


def in_replies_of(cursor: Cursor[Any], documents: int) -> Cursor[Any]:
    """A long answer streamed in replies of this many documents (each getMore is slow on nx-27017)."""
    return cursor.batch_size(documents)


def epoch_ms(moment: dt.datetime) -> int:
    """A moment as epoch milliseconds: the form nx-27017 compares in SQL (see store.py's note)."""
    return int(moment.timestamp() * 1000)


def held_by(token: str) -> dict[str, Any]:
    """The fence of every write back and read on the workers: still `processing`, under this lease."""
    return {"status": eq(Status.PROCESSING.value), "lease.token": eq(token)}


def of_status(ids: list[str], status: Status) -> dict[str, Any]:
    """These ids, as far as they have this status: found through the `_id` index.

    The status as the range [status, status], which is `$eq` for a string. nx-27017 serves the other
    spellings badly beside an `_id` `$in`: SQLite answers `$eq` from the status-led `finished` index,
    walking every context of that status, and nx-27017 cannot turn a status `$in` into SQL at all, so
    it filters the documents in Python (a claim's update of 1,000 cost its server 90 ms that way, 70
    as a range: benchmarks/README.md).
    """
    return {"_id": {"$in": ids}, "status": {"$gte": status.value, "$lte": status.value}}


def held_of(token: str, ids: list[str]) -> dict[str, Any]:
    """These ids, as far as the lease still holds them: found through the `_id` index (see `of_status`)."""
    return {**of_status(ids, Status.PROCESSING), "lease.token": eq(token)}


def claim_due(created: dt.datetime, priority: int, aging_seconds: float | None) -> int:
    """A context's place in the claim order, in epoch ms: `created + priority x aging`.

    Ascending `due` claims what has waited longest relative to its priority: with aging A, a
    context of priority P goes before one of priority 0 submitted more than P x A seconds after it.
    Aging 0 is oldest first; none is strict priority (STRICT_PRIORITY_MS a priority).
    """
    per_priority = STRICT_PRIORITY_MS if aging_seconds is None else round(aging_seconds * 1000)
    return epoch_ms(created) + priority * per_priority


def claimable_now(now: dt.datetime, queue: str, tenant: str | None = None) -> dict[str, Any]:
    """The queue's contexts a claim may take now (of one tenant, if given).

    `$eq` on the queue and the tenant, one find per value: the `queue_order` index serves it; `$in`
    scans on nx-27017. The time is compared as a number (`next_attempt_ms`): see io/queue.py's note.
    """
    found: dict[str, Any] = {"queue": eq(queue), "status": eq(Status.PENDING.value)}
    if tenant is not None:
        found["tenant"] = eq(tenant)
    return {**found, "next_attempt_ms": {"$lte": epoch_ms(now)}}


def utcnow() -> dt.datetime:
    # MongoDB keeps milliseconds; truncating here keeps in-memory and stored values equal.
    now = dt.datetime.now(dt.UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass(frozen=True, slots=True)
class ContextRequest:
    """One validated context of a submission."""

    payload: dict[str, Any]
    priority: int
    key: str | None = None
    custom_id: str | None = None
    tenant: str | None = None


def _encodable(text: str) -> bool:
    # A lone surrogate (JSON "\\ud800") has no UTF-8 form, so BSON cannot store it.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_priority(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and PRIORITY_MIN <= value <= PRIORITY_MAX


def validate_priority(value: Any, field: str = "priority") -> int:
    if not _is_priority(value):
        raise SubmitError(None, field, f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}, got {value!r}")
    return int(value)


def validate_name(name: Any) -> str | None:
    """A batch's optional name: a string of at most MAX_NAME_LENGTH characters, or SubmitError."""
    if name is not None and not (isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and _encodable(name)):
        raise SubmitError(None, "name", f"must be a string of at most {MAX_NAME_LENGTH} characters")
    return name


def validate_queue(queue: Any) -> str:
    """A queue's name: a non-empty string of at most MAX_QUEUE_LENGTH characters, or SubmitError."""
    if not (isinstance(queue, str) and 0 < len(queue) <= MAX_QUEUE_LENGTH and _encodable(queue)):
        raise SubmitError(None, "queue", f"must be a non-empty string of at most {MAX_QUEUE_LENGTH} characters")
    return queue


def validate_tenant(tenant: Any, index: int | None = None) -> str | None:
    """A tenant's name: None, or a non-empty string of at most MAX_TENANT_LENGTH characters; else SubmitError."""
    if tenant is not None and not (
        isinstance(tenant, str) and 0 < len(tenant) <= MAX_TENANT_LENGTH and _encodable(tenant)
    ):
        raise SubmitError(index, "tenant", f"must be a non-empty string of at most {MAX_TENANT_LENGTH} characters")
    return tenant


def _identifier(index: int, record: Mapping[str, Any], field: str) -> str | None:
    value = record.get(field)
    if value is not None and not (isinstance(value, str) and 0 < len(value) <= MAX_KEY_LENGTH and _encodable(value)):
        raise SubmitError(index, field, f"must be a non-empty string of at most {MAX_KEY_LENGTH} characters")
    return value


def validate_request(index: int, record: Any, default_priority: int) -> ContextRequest:
    """One record -> ContextRequest, or SubmitError naming the record and field."""
    if not isinstance(record, Mapping):
        raise SubmitError(index, None, f"must be an object with a 'payload', got {type(record).__name__}")
    unknown = set(record) - set(REQUEST_FIELDS)
    if unknown:
        expected = ", ".join(REQUEST_FIELDS)
        raise SubmitError(index, sorted(map(str, unknown))[0], f"unknown field (expected {expected})")
    if "payload" not in record:
        raise SubmitError(index, "payload", "is missing")
    payload = record["payload"]
    if not isinstance(payload, Mapping):
        raise SubmitError(index, "payload", f"must be a JSON object, got {type(payload).__name__}")
    priority = record.get("priority", default_priority)
    if not _is_priority(priority):
        raise SubmitError(
            index, "priority", f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}, got {priority!r}"
        )
    key = _identifier(index, record, "key")
    custom_id = _identifier(index, record, "custom_id")
    tenant = validate_tenant(record.get("tenant"), index)
    try:
        check_json_value(payload)
    except NotStorable as exc:
        raise SubmitError(index, exc.path, exc.message) from None
    try:
        size = len(bson.encode(payload))
    # ValueError: a string with a lone surrogate (JSON "\\ud800") has no UTF-8 form.
    except (InvalidDocument, TypeError, OverflowError, ValueError) as exc:
        raise SubmitError(index, "payload", f"cannot be stored: {exc}") from None
    if size > MAX_BSON_BYTES - 64 * 1024:
        raise SubmitError(index, "payload", f"is {size} bytes; the limit is about 16 MB")
    return ContextRequest(dict(payload), int(priority), key, custom_id, tenant)


def _checked(records: Iterable[Any], default: int) -> Iterator[ContextRequest | SubmitError]:
    """Each record as a ContextRequest or the problem with it (a repeated key or custom_id included)."""
    seen: dict[str, dict[str, int]] = {"key": {}, "custom_id": {}}
    for index, record in enumerate(records):
        try:
            request = validate_request(index, record, default)
        except SubmitError as exc:
            yield exc
            continue
        repeated = _repeated(request, index, seen)
        yield request if repeated is None else repeated


def _repeated(request: ContextRequest, index: int, seen: dict[str, dict[str, int]]) -> SubmitError | None:
    """The problem when the request's key or custom_id was given by an earlier record of the submission."""
    for field, value, scope in (("key", request.key, "database"), ("custom_id", request.custom_id, "batch")):
        if value is None:
            continue
        first = seen[field].setdefault(value, index)
        if first != index:
            return SubmitError(index, field, f"{value!r} is given twice; it must be unique in the {scope}", first)
    return None


def iter_requests(records: Iterable[Any], default_priority: int | None = None) -> Iterator[ContextRequest]:
    """Validate a submission as it streams: each record's request, or the first problem raised.

    Raises SubmitError at the end when there were no records at all.
    """
    default = DEFAULT_PRIORITY if default_priority is None else validate_priority(default_priority)
    seen = False
    for checked in _checked(records, default):
        if isinstance(checked, SubmitError):
            raise checked
        seen = True
        yield checked
    if not seen:
        raise SubmitError(None, None, "the submission holds no contexts")


def validate_requests(records: Iterable[Any], default_priority: int | None = None) -> list[ContextRequest]:
    """Validate a whole submission before anything is written; the first problem is raised."""
    return list(iter_requests(records, default_priority))


def collect_problems(
    records: Iterable[Any], default_priority: int | None = None, limit: int | None = 20
) -> list[SubmitError]:
    """Every problem of a submission in record order, the first `limit` of them; [] if it is valid.

    The same checks as validate_requests, for callers (the HTTP API) that report all problems at once.
    """
    default = DEFAULT_PRIORITY if default_priority is None else validate_priority(default_priority)
    problems: list[SubmitError] = []
    seen = 0
    for checked in _checked(records, default):
        seen += 1
        if isinstance(checked, SubmitError):
            problems.append(checked)
            if limit is not None and len(problems) >= limit:
                break
    if not seen:
        problems.append(SubmitError(None, None, "the submission holds no contexts"))
    return problems


def context_document(
    request: ContextRequest,
    context_id: str,
    batch_id: str,
    now: dt.datetime,
    position: int,
    queue: str,
    *,
    aging_seconds: float | None = None,
    tenant: str | None = None,
) -> dict[str, Any]:
    """A new pending context of `queue`, the `position`-th of its batch (from 0).

    Its tenant is the request's, else `tenant` (the submission's); its `due` orders it by the
    queue's `aging_seconds` (claim_due).
    """
    return {
        "_id": context_id,
        "batch_id": batch_id,
        "queue": queue,
        "tenant": request.tenant or tenant or NO_TENANT,
        "due": claim_due(now, request.priority, aging_seconds),
        # The results pages' key: an integer, because nx-27017 serves no range over string or
        # ObjectId `_id`s.
        "sort_id": position,
        "priority": request.priority,
        "status": Status.PENDING.value,
        "payload": request.payload,
        "attempts": 0,
        "next_attempt_at": now,
        # What the claim compares: nx-27017 compares a date in Python, row by row (see store.py).
        "next_attempt_ms": epoch_ms(now),
        "created_at": now,
        **({"key": request.key} if request.key is not None else {}),
        **({"custom_id": request.custom_id} if request.custom_id is not None else {}),
    }


def error_record(exc: BaseException, traceback_text: str = "") -> dict[str, Any]:
    """The `error` field of a context: {type, message, traceback}, and `response` when the exception
    carries a dict of what the service answered (`FailNow(..., response=...)`, the openai engine's errors)."""
    record: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc), "traceback": traceback_text}
    response = getattr(exc, "response", None)
    # Only a dict: other libraries' exceptions carry their response objects under this name.
    if isinstance(response, dict):
        record["response"] = kept_response(response)
    return record


def kept_response(response: dict[str, Any]) -> dict[str, Any]:
    """A failed call's response as its context keeps it: whole when it is JSON MongoDB stores in
    RESPONSE_BYTES, else its `status_code`, `request_id` and the start of its `body` as text."""
    try:
        check_json_value(response, "error.response", RESPONSE_DEPTH)
        if len(bson.encode(response)) <= RESPONSE_BYTES:
            return response
    except Exception:  # NotStorable; bson's errors (a lone surrogate has no UTF-8); deep nesting
        pass
    status, request_id = response.get("status_code"), response.get("request_id")
    body = response.get("body", response)  # a response of another shape is kept as text whole
    try:
        text = body if isinstance(body, str) else json.dumps(body, default=repr)
    except (ValueError, RecursionError):
        text = f"<a {type(body).__name__} that has no JSON text>"
    if len(text) > RESPONSE_BYTES // 2:
        text = text[: RESPONSE_BYTES // 2 - 3] + "..."
    return {
        "status_code": status if isinstance(status, int) and not isinstance(status, bool) else None,
        "request_id": request_id if isinstance(request_id, str) else None,
        "body": text.encode("utf-8", "backslashreplace").decode("utf-8"),
    }
