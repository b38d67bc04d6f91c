"""The shapes of OpenAI's Files and Batches API as ctxbatch serves them under /v1, for the OpenAPI document.

They follow the `openai` SDK's own types (`openai/types/batch.py`, `file_object.py`,
`batch_request_counts.py`, `batch_usage.py`), the contract the SDK parses.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

BatchStatusName = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error for the client's mistakes, server_error otherwise.")
    param: str | None = Field(None, description="The parameter (or a line's field) at fault, when one is.")
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """Every error under /v1."""

    error: OpenAIErrorDetail


class FileObject(BaseModel):
    id: str
    object: Literal["file"]
    bytes: int
    created_at: int = Field(description="Unix seconds.")
    filename: str
    purpose: str = Field(description="`batch` for an upload; `batch_output` for a batch's output or error file.")
    status: Literal["uploaded", "processed", "error"]
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"]
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"]
    deleted: bool


class BatchCreate(BaseModel):
    """POST /v1/batches."""

    # OpenAI may add parameters (output_expires_after, ...): they are taken and ignored, not refused.
    model_config = ConfigDict(extra="allow")

    input_file_id: str = Field(description="A file uploaded with purpose `batch`.")
    endpoint: str = Field(description="/v1/chat/completions, /v1/completions, /v1/embeddings or /v1/responses.")
    completion_window: str = Field(
        description="`24h` as OpenAI requires, or any duration ctxbatch reads (`30m`, `90s`, `2d`)."
    )
    metadata: dict[str, str] | None = Field(None, description="Up to 16 string pairs, kept and shown.")


class BatchError(BaseModel):
    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = Field(None, description="The input file's line at fault.")


class BatchErrors(BaseModel):
    object: Literal["list"]
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class BatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class Batch(BaseModel):
    id: str = Field(description="`batch_` and ctxbatch's batch id.")
    object: Literal["batch"]
    endpoint: str | None
    model: str | None = Field(None, description="The requests' model, when all of them name the same one.")
    errors: BatchErrors | None = None
    input_file_id: str | None
    completion_window: str | None
    status: BatchStatusName
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None
    usage: BatchUsage


class BatchList(BaseModel):
    object: Literal["list"]
    data: list[Batch]
    first_id: str | None
    last_id: str | None
    has_more: bool


MULTIPART_FILE: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "JSON Lines of batch requests."},
                    "purpose": {"type": "string", "enum": ["batch"]},
                },
            }
        }
    },
}
