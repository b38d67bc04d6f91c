"""OpenAI's Batch file format, both ways: its input lines as contexts, contexts as its output and error lines.

An input line is `{"custom_id", "method", "url", "body"}`. It becomes a context whose payload is
`{"method", "url", "body"}` (what the `openai` engine sends) and whose `custom_id` is kept on the
context, unique within its batch. An output line is `{"id", "custom_id", "response", "error"}`:
a completed context's response is the engine's `{"status_code", "request_id", "body"}`; a failed,
expired or cancelled one goes to the error file with the response the service gave, if any.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from ctxbatch.errors import SubmitError
from ctxbatch.io.schema import FINISHED, Status

LINE_FIELDS = ("custom_id", "method", "url", "body")
METHODS = ("POST",)
REQUEST_ID_PREFIX = "batch_req_"
EXPIRED_CODE = "batch_expired"
CANCELLED_CODE = "batch_cancelled"
FAILED_CODE = "request_failed"
_NOTHING = object()
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
CANCELLED_MESSAGE = "This request was cancelled before it ran."


def is_openai_line(record: Any) -> bool:
    """Whether a record looks like an OpenAI batch line (and not one of ctxbatch's own records)."""
    return isinstance(record, Mapping) and "custom_id" in record and "body" in record and "payload" not in record


def as_record(index: int, line: Any) -> dict[str, Any]:
    """An OpenAI batch line as a ctxbatch record ({payload, custom_id}); SubmitError naming the field."""
    if not isinstance(line, Mapping):
        raise SubmitError(index, None, f"must be an OpenAI batch request object, got {type(line).__name__}")
    unknown = sorted(set(map(str, line)) - set(LINE_FIELDS))
    if unknown:
        raise SubmitError(index, unknown[0], f"unknown field (expected {', '.join(LINE_FIELDS)})")
    for field in LINE_FIELDS:
        if field not in line:
            raise SubmitError(index, field, "is missing")
    custom_id, method, url, body = (line[field] for field in LINE_FIELDS)
    if not isinstance(custom_id, str) or not custom_id:
        raise SubmitError(index, "custom_id", "must be a non-empty string")
    if method not in METHODS:
        raise SubmitError(index, "method", f"must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(url, str) or not url.startswith("/v1/"):
        raise SubmitError(index, "url", f"must be an API path such as /v1/chat/completions, got {url!r}")
    if not isinstance(body, Mapping):
        raise SubmitError(index, "body", f"must be a JSON object, got {type(body).__name__}")
    return {"payload": {"method": method, "url": url, "body": body}, "custom_id": custom_id}


def as_records(lines: Iterable[Any], endpoint: str | None = None) -> Iterator[dict[str, Any]]:
    """OpenAI batch lines as records, as they stream; with `endpoint`, every line's url must be it."""
    for index, line in enumerate(lines):
        record = as_record(index, line)
        if endpoint is not None and record["payload"]["url"] != endpoint:
            found = record["payload"]["url"]
            raise SubmitError(index, "url", f"is {found!r}, but the batch's endpoint is {endpoint!r}")
        yield record


def records_of(records: Iterable[Any], form: str | None) -> Iterable[Any]:
    """The records as ctxbatch records: OpenAI lines converted when `form` is "openai", or when it is
    None and the first record is one; anything else passes through as it is."""
    if form not in (None, "openai"):
        raise SubmitError(None, "format", f"must be 'openai' or left out, got {form!r}")
    iterator = iter(records)
    first = next(iterator, _NOTHING)
    if first is _NOTHING:
        return ()
    whole = itertools.chain([first], iterator)
    return as_records(whole) if form == "openai" or is_openai_line(first) else whole


# -- output -------------------------------------------------------------------------------


def line_id(context_id: str) -> str:
    """The output line's `id`, stable for the context: `batch_req_` and its id."""
    return REQUEST_ID_PREFIX + context_id


def response_of(result: Any) -> dict[str, Any]:
    """A completed context's `response`: the openai engine's result as it is, another engine's wrapped."""
    if isinstance(result, Mapping) and {"status_code", "body"} <= set(result):
        return {"status_code": result["status_code"], "request_id": result.get("request_id"), "body": result["body"]}
    return {"status_code": 200, "request_id": None, "body": result}


def _code(error: Mapping[str, Any]) -> str:
    """An error's code: the service's own (OpenAI's `error.code` or `type`), else the failure's type in snake case."""
    response = error.get("response")
    body = response.get("body") if isinstance(response, Mapping) else None
    said = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(said, Mapping):
        for field in ("code", "type"):
            if isinstance(said.get(field), str) and said[field]:
                return str(said[field])
    kind = error.get("type")
    if isinstance(kind, str) and kind:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()
    return FAILED_CODE


def output_line(view: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    """(whether it is an error line, the line) of a finished context as users see it (io/views.py).

    Pending and processing contexts have no line yet: callers pass finished ones only.
    """
    custom_id = view.get("custom_id") or view.get("key") or view["id"]
    line: dict[str, Any] = {"id": line_id(view["id"]), "custom_id": custom_id}
    status = view["status"]
    if status == Status.COMPLETED.value:
        return False, {**line, "response": response_of(view.get("result")), "error": None}
    if status == Status.EXPIRED.value:
        error = {
            "code": EXPIRED_CODE,
            "message": "This request could not be executed before the completion window expired.",
        }
        return True, {**line, "response": None, "error": error}
    if status == Status.CANCELLED.value:
        error = {"code": CANCELLED_CODE, "message": "This request was cancelled before it ran."}
        return True, {**line, "response": None, "error": error}
    failure = view.get("error") or {}
    response = failure.get("response")
    message = failure.get("message") or "the request failed"
    return True, {**line, "response": response, "error": {"code": _code(failure), "message": message}}


def lines_of(views: Iterable[Mapping[str, Any]]) -> Iterator[tuple[bool | None, dict[str, Any] | None]]:
    """(is an error line, the line) for each context in order; (None, None) for one not finished yet."""
    for view in views:
        yield output_line(view) if view["status"] in FINISHED else (None, None)


@dataclass(frozen=True)
class Written:
    output: int
    errors: int
    unfinished: int


def write_lines(views: Iterable[Mapping[str, Any]], output: TextIO, errors: TextIO | None) -> Written:
    """The output lines to `output` and the error lines to `errors` (dropped when None), as they stream."""
    counts = {True: 0, False: 0, None: 0}
    for is_error, line in lines_of(views):
        counts[is_error] += 1
        target = errors if is_error else output
        if line is not None and target is not None:
            target.write(json.dumps(line, separators=(",", ":")) + "\n")
    return Written(counts[False], counts[True], counts[None])
