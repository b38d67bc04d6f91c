"""POST /api/contexts/bulk: the body read within its size limit, parsed, and handed to the store.

The store decides what a valid context is (`ctxbatch.io.schema`); this module only reads the
envelope around the contexts. A valid submission is validated once, by `store.submit`; only a
refused one is walked again to list every problem.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from starlette.requests import Request

from ctxbatch.errors import SubmitError
from ctxbatch.io import ContextStore
from ctxbatch.io.schema import collect_problems, validate_name
from ctxbatch.service.responses import ApiError, problem, submit_problems

ENVELOPE_FIELDS = ("contexts", "name")
MAX_PROBLEMS = 20
REFUSED = "the submission was refused; nothing was stored"


def _too_large(limit: int) -> NoReturn:
    raise ApiError(413, f"the body is larger than {limit} bytes (api.max_body_bytes)")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to pass `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    # Counted as it streams in: a chunked body declares no length.
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def parse(body: bytes) -> Any:
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise ApiError(400, "the body is not valid JSON: it nests too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too long an integer
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None


def unwrap(document: Any) -> tuple[list[Any], str | None]:
    """(contexts, name) from a JSON array, or from an object {"contexts": [...], "name": ...}."""
    if isinstance(document, list):
        return document, None
    if not isinstance(document, dict):
        message = "the body must be a JSON array of contexts or an object with 'contexts'"
        raise ApiError(422, message, [problem(None, None, message)])
    problems = [
        problem(None, str(field), f"unknown field (expected {', '.join(ENVELOPE_FIELDS)})")
        for field in sorted(set(document) - set(ENVELOPE_FIELDS))
    ]
    contexts = document.get("contexts")
    if "contexts" not in document:
        problems.append(problem(None, "contexts", "is missing"))
    elif not isinstance(contexts, list):
        problems.append(problem(None, "contexts", f"must be an array, got {type(contexts).__name__}"))
    try:
        name = validate_name(document.get("name"))
    except SubmitError as exc:
        problems.append(problem(None, exc.field, exc.message))
    if problems:
        raise ApiError(422, REFUSED, problems[:MAX_PROBLEMS])
    assert isinstance(contexts, list)
    return contexts, name


def accept(store: ContextStore, body: bytes, max_contexts: int) -> tuple[str, int]:
    """Parse, check and store a bulk body; (batch id, contexts stored) or ApiError. Blocking."""
    contexts, name = unwrap(parse(body))
    if len(contexts) > max_contexts:
        raise ApiError(413, f"{len(contexts)} contexts; the limit is {max_contexts} (api.max_contexts_per_request)")
    try:
        batch_id = store.submit(contexts, name=name)
    except SubmitError as exc:
        problems = collect_problems(contexts, limit=MAX_PROBLEMS)
        if not problems and exc.field == "key":
            # Each context is fine on its own: a key is already taken in the database.
            raise ApiError(409, f"{REFUSED}: {exc}", submit_problems([exc])) from None
        raise ApiError(422, REFUSED, submit_problems(problems or [exc])) from None
    return batch_id, len(contexts)
