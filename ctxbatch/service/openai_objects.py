"""ctxbatch's batches and files as OpenAI's Batch and File objects, and the ids that name them.

A batch is shown as `batch_<id>` (its ctxbatch id, so `ctxbatch status` and the SDK name the same
batch). Its output and error files are not stored: `file-<batch id>-output` and
`file-<batch id>-errors` name them, and their content is made from the batch's contexts when it is
read (io/openai_batch.py), streamed in input order. An uploaded file is `file-<32 hex>`, with no
dash after the prefix, so the two never meet.

Status, from ctxbatch's to OpenAI's: pending and processing are `in_progress` (a batch is made in
the request that creates it, so `validating` is never seen); completed, expired and cancelled keep
their names, but a cancelled batch whose contexts are still running is `cancelling`; a batch refused
at creation (a line's url is not its endpoint) is `failed`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ctxbatch.io.openai_batch import lines_of
from ctxbatch.service.responses import dumps

BATCH_PREFIX = "batch_"
OUTPUT = "output"
ERRORS = "errors"
DERIVED_FILE = re.compile(r"^file-(?P<batch>.+)-(?P<kind>output|errors)$")
# Lines are sent in pieces of about this many bytes: one hop to the threadpool each, not one a line.
STREAM_PIECE_BYTES = 256 * 1024
STATUSES = {
    "pending": "in_progress",
    "processing": "in_progress",
    "completed": "completed",
    "expired": "expired",
    "cancelled": "cancelled",
    "failed": "failed",
}
# An output or error file exists once nothing in the batch waits, as OpenAI writes them at the end.
FINISHED = ("completed", "expired", "cancelled")


def shown_batch_id(batch_id: str) -> str:
    return BATCH_PREFIX + batch_id


def batch_id_of(shown: str) -> str:
    """ctxbatch's id of a batch shown as `batch_<id>` (an id given as ctxbatch shows it is taken too)."""
    return shown.removeprefix(BATCH_PREFIX)


def derived_file_id(batch_id: str, kind: str) -> str:
    return f"file-{batch_id}-{kind}"


def derived_file(file_id: str) -> tuple[str, str] | None:
    """(batch id, "output" or "errors") when `file_id` names a batch's output or error file."""
    found = DERIVED_FILE.match(file_id)
    return None if found is None else (batch_id_of(found["batch"]), found["kind"])


def unix(moment: str | dt.datetime | None) -> int | None:
    """ISO 8601 text (or a datetime) as Unix seconds, as OpenAI gives its times."""
    if moment is None:
        return None
    when = dt.datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    return int(when.timestamp())


def openai_status(view: Mapping[str, Any]) -> str:
    counts = view["counts"]
    if view.get("cancelled_at") and view["status"] != "failed":
        return "cancelling" if counts["pending"] or counts["processing"] else "cancelled"
    return STATUSES[view["status"]]


def _usage(view: Mapping[str, Any]) -> dict[str, Any]:
    # ctxbatch sums {input, output, total} over the batch's answers; OpenAI's shape has details too.
    usage = view.get("usage") or {}
    return {
        "input_tokens": int(usage.get("input") or 0),
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": int(usage.get("output") or 0),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total") or 0),
    }


def batch_object(view: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's Batch object of a store.batch_status() view."""
    counts = view["counts"]
    status = openai_status(view)
    batch_id = view["batch_id"]
    created, updated = unix(view["created_at"]), unix(view["updated_at"])
    finished = status in FINISHED
    # The last change of a batch with nothing left to run is when it finished.
    ended = max(updated or 0, unix(view.get("cancelled_at")) or 0) if finished else None
    answered_with_errors = counts["failed"] + counts["cancelled"] + counts.get("expired", 0)
    errors = view.get("errors")
    return {
        "id": shown_batch_id(batch_id),
        "object": "batch",
        "endpoint": view.get("endpoint"),
        # The requests' model, when every request of the file names the same one.
        "model": view.get("model"),
        "errors": {"object": "list", "data": list(errors)} if errors else None,
        "input_file_id": view.get("input_file_id"),
        "completion_window": view.get("completion_window"),
        "status": status,
        "output_file_id": derived_file_id(batch_id, OUTPUT) if finished and counts["completed"] else None,
        "error_file_id": derived_file_id(batch_id, ERRORS) if finished and answered_with_errors else None,
        "created_at": created,
        "in_progress_at": None if status == "failed" else created,
        "expires_at": unix(view.get("expires_at")),
        # The output is ready the moment the last context is: finalizing takes no time here.
        "finalizing_at": ended if status == "completed" else None,
        "completed_at": ended if status == "completed" else None,
        "failed_at": unix(view.get("failed_at")),
        # A deadline that passed when nothing was left to expire is no expiry.
        "expired_at": unix(view.get("expired_at")) if counts.get("expired") else None,
        "cancelling_at": unix(view.get("cancelled_at")),
        "cancelled_at": ended if status == "cancelled" else None,
        # OpenAI counts as failed the requests that errored; expired and cancelled ones did not run.
        "request_counts": {"total": counts["total"], "completed": counts["completed"], "failed": counts["failed"]},
        "metadata": view.get("metadata") or None,
        "usage": _usage(view),
    }


def file_object(stored: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's File object of a stored file (store.file())."""
    return {
        "id": stored["id"],
        "object": "file",
        "bytes": stored["bytes"],
        "created_at": unix(stored["created_at"]),
        "filename": stored["filename"],
        "purpose": stored["purpose"],
        "status": stored["status"],
        "expires_at": None,
        "status_details": None,
    }


def derived_file_object(view: Mapping[str, Any], kind: str, size: int) -> dict[str, Any]:
    """OpenAI's File object of a batch's output or error file, `size` bytes as it reads now."""
    batch_id = view["batch_id"]
    return {
        "id": derived_file_id(batch_id, kind),
        "object": "file",
        "bytes": size,
        "created_at": unix(view["updated_at"]),
        "filename": f"{shown_batch_id(batch_id)}_{kind}.jsonl",
        "purpose": "batch_output",
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def output_pieces(views: Iterable[Mapping[str, Any]], kind: str) -> Iterator[bytes]:
    """The output (or error) file's JSON Lines from the batch's contexts, in pieces; flat memory."""
    errors = kind == ERRORS
    piece: list[bytes] = []
    size = 0
    for is_error, line in lines_of(views):
        if line is None or is_error is not errors:
            continue
        encoded = dumps(line) + b"\n"
        piece.append(encoded)
        size += len(encoded)
        if size >= STREAM_PIECE_BYTES:
            yield b"".join(piece)
            piece, size = [], 0
    if piece:
        yield b"".join(piece)
