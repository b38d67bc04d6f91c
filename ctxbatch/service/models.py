"""The shapes of the HTTP API's bodies, for its OpenAPI document and its responses.

The bulk body is described here but validated by the store (`ctxbatch.io.schema`), the one
definition of a valid context; these models must say the same thing it checks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, WithJsonSchema

from ctxbatch.config import DEFAULT_QUEUE, MAX_TENANT_LENGTH, PRIORITY_MAX, PRIORITY_MIN
from ctxbatch.io.schema import DEFAULT_PRIORITY, MAX_KEY_LENGTH, MAX_NAME_LENGTH, Status

# Times go out as the text the CLI and Python API give (`ctxbatch.display.iso_time`: 2026-12-05T03:41:44.123Z).
IsoTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContextIn(_Strict):
    """One context to submit."""

    payload: dict[str, Any] = Field(description="The JSON object the engine receives, stored as given.")
    priority: int = Field(DEFAULT_PRIORITY, ge=PRIORITY_MIN, le=PRIORITY_MAX, description="0 is the most urgent.")
    key: str | None = Field(
        None, min_length=1, max_length=MAX_KEY_LENGTH, description="Becomes the context's id; unique."
    )
    custom_id: str | None = Field(
        None, min_length=1, max_length=MAX_KEY_LENGTH, description="The client's id for it, unique in the batch."
    )
    tenant: str | None = Field(
        None, min_length=1, max_length=MAX_TENANT_LENGTH, description="Its owner: claims share batches among tenants."
    )


class BulkEnvelope(_Strict):
    """The contexts with an optional name for the batch."""

    contexts: list[ContextIn] = Field(min_length=1)
    name: str | None = Field(None, max_length=MAX_NAME_LENGTH)


class BulkSubmission(RootModel[list[ContextIn] | BulkEnvelope]):
    """A JSON array of contexts, or an object holding them."""

    root: Annotated[list[ContextIn], Field(min_length=1)] | BulkEnvelope


class Accepted(BaseModel):
    batch_id: str
    count: int


class Problem(BaseModel):
    index: int | None = Field(description="The context's position in the submission, when the problem is in one.")
    field: str | None = Field(description="The field at fault, when one is.")
    message: str


class ErrorBody(BaseModel):
    """Every error answer: a one-line message and, for a refused body, its problems."""

    error: str
    problems: list[Problem] = Field(default_factory=list)


class Counts(BaseModel):
    total: int
    pending: int
    processing: int
    completed: int
    failed: int
    cancelled: int
    expired: int


class Usage(BaseModel):
    """Tokens as results report them in OpenAI's `usage` (prompt/input, completion/output, total)."""

    input: int
    output: int
    total: int


class BatchStatus(BaseModel):
    batch_id: str
    name: str | None = None
    queue: str = DEFAULT_QUEUE
    status: Status = Field(description="`failed` only for a batch refused at creation through /v1/batches.")
    counts: Counts
    usage: Usage = Field(description="Tokens its completed results reported, summed; zeros when none did.")
    created_at: IsoTime
    updated_at: IsoTime
    expires_at: IsoTime | None = Field(None, description="The completion window's deadline, when it has one.")
    expired_at: IsoTime | None = None
    cancelled_at: IsoTime | None = Field(None, description="When a cancel was first asked.")
    failed_at: IsoTime | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="Why a failed batch failed: code, message, line.")
    tenants: dict[str, Counts] | None = Field(
        None, description='Its contexts\' counts per tenant ("" for no tenant), when any names one.'
    )
    # OpenAI's fields, on a batch made through /v1/batches (or submitted with them).
    endpoint: str | None = None
    completion_window: str | float | None = None
    metadata: dict[str, str] | None = None
    input_file_id: str | None = None


class BatchList(BaseModel):
    batches: list[BatchStatus]


class ContextOut(BaseModel):
    id: str
    batch_id: str
    queue: str | None = None
    tenant: str | None = None
    key: str | None = None
    custom_id: str | None = None
    status: Status
    priority: int
    payload: dict[str, Any] | None = Field(None, description="Absent from results asked with payload=false.")
    result: Any = Field(None, description="What the engine returned, once completed.")
    error: dict[str, Any] | None = Field(None, description="{type, message, traceback} of the last failure.")
    attempts: int
    next_attempt_at: IsoTime | None = None
    created_at: IsoTime | None = None
    started_at: IsoTime | None = None
    finished_at: IsoTime | None = None


class ResultsPage(BaseModel):
    batch_id: str
    contexts: list[ContextOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class Cancelled(BaseModel):
    batch_id: str
    cancelled: int = Field(description="Pending contexts that were cancelled.")


class Retried(BaseModel):
    batch_id: str
    retried: int = Field(description="Failed (or with ?expired=true, expired) contexts sent back to the queue.")


class Health(BaseModel):
    status: Literal["ok"]
    database_seconds: float = Field(description="Round trip of a ping to the database.")


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None


class StatsOut(BaseModel):
    """store.stats(): the whole cluster's work over the last `window_seconds`, read from the database."""

    window_seconds: float
    completed: int = Field(description="Contexts completed in the window.")
    failed: int = Field(description="Contexts failed for good in the window.")
    retried: int = Field(description="Tries of those contexts that failed and ran again.")
    expired: int = Field(
        description="Contexts expired in the window: still pending when their batch's deadline passed."
    )
    throughput_per_second: float = Field(
        description="Finished (completed + failed) / window_seconds: averaged over the whole window, idle time "
        "included."
    )
    working_seconds: float | None = Field(
        description="Seconds work was being done in the window: from when the work that finished first in it "
        "started (not before the window) to the last finish; null with nothing finished, or no such span."
    )
    working_throughput_per_second: float | None = Field(
        description="Finished / working_seconds: the pace while working; null when working_seconds is."
    )
    recent_seconds: float = Field(description="The span of recent_throughput_per_second: the last 60 s.")
    recent_throughput_per_second: float = Field(
        description="Finished in the last recent_seconds / recent_seconds, whatever the window: the pace now."
    )
    tokens_per_second: float = Field(description="tokens.total / window_seconds.")
    tokens: Usage = Field(
        description="Tokens the completed results of the window reported (exact up to 1,000 of them, then scaled "
        "from a uniform sample)."
    )
    success_rate: float | None = Field(description="completed / (completed + failed); null with nothing finished.")
    latency_seconds: Percentiles = Field(description="Submitted -> finished.")
    processing_seconds: Percentiles = Field(description="Claimed (the last time) -> finished.")
    queue_length: dict[str, int] = Field(description="Pending contexts by priority level.")
    oldest_pending_seconds: float | None = Field(description="Age of the oldest pending context; null when none.")
    in_flight: int = Field(description="Contexts processing now.")
    queues: dict[str, dict[str, int]] = Field(description="Pending and processing contexts of each queue.")
