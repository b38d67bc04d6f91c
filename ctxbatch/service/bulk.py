"""POST /api/contexts/bulk: the body read within its size limit, parsed, and handed to the store.

The store decides what a valid context is (`ctxbatch.io.schema`); this module only reads the
envelope around the contexts. A valid submission is validated once, by `store.submit`; only a
refused one is walked again to list every problem.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from starlette.requests import ClientDisconnect, Request

from ctxbatch.config import DEFAULT_QUEUE
from ctxbatch.errors import IdempotencyKeyInUse, IdempotencyKeyReused, SubmitError
from ctxbatch.io import ContextStore
from ctxbatch.io.schema import collect_problems, validate_name
from ctxbatch.io.staging import Submitted
from ctxbatch.service.responses import NDJSON, ApiError, problem, submit_problems

log = logging.getLogger(__name__)

ENVELOPE_FIELDS = ("contexts", "name")
MAX_PROBLEMS = 20
REFUSED = "the submission was refused; nothing was stored"
IDEMPOTENCY_HEADER = "Idempotency-Key"
JSON = "application/json"
# A body must say it is JSON: text/plain (or none) is what a web page may send cross-site
# without a CORS preflight, and loopback needs no token.
ACCEPTED_TYPES = (JSON, NDJSON)


def body_type(request: Request) -> str:
    """The declared media type of the body (JSON or NDJSON), or 415."""
    declared = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if declared not in ACCEPTED_TYPES:
        shown = declared or "none"
        raise ApiError(415, f"the body must be declared {JSON} or {NDJSON} (Content-Type: {shown})")
    return declared


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
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        log.warning("a client went away after %d bytes of a bulk body; nothing was stored", size)
        raise ApiError(400, "the client went away before the body was complete") from None
    return b"".join(chunks)


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
WHITESPACE = re.compile(r"[ \t\n\r]*")


def _not_json(what: str) -> NoReturn:
    raise ApiError(400, f"the body is not valid JSON: {what}")


def _decoded(text: str, at: int, where: str = "") -> tuple[Any, int]:
    try:
        return DECODER.raw_decode(text, at)
    except RecursionError:
        _not_json(f"{where}it nests too deeply")
    except json.JSONDecodeError as exc:
        _not_json(f"{where}{exc.msg}: line {exc.lineno} column {exc.colno} (char {exc.pos})")
    except ValueError as exc:  # NaN and the like, too long an integer
        _not_json(f"{where}{exc}")


def _text(body: bytes) -> str:
    # A UTF-8 BOM is dropped, as the CLI does.
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        _not_json(str(exc))


def parse(body: bytes) -> Any:
    text = _text(body)
    document, end = _decoded(text, WHITESPACE.match(text, 0).end())  # type: ignore[union-attr]
    if WHITESPACE.match(text, end).end() != len(text):  # type: ignore[union-attr]
        _not_json(f"extra data at char {end}")
    return document


def array_items(text: str) -> Iterator[Any]:
    """The items of a JSON array one by one, each parsed only when asked for (flat memory)."""
    at = WHITESPACE.match(text, 0).end()  # type: ignore[union-attr]
    if text[at : at + 1] != "[":
        _not_json("expected a JSON array")
    at = WHITESPACE.match(text, at + 1).end()  # type: ignore[union-attr]
    closed = text[at : at + 1] == "]"
    if closed:
        at += 1
    while not closed:
        item, at = _decoded(text, at)
        yield item
        at = WHITESPACE.match(text, at).end()  # type: ignore[union-attr]
        mark = text[at : at + 1]
        if mark not in (",", "]"):
            _not_json(f"expected ',' or ']' at char {at}")
        closed = mark == "]"
        at = WHITESPACE.match(text, at + 1).end()  # type: ignore[union-attr]
    if WHITESPACE.match(text, at).end() != len(text):  # type: ignore[union-attr]
        _not_json(f"extra data at char {at}")


def ndjson_items(text: str) -> Iterator[Any]:
    """One JSON value per line (blank lines skipped), each parsed only when asked for."""
    at, number = 0, 0
    while at < len(text):
        newline = text.find("\n", at)
        end = len(text) if newline < 0 else newline
        number += 1
        line = text[at:end]
        at = end + 1
        if line.strip():
            item, stop = _decoded(line, WHITESPACE.match(line, 0).end(), f"line {number}: ")  # type: ignore[union-attr]
            if line[stop:].strip():
                _not_json(f"line {number}: extra data after the value")
            yield item


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


def contexts_of(body: bytes, kind: str) -> tuple[Callable[[], Iterator[Any]], str | None]:
    """(a fresh iterator over the body's contexts on each call, the batch's name).

    A JSON array and NDJSON are parsed item by item as the store asks for them; an object
    envelope ({"contexts": [...], "name": ...}) is parsed whole.
    """
    text = _text(body)
    if kind == NDJSON:
        return lambda: ndjson_items(text), None
    if text.lstrip(" \t\n\r").startswith("["):
        return lambda: array_items(text), None
    contexts, name = unwrap(parse(body))
    return lambda: iter(contexts), name


def _at_most(items: Iterator[Any], limit: int) -> Iterator[Any]:
    for count, item in enumerate(items, start=1):
        if count > limit:
            raise ApiError(413, f"more than {limit} contexts; the limit is {limit} (api.max_contexts_per_request)")
        yield item


def _key_refused(status: int, message: str) -> ApiError:
    return ApiError(status, message, [problem(None, IDEMPOTENCY_HEADER, message)])


def accept(
    store: ContextStore,
    body: bytes,
    max_contexts: int,
    kind: str = JSON,
    queue: str = DEFAULT_QUEUE,
    idempotency_key: str | None = None,
    tenant: str | None = None,
) -> Submitted:
    """Parse, check and store a bulk body: (batch id, contexts, replayed) or ApiError. Blocking.

    With an idempotency key, a retry is answered as the first was; the key's first submission
    still being stored is a 409 (Stripe's answer), not a wait that holds the connection.
    """
    contexts, name = contexts_of(body, kind)
    items = _at_most(contexts(), max_contexts)
    try:
        return store.submit_counted(
            items, name=name, queue=queue, tenant=tenant, idempotency_key=idempotency_key, wait=False
        )
    except IdempotencyKeyInUse as exc:
        message = f"{IDEMPOTENCY_HEADER} {exc.key!r}: its first request is in progress; retry later"
        raise _key_refused(409, message) from None
    except IdempotencyKeyReused as exc:
        message = f"{IDEMPOTENCY_HEADER} {exc.key!r} was already used with other content (batch {exc.batch_id})"
        raise _key_refused(422, f"{message}; nothing was stored") from None
    except SubmitError as exc:
        if exc.field == "idempotency_key":
            raise _key_refused(422, f"{IDEMPOTENCY_HEADER}: {exc.message}") from None
        problems = collect_problems(_at_most(contexts(), max_contexts), limit=MAX_PROBLEMS)
        if not problems and exc.field == "key":
            # Each context is fine on its own: a key is already taken in the database.
            raise ApiError(409, f"{REFUSED}: {exc}", submit_problems([exc])) from None
        raise ApiError(422, REFUSED, submit_problems(problems or [exc])) from None
