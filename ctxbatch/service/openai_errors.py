"""OpenAI's error shape, which everything under /v1 answers: `{"error": {"message", "type", "param", "code"}}`.

The `openai` SDK picks its exception class by status (400 BadRequestError, 401 AuthenticationError,
404 NotFoundError, ...) and reads `message`, `type`, `param` and `code` from the body's `error`, so
these must be OpenAI's statuses too: a bad parameter is a 400 there, never a 422.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PREFIX = "/v1"
INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


def speaks_openai(path: str) -> bool:
    """Whether a request's path is under /v1, where errors take OpenAI's shape."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def openai_status(status: int) -> int:
    # OpenAI answers a parameter it cannot take with 400; FastAPI's validation says 422.
    return 400 if status == 422 else status


class OpenAIError(Exception):
    """Raised inside the /v1 routes to answer with this status and OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def openai_error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The body of an error answer under /v1 (service/responses.py sends it)."""
    kind = SERVER_ERROR if status >= 500 else INVALID_REQUEST
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
