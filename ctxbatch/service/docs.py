"""The API's documentation pages, /docs (Swagger UI) and /redoc (ReDoc), served with their assets from the package.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so they are blank on a machine without
internet (issue 21). fastapi-offline ships both bundles (it tracks their releases; MIT, with Swagger
UI under Apache-2.0 and ReDoc under MIT) and serves them at ASSETS. A Content-Security-Policy keeps
the pages to this server: ReDoc's bundle asks Redocly's CDN for its attribution logo, which the
browser then never fetches (the logo hides itself).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOC_PAGES = frozenset({"/docs", "/redoc"})
ASSETS = "/static-offline-docs"
# Both pages run an inline script and inline styles; ReDoc's search runs in a blob: worker.
POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:"
)
# Swagger UI would show a badge drawn by swagger.io's online validator for a spec not on localhost.
SWAGGER_UI = {"validatorUrl": None}


def documented_app(**fastapi: Any) -> FastAPI:
    """A FastAPI app whose /docs and /redoc need nothing but this server."""
    app: FastAPI = FastAPIOffline(static_url=ASSETS, swagger_ui_parameters=SWAGGER_UI, **fastapi)
    app.add_middleware(ConfinedDocs)
    return app


class ConfinedDocs:
    """Pure ASGI middleware: the documentation pages carry POLICY, so they load nothing from elsewhere."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in DOC_PAGES:
            await self.app(scope, receive, send)
            return

        async def confined(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Content-Security-Policy"] = POLICY
            await send(message)

        await self.app(scope, receive, confined)
