"""How the HTTP API answers: JSON rendering, the error body, and ctxbatch's errors as statuses.

Every error, whatever raised it, leaves as `{"error": "...", "problems": [...]}` (models.ErrorBody),
so a client parses one shape and never meets a traceback; under /v1, as OpenAI's error instead
(service/openai_errors.py), so the `openai` SDK raises the exception it would against OpenAI.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WaitQueueTimeoutError
from starlette.exceptions import HTTPException

from ctxbatch.display import iso_time, json_default
from ctxbatch.errors import BatchNotFound, ContextNotFound, CtxbatchError, FileNotFound, InvalidCursor, SubmitError
from ctxbatch.io.columns import RESULT_COLUMNS
from ctxbatch.io.outage import short_reason
from ctxbatch.service.openai_errors import OpenAIError, openai_error_body, openai_status, speaks_openai

log = logging.getLogger("ctxbatch.service")

NDJSON = "application/x-ndjson"
NDJSON_ROWS_PER_CHUNK = 500
# What a context looks like over HTTP: the columns of store.results(), nothing internal.
CONTEXT_FIELDS = tuple(RESULT_COLUMNS)
UNAVAILABLE = (ConnectionFailure, ExecutionTimeout, WaitQueueTimeoutError)


def dumps(content: Any) -> bytes:
    # ASCII escapes: any string Python holds can be sent, even one UTF-8 cannot encode.
    return json.dumps(content, separators=(",", ":"), default=json_default).encode()


class JSONAnswer(JSONResponse):
    """JSON with times as the CLI writes them (`iso_time`)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def public_context(view: Mapping[str, Any]) -> dict[str, Any]:
    """A store context view with only its public fields, times as `iso_time` text."""
    out = {}
    for field in CONTEXT_FIELDS:
        value = view.get(field)
        out[field] = iso_time(value) if isinstance(value, dt.datetime) else value
    return out


def ndjson_lines(rows: Iterable[Mapping[str, Any]], per_chunk: int = NDJSON_ROWS_PER_CHUNK) -> Iterator[bytes]:
    """JSON Lines in chunks of rows: each chunk is one hop to the threadpool, not each row."""
    lines: list[bytes] = []
    for row in rows:
        lines.append(dumps(public_context(row)) + b"\n")
        if len(lines) >= per_chunk:
            yield b"".join(lines)
            lines = []
    if lines:
        yield b"".join(lines)


def problem(index: int | None, field: str | None, message: str) -> dict[str, Any]:
    return {"index": index, "field": field, "message": message}


class ApiError(Exception):
    """Raised inside the service to answer with this status and error body."""

    def __init__(
        self,
        status: int,
        message: str,
        problems: Iterable[dict[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = list(problems)
        self.headers = dict(headers or {})


def error_answer(
    status: int, message: str, problems: Iterable[dict[str, Any]] = (), headers: Mapping[str, str] | None = None
) -> JSONAnswer:
    return JSONAnswer({"error": message, "problems": list(problems)}, status_code=status, headers=headers)


def openai_error_answer(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONAnswer:
    """An error in OpenAI's shape (under /v1), with OpenAI's status for it."""
    status = openai_status(status)
    return JSONAnswer(openai_error_body(status, message, param, code), status_code=status, headers=headers)


def answer_error(
    request: Request,
    status: int,
    message: str,
    problems: Iterable[dict[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONAnswer:
    """The error in the shape the request's path calls for: OpenAI's under /v1, ours elsewhere."""
    problems = list(problems)
    if not speaks_openai(request.url.path):
        return error_answer(status, message, problems, headers)
    if problems:
        # OpenAI names one parameter; the first problem is the one to fix first.
        first = problems[0]
        field = first.get("field")
        return openai_error_answer(status, f"{field}: {first['message']}" if field else first["message"], field)
    return openai_error_answer(status, message, headers=headers)


def submit_problems(errors: Iterable[SubmitError]) -> list[dict[str, Any]]:
    return [problem(e.index, e.field, e.said()) for e in errors]


def _field(location: tuple[Any, ...]) -> str:
    # ("query", "limit") -> "limit": where it was sent is clear from the route.
    return ".".join(str(part) for part in location[1:]) or str(location[0])


def install_error_answers(app: FastAPI) -> None:
    """Map every error the routes can meet to its status and the one error body."""

    async def api_error(request: Request, exc: Exception) -> JSONAnswer:
        assert isinstance(exc, ApiError)
        return answer_error(request, exc.status, exc.message, exc.problems, exc.headers)

    async def openai_error(_: Request, exc: Exception) -> JSONAnswer:
        assert isinstance(exc, OpenAIError)
        return openai_error_answer(exc.status, exc.message, exc.param, exc.code, exc.headers)

    async def invalid_request(request: Request, exc: Exception) -> JSONAnswer:
        assert isinstance(exc, RequestValidationError)
        problems = [problem(None, _field(tuple(e["loc"])), e["msg"]) for e in exc.errors()[:20]]
        return answer_error(request, 422, "the request is not valid", problems)

    async def http_error(request: Request, exc: Exception) -> JSONAnswer:
        assert isinstance(exc, HTTPException)
        return answer_error(request, exc.status_code, str(exc.detail), headers=exc.headers)

    async def not_found(request: Request, exc: Exception) -> JSONAnswer:
        return answer_error(request, 404, str(exc))

    async def bad_cursor(request: Request, exc: Exception) -> JSONAnswer:
        return answer_error(request, 422, str(exc), [problem(None, "cursor", str(exc))])

    async def refused(request: Request, exc: Exception) -> JSONAnswer:
        return answer_error(request, 400, str(exc))

    async def database_error(request: Request, exc: Exception) -> JSONAnswer:
        if isinstance(exc, UNAVAILABLE):
            return answer_error(request, 503, f"the database is unavailable: {short_reason(exc)}")
        log.error("database error", exc_info=exc)
        return answer_error(request, 500, f"the database refused the operation: {exc}")

    async def internal(request: Request, exc: Exception) -> JSONAnswer:
        log.error("unexpected error", exc_info=exc)
        return answer_error(request, 500, "internal error; the server log has the details")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(OpenAIError, openai_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(BatchNotFound, not_found)
    app.add_exception_handler(ContextNotFound, not_found)
    app.add_exception_handler(FileNotFound, not_found)
    app.add_exception_handler(InvalidCursor, bad_cursor)
    app.add_exception_handler(CtxbatchError, refused)
    app.add_exception_handler(PyMongoError, database_error)
    app.add_exception_handler(Exception, internal)
