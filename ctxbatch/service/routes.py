"""The routes: each one a call of a ContextStore method, so the CLI and Python API can do the same.

pymongo blocks, so routes are plain `def` (FastAPI runs them in its threadpool); the bulk route
is `async` only to stream its body in, and hands parsing and storing to the threadpool.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any

import pymongo
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pymongo.errors import PyMongoError
from starlette.concurrency import run_in_threadpool

from ctxbatch.config import DEFAULT_QUEUE, MAX_TENANT_LENGTH, Settings
from ctxbatch.io import ContextStore, Status
from ctxbatch.io.schema import MAX_QUEUE_LENGTH
from ctxbatch.io.stats import DEFAULT_WINDOW_SECONDS
from ctxbatch.io.views import DEFAULT_BATCH_LIST
from ctxbatch.service import bulk
from ctxbatch.service.metrics import ServiceMetrics
from ctxbatch.service.models import (
    Accepted,
    BatchList,
    BatchStatus,
    Cancelled,
    ContextOut,
    ErrorBody,
    Health,
    ResultsPage,
    Retried,
    StatsOut,
)
from ctxbatch.service.responses import NDJSON, ApiError, JSONAnswer, ndjson_lines, public_context

HEALTH_TIMEOUT_SECONDS = 2.0
MAX_PAGE = 10_000
MAX_BATCH_LIST = 1_000
MAX_WINDOW_SECONDS = 30 * 86400


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


# Every /api route may meet these: no or a wrong token, a bad parameter, the database gone.
COMMON = _errors(401, 422, 503)
BULK_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BulkSubmission"}}},
}
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Contexts per page.")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page.")]
Payload = Annotated[bool, Query(description="Include each context's payload.")]


def api_router(store: ContextStore, settings: Settings, metrics: ServiceMetrics) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/api/contexts/bulk",
        status_code=202,
        response_model=Accepted,
        responses={**COMMON, **_errors(400, 409, 413, 415)},
        openapi_extra={"requestBody": BULK_BODY},
        summary="Submit contexts as one batch",
    )
    async def submit_contexts(
        request: Request,
        queue: Annotated[str, Query(min_length=1, max_length=64, description="The queue the batch joins.")] = (
            DEFAULT_QUEUE
        ),
        idempotency_key: Annotated[
            str | None,
            Header(
                alias=bulk.IDEMPOTENCY_HEADER,
                min_length=1,
                max_length=255,
                description="Retry safely: the same key and body within `api.idempotency_hours` get the first "
                "answer (with `Idempotent-Replayed: true`) and store nothing.",
            ),
        ] = None,
        tenant: Annotated[
            str | None,
            Query(min_length=1, max_length=MAX_TENANT_LENGTH, description="Tenant of the contexts that name none."),
        ] = None,
    ) -> JSONAnswer:
        """Store the contexts as one batch, all or nothing; poll the `Location` for its status.

        The 202 is sent at the submission's commit: answered, all of it will be processed.
        """
        kind = bulk.body_type(request)
        body = await bulk.read_body(request, settings.api.max_body_bytes)
        limit = settings.api.max_contexts_per_request
        answer = await run_in_threadpool(bulk.accept, store, body, limit, kind, queue, idempotency_key, tenant)
        headers = {"Location": f"/api/batches/{answer.batch_id}"}
        if answer.replayed:
            headers["Idempotent-Replayed"] = "true"
        else:
            metrics.submitted.inc(answer.count)
        return JSONAnswer({"batch_id": answer.batch_id, "count": answer.count}, status_code=202, headers=headers)

    # Unset fields are left out, so a batch shows exactly what store.batch_status() does.
    @router.get("/api/batches", response_model=BatchList, response_model_exclude_unset=True, responses=COMMON)
    def list_batches(
        status: Status | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_BATCH_LIST)] = DEFAULT_BATCH_LIST,
        queue: Annotated[
            str | None, Query(min_length=1, max_length=MAX_QUEUE_LENGTH, description="Only the batches of this queue.")
        ] = None,
    ) -> dict[str, Any]:
        """The newest batches first, only those with `status` and of `queue` if given (`ctxbatch batches --json`)."""
        return {"batches": store.list_batches(status, limit, queue)}

    @router.get(
        "/api/batches/{batch_id}",
        response_model=BatchStatus,
        response_model_exclude_unset=True,
        responses={**COMMON, **_errors(404)},
    )
    def batch_status(batch_id: str) -> dict[str, Any]:
        """A batch's status and its contexts' counts."""
        return store.batch_status(batch_id)

    @router.get(
        "/api/batches/{batch_id}/results",
        response_model=None,
        responses={
            200: {
                "model": ResultsPage,
                "description": f"A page of contexts; all of them, one per line, with `Accept: {NDJSON}`.",
                "content": {NDJSON: {"schema": {"type": "string"}}},
            },
            **COMMON,
            **_errors(404),
        },
    )
    def batch_results(
        batch_id: str, request: Request, limit: Limit = 1000, cursor: Cursor = None, payload: Payload = True
    ) -> Response:
        """A batch's contexts with status, result, error and attempts, page by page or as JSON Lines."""
        if NDJSON in request.headers.get("accept", ""):
            rows = store.iter_results(batch_id, payload=payload)
            # The first row is read now so an unknown batch is a 404, not a broken stream.
            first = list(itertools.islice(rows, 1))
            return StreamingResponse(ndjson_lines(itertools.chain(first, rows)), media_type=NDJSON)
        page, following = store.results_page(batch_id, limit, cursor, payload=payload)
        contexts = [public_context(view) for view in page]
        return JSONAnswer({"batch_id": batch_id, "contexts": contexts, "next_cursor": following})

    @router.get("/api/contexts/{context_id}", response_model=ContextOut, responses={**COMMON, **_errors(404)})
    def get_context(context_id: str) -> dict[str, Any]:
        """One context with its status, result and error."""
        return public_context(store.get_context(context_id))

    @router.post("/api/batches/{batch_id}/cancel", response_model=Cancelled, responses={**COMMON, **_errors(404)})
    def cancel_batch(batch_id: str) -> dict[str, Any]:
        """Cancel the batch's pending contexts."""
        return {"batch_id": batch_id, "cancelled": store.cancel(batch_id)}

    @router.post("/api/batches/{batch_id}/retry", response_model=Retried, responses={**COMMON, **_errors(404)})
    def retry_batch(
        batch_id: str,
        expired: Annotated[bool, Query(description="Retry the expired contexts, under a fresh window.")] = False,
    ) -> dict[str, Any]:
        """Send the batch's failed contexts back to the queue with attempts reset."""
        return {"batch_id": batch_id, "retried": store.retry(batch_id, expired=expired)}

    @router.get("/api/stats", response_model=StatsOut, responses={**COMMON, **_errors(404)})
    def stats(
        batch_id: str | None = None,
        window: Annotated[float, Query(gt=0, le=MAX_WINDOW_SECONDS, allow_inf_nan=False)] = DEFAULT_WINDOW_SECONDS,
        tenant: Annotated[str | None, Query(min_length=1, max_length=MAX_TENANT_LENGTH)] = None,
    ) -> dict[str, Any]:
        """Throughput, success rate, latency and the queue over the last `window` seconds, of one batch and of
        one tenant if given."""
        return store.stats(batch_id, window, tenant)

    @router.get("/healthz", response_model=Health, responses=_errors(503))
    def healthz() -> dict[str, Any]:
        """Whether the database answers; needs no token."""
        try:
            with pymongo.timeout(HEALTH_TIMEOUT_SECONDS):
                seconds = store.ping()
        except PyMongoError as exc:
            raise ApiError(503, f"the database does not answer: {exc}") from None
        return {"status": "ok", "database_seconds": seconds}

    @router.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(401)},
    )
    def prometheus_metrics() -> Response:
        """Prometheus text format: queue lengths, submissions, HTTP requests and latencies."""
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
