"""The HTTP API (FastAPI): bulk submit, batch status and results over a ContextStore; OpenAI's Files and
Batches API under /v1.

FastAPI is imported only when the app is built, so `ctxbatch` commands other than `serve` start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctxbatch.service.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ctxbatch.service.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
