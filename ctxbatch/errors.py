"""The exceptions users of ctxbatch catch; one hierarchy under CtxbatchError."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class CtxbatchError(Exception):
    """Raised for any failure ctxbatch can explain in one line to a user."""


class ConfigError(CtxbatchError):
    """Raised when a configuration value is unknown, of the wrong type, or out of range."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class SubmitError(CtxbatchError):
    """Raised when a submission is refused; nothing of it was stored."""

    def __init__(self, index: int | None, field: str | None, message: str, earlier: int | None = None) -> None:
        where = "" if index is None else f"record {index}: "
        what = f"{field}: " if field else ""
        self.index = index
        self.field = field
        self.message = message
        self.earlier = earlier
        """The record this one repeats (a key or custom_id given twice), when there is one."""
        super().__init__(f"{where}{what}{self.said()}")

    def said(self, locate: Callable[[int], str] = "record {}".format) -> str:
        """The message, naming the record it repeats (if any) as `locate` puts it: "line 3", "record 2"."""
        return self.message if self.earlier is None else f"{self.message}; first at {locate(self.earlier)}"


class IdempotencyKeyReused(CtxbatchError):
    """Raised when an idempotency key is given again with other content; nothing was stored."""

    def __init__(self, key: str, batch_id: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for other content (batch {batch_id}); "
            "nothing was submitted: use a new key for new content"
        )
        self.key = key
        self.batch_id = batch_id


class IdempotencyKeyInUse(CtxbatchError):
    """Raised when the first submission with an idempotency key is still being stored; retry later."""

    def __init__(self, key: str) -> None:
        super().__init__(f"a submission with idempotency key {key!r} is still being stored (in progress); retry later")
        self.key = key


class InputError(CtxbatchError):
    """Raised when an input file cannot be read or parsed; names the file and line."""


class BatchNotFound(CtxbatchError):
    """Raised when a batch id names no batch."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(f"no batch with id {batch_id!r}")
        self.batch_id = batch_id


class ContextNotFound(CtxbatchError):
    """Raised when a context id names no context."""

    def __init__(self, context_id: str) -> None:
        super().__init__(f"no context with id {context_id!r}")
        self.context_id = context_id


class FileNotFound(CtxbatchError):
    """Raised when a file id names no stored file (OpenAI's `/v1/files`)."""

    def __init__(self, file_id: str) -> None:
        super().__init__(f"no file with id {file_id!r}")
        self.file_id = file_id


class FileRefused(CtxbatchError):
    """Raised when an uploaded file is refused: names its line and field; nothing of it was stored."""

    def __init__(self, line: int | None, field: str | None, message: str, code: str) -> None:
        where = "" if line is None else f"line {line}: "
        what = f"{field}: " if field else ""
        super().__init__(f"{where}{what}{message}")
        self.line = line
        self.field = field
        self.message = message
        self.code = code
        """A short code in OpenAI's manner: invalid_json_line, duplicate_custom_id, ..."""


class DatabaseUnavailable(CtxbatchError):
    """Raised when MongoDB (or the embedded server) cannot be reached or started."""


class EngineError(CtxbatchError):
    """Raised when an engine cannot be resolved or imported."""


class CriticalError(CtxbatchError):
    """Raised by an engine to stop the whole batch: its contexts are released and it is retried."""


class RetryLater(CtxbatchError):
    """Raised (or returned per row by a batch engine) when a service says "not now" (429, 503).

    The context goes back to `pending`, claimable after `after_seconds` (or the retry backoff), without
    spending its `context_retries`; `retry.max_deferrals` deferrals at most, then it fails with this reason.
    """

    def __init__(self, after_seconds: float | None = None, reason: str = "") -> None:
        if after_seconds is not None and not after_seconds >= 0:
            raise ValueError(f"after_seconds must be >= 0 or None, got {after_seconds!r}")
        super().__init__(reason or "the service asked to retry later")
        self.after_seconds = after_seconds
        self.reason = reason


class FailNow(CtxbatchError):
    """Raised by an engine when retrying cannot help (the request itself is bad, e.g. an HTTP 400).

    The context fails at once, without spending its remaining `context_retries`. A `response` (a JSON
    dict, e.g. the service's `{status_code, request_id, body}`) is kept in the context's error record.
    """

    def __init__(self, message: str = "", response: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.response = response


class InvalidCursor(CtxbatchError):
    """Raised when a page cursor is not one that ContextStore.results_page handed out."""

    def __init__(self, cursor: str) -> None:
        super().__init__(f"{cursor[:40]!r} is not a cursor of this batch's results")
        self.cursor = cursor
