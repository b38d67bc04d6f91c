"""`ctxbatch serve`: the HTTP API under uvicorn. FastAPI and uvicorn load only when it runs."""

from __future__ import annotations

import click

from ctxbatch.cli.state import State, pass_state, say
from ctxbatch.hosts import is_loopback
from ctxbatch.io import mask_uri
from ctxbatch.service.security import TOKEN_VARIABLE, resolve_token


@click.command()
@click.option("--host", help="Address to bind (default: api.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port to bind (default: api.port, 8000).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback host without an API token.")
@pass_state
def serve(state: State, host: str | None, port: int | None, insecure: bool) -> None:
    """Serve the HTTP API (bulk submit, status, results, /metrics; OpenAI's Files and Batches under /v1)."""
    settings = state.config
    host = host or settings.api.host
    port = settings.api.port if port is None else port
    token = resolve_token(settings)
    if token is None and not is_loopback(host) and not insecure:
        raise click.UsageError(
            f"refusing to serve on {host} without a token: set api.token or {TOKEN_VARIABLE}, "
            "bind 127.0.0.1, or pass --insecure"
        )
    import uvicorn

    from ctxbatch.service.app import create_app

    store = state.store
    app = create_app(store, settings)
    shown = f"[{host}]" if ":" in host else host
    say(
        f"serving the ctxbatch API at http://{shown}:{port} over {mask_uri(store.uri)} "
        f"(database {store.database_name}); OpenAPI at /docs, OpenAI's Batch API at /v1; "
        + ("a bearer token is required" if token else "no token is required")
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        store.close()
