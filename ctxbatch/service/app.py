"""create_app: the FastAPI application over one ContextStore."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from ctxbatch import __version__
from ctxbatch.config import Settings, load_config
from ctxbatch.io import ContextStore
from ctxbatch.service.docs import documented_app
from ctxbatch.service.metrics import ServiceMetrics
from ctxbatch.service.middleware import BearerToken, RequestMetrics
from ctxbatch.service.models import BulkSubmission
from ctxbatch.service.openai_api import openai_router
from ctxbatch.service.openai_errors import speaks_openai
from ctxbatch.service.responses import JSONAnswer, install_error_answers
from ctxbatch.service.routes import api_router
from ctxbatch.service.security import OPEN_PATHS, resolve_token

DESCRIPTION = """Bulk submission, status and results of ctxbatch contexts.

Submit with `POST /api/contexts/bulk` (202 and a `Location`), poll `GET /api/batches/{batch_id}`,
read `GET /api/batches/{batch_id}/results`. Every error answers `{"error", "problems"}`.

OpenAI's Files and Batches API is served under `/v1` (`/v1/files`, `/v1/batches`), so the `openai`
SDK works with `base_url=".../v1"`; there every error answers OpenAI's
`{"error": {"message", "type", "param", "code"}}`."""


def _openapi(app: FastAPI, token: str | None) -> dict[str, Any]:
    """FastAPI's document plus the bulk body (read by hand, not by FastAPI) and the token scheme."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = document.setdefault("components", {})
    _, body_schemas = models_json_schema([(BulkSubmission, "validation")], ref_template="#/components/schemas/{model}")
    components.setdefault("schemas", {}).update(body_schemas["$defs"])
    for path, operations in document["paths"].items():
        if speaks_openai(path):
            # FastAPI documents its 422 on every route with parameters; under /v1 that answer is a 400.
            for operation in operations.values():
                operation["responses"].pop("422", None)
    if token is not None:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, operations in document["paths"].items():
            for operation in operations.values():
                operation["security"] = [] if path in OPEN_PATHS else [{"bearer": []}]
    app.openapi_schema = document
    return document


def create_app(store: ContextStore, settings: Settings | None = None) -> FastAPI:
    """The HTTP API over `store`; `settings.api` gives the limits and the token."""
    settings = load_config(settings)
    token = resolve_token(settings)
    app = documented_app(
        title="ctxbatch", version=__version__, description=DESCRIPTION, default_response_class=JSONAnswer
    )
    metrics = ServiceMetrics(store)
    app.include_router(api_router(store, settings, metrics))
    app.include_router(openai_router(store, settings))
    install_error_answers(app)
    if token is not None:
        app.add_middleware(BearerToken, token=token)
    # Added last, so outermost: refused (401) requests are counted too.
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.state.store = store
    app.state.settings = settings
    app.state.metrics = metrics
    app.openapi = lambda: _openapi(app, token)  # type: ignore[method-assign]
    return app
