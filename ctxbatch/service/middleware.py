"""Pure ASGI middleware: the bearer token check and request metrics.

Pure ASGI rather than Starlette's BaseHTTPMiddleware, which buffers around each call and gets in
the way of streamed bodies (the bulk upload in, JSON Lines results out).
"""

from __future__ import annotations

import hmac
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ctxbatch.service.metrics import ServiceMetrics
from ctxbatch.service.openai_errors import speaks_openai
from ctxbatch.service.responses import error_answer, openai_error_answer
from ctxbatch.service.security import OPEN_PATHS


class BearerToken:
    """Refuses (401) a request without the right bearer token, before routing.

    So no route (the OpenAPI document, /metrics, an unknown path) is reached without it, and an
    unauthorised body is never read.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = self._given(scope)
        if given is not None and hmac.compare_digest(given, self.token):
            await self.app(scope, receive, send)
            return
        message = "missing bearer token" if given is None else "wrong bearer token"
        message = f"{message}: send 'Authorization: Bearer <token>'"
        headers = {"WWW-Authenticate": "Bearer"}
        if speaks_openai(scope["path"]):
            # OpenAI's own answer to a bad key, so the SDK raises AuthenticationError.
            answer = openai_error_answer(401, message, code="invalid_api_key", headers=headers)
        else:
            answer = error_answer(401, message, headers=headers)
        await answer(scope, receive, send)

    @staticmethod
    def _given(scope: Scope) -> bytes | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return token.strip() if scheme.lower() == b"bearer" else b""
        return None


class RequestMetrics:
    """ASGI middleware counting and timing every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The template (/api/batches/{batch_id}), never the raw path: ids would explode the series.
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - start)
