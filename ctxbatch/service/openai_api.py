"""OpenAI's Files and Batches API under /v1, so the official `openai` SDK works unchanged against `serve`.

`OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=TOKEN)`: upload a file of batch requests,
make a batch of it, poll it, read its output and error files, list and cancel batches. Each route
is a store call, as the /api routes are; the shapes are in service/openai_objects.py. A batch is
made in the request that creates it (read from the stored file and submitted, all or nothing), and
joins the queue `api.openai_queue`, which `ctxbatch run --engine openai` serves.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from ctxbatch.config import Settings
from ctxbatch.errors import BatchNotFound, FileNotFound, SubmitError
from ctxbatch.io import BatchStatus, ContextStore
from ctxbatch.service import upload
from ctxbatch.service.openai_errors import OpenAIError
from ctxbatch.service.openai_models import (
    MULTIPART_FILE,
    Batch,
    BatchCreate,
    BatchList,
    FileDeleted,
    FileList,
    FileObject,
    OpenAIErrorBody,
)
from ctxbatch.service.openai_objects import (
    batch_id_of,
    batch_object,
    derived_file,
    derived_file_object,
    file_object,
    output_pieces,
)

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_LIST = 100
MAX_FILE_LIST = 10_000  # OpenAI's bound, and its default
CONTENT_TYPE = "application/octet-stream"


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": OpenAIErrorBody} for status in statuses}


COMMON = _errors(400, 401, 503)


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > MAX_METADATA_PAIRS:
        raise OpenAIError(400, f"metadata holds at most {MAX_METADATA_PAIRS} pairs", param="metadata")
    for key, value in metadata.items():
        if len(key) > MAX_METADATA_KEY or len(value) > MAX_METADATA_VALUE:
            message = f"metadata keys are at most {MAX_METADATA_KEY} characters, values {MAX_METADATA_VALUE}"
            raise OpenAIError(400, message, param="metadata")


def _listed(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """OpenAI's list object of one page."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


def _batch_not_found(shown: str) -> OpenAIError:
    return OpenAIError(404, f"No batch found with id {shown!r}", param="batch_id")


def _file_not_found(file_id: str) -> OpenAIError:
    return OpenAIError(404, f"No such File object: {file_id}", param="file_id")


def openai_router(store: ContextStore, settings: Settings) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["OpenAI Files and Batches"])

    def status_of(shown: str) -> BatchStatus:
        try:
            return store.batch_status(batch_id_of(shown))
        except BatchNotFound:
            raise _batch_not_found(shown) from None

    def derived_view(file_id: str) -> tuple[BatchStatus, str] | None:
        named = derived_file(file_id)
        if named is None:
            return None
        try:
            return store.batch_status(named[0]), named[1]
        except BatchNotFound:
            raise _file_not_found(file_id) from None

    # -- files ----------------------------------------------------------------------------

    @router.post(
        "/files",
        response_model=FileObject,
        responses={**COMMON, **_errors(413, 415)},
        openapi_extra={"requestBody": MULTIPART_FILE},
        summary="Upload a file of batch requests",
    )
    async def create_file(request: Request) -> dict[str, Any]:
        """Multipart `file` (JSON Lines of OpenAI batch requests) and `purpose=batch`.

        Streamed into the database, each line checked as it arrives: a bad line is a 400 naming it,
        and nothing is kept.
        """
        return file_object(await upload.receive(request, store, settings.api.max_file_bytes))

    @router.get("/files", response_model=FileList, responses=COMMON)
    def list_files(
        after: Annotated[str | None, Query(description="The id of the last file of the previous page.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_FILE_LIST)] = MAX_FILE_LIST,
        order: Annotated[Literal["asc", "desc"], Query(description="By created_at.")] = "desc",
        purpose: Annotated[str | None, Query(description="Only the files of this purpose.")] = None,
    ) -> dict[str, Any]:
        """The uploaded files, newest first unless `order=asc`. A batch's output and error files are
        not stored, so not listed: they are named by its `output_file_id` and `error_file_id`."""
        try:
            stored, more = store.files_after(after, limit, ascending=order == "asc", purpose=purpose)
        except FileNotFound:
            raise OpenAIError(400, f"after: no file with id {after!r}", param="after") from None
        return _listed([file_object(one) for one in stored], more)

    @router.get("/files/{file_id}", response_model=FileObject, responses={**COMMON, **_errors(404)})
    def retrieve_file(file_id: str) -> dict[str, Any]:
        """An uploaded file, or a batch's output or error file (its size as it reads now)."""
        derived = derived_view(file_id)
        if derived is not None:
            view, kind = derived
            size = sum(len(piece) for piece in output_pieces(store.iter_results(view["batch_id"], payload=False), kind))
            return derived_file_object(view, kind, size)
        try:
            return file_object(store.file(file_id))
        except FileNotFound:
            raise _file_not_found(file_id) from None

    @router.get(
        "/files/{file_id}/content",
        response_class=StreamingResponse,
        responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}, **COMMON, **_errors(404)},
    )
    def file_content(file_id: str) -> StreamingResponse:
        """The file's bytes, streamed: as uploaded, or a batch's output or error lines in input order."""
        derived = derived_view(file_id)
        pieces: Iterator[bytes]
        if derived is not None:
            view, kind = derived
            pieces = output_pieces(store.iter_results(view["batch_id"], payload=False), kind)
        else:
            try:
                pieces = store.file_content(file_id)
            except FileNotFound:
                raise _file_not_found(file_id) from None
        # The first piece is read now, so a database error is an answer, not a broken stream.
        pieces = itertools.chain(list(itertools.islice(pieces, 1)), pieces)
        return StreamingResponse(pieces, media_type=CONTENT_TYPE)

    @router.delete("/files/{file_id}", response_model=FileDeleted, responses={**COMMON, **_errors(404)})
    def delete_file(file_id: str) -> dict[str, Any]:
        """Delete an uploaded file; batches made from it keep their requests."""
        if derived_view(file_id) is not None:
            message = "a batch's output and error files are made from its contexts when read: nothing to delete"
            raise OpenAIError(400, message, param="file_id")
        try:
            store.delete_file(file_id)
        except FileNotFound:
            raise _file_not_found(file_id) from None
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches --------------------------------------------------------------------------

    @router.post("/batches", response_model=Batch, responses={**COMMON, **_errors(404)})
    def create_batch(body: BatchCreate) -> dict[str, Any]:
        """A batch of an uploaded file's requests, in the queue `api.openai_queue`.

        A line whose url is not `endpoint` makes the batch `failed`, with `errors.data[].line`.
        """
        if body.endpoint not in ENDPOINTS:
            raise OpenAIError(400, f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
        _check_metadata(body.metadata)
        try:
            batch_id, _ = store.submit_file(
                body.input_file_id,
                endpoint=body.endpoint,
                completion_window=body.completion_window,
                metadata=body.metadata,
                queue=settings.api.openai_queue,
            )
        except FileNotFound:
            raise OpenAIError(404, f"No such File object: {body.input_file_id}", param="input_file_id") from None
        except SubmitError as exc:  # the window: a line's problem makes a failed batch instead
            raise OpenAIError(400, exc.message, param=exc.field) from None
        return batch_object(store.batch_status(batch_id))

    @router.get("/batches", response_model=BatchList, responses=COMMON)
    def list_batches(
        after: Annotated[str | None, Query(description="The id of the last batch of the previous page.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 20,
    ) -> dict[str, Any]:
        """OpenAI's batches (those with an endpoint), newest first."""
        try:
            views, more = store.batches_after(None if after is None else batch_id_of(after), limit, "endpoint")
        except BatchNotFound:
            raise OpenAIError(400, f"after: no batch with id {after!r}", param="after") from None
        return _listed([batch_object(view) for view in views], more)

    @router.get("/batches/{batch_id}", response_model=Batch, responses={**COMMON, **_errors(404)})
    def retrieve_batch(batch_id: str) -> dict[str, Any]:
        """A batch as OpenAI shows one: its status, request counts and output files."""
        return batch_object(status_of(batch_id))

    @router.post("/batches/{batch_id}/cancel", response_model=Batch, responses={**COMMON, **_errors(404)})
    def cancel_batch(batch_id: str) -> dict[str, Any]:
        """Cancel what has not started: `cancelling` while started requests finish (and are kept), then `cancelled`.

        A batch with nothing left to cancel is answered as it is.
        """
        status_of(batch_id)
        store.cancel(batch_id_of(batch_id))
        return batch_object(status_of(batch_id))

    return router
