"""The built-in HTTP engine (alias `http`): one request per context to the service in `http:`.

The payload (or its `http.payload_field`) is sent as JSON; the result is the response's JSON, or its
text. What the service answers decides what happens to the context, as `engines/session.py` says:
429 and 503 defer it, 408, other 5xx, connection errors and timeouts are failures retried, other
4xx fail it at once (FailNow) with the status and the start of the body; so does a payload without
the `payload_field` to send, before any call. One `aiohttp.ClientSession` per worker
(`SessionEngine`); `http.headers` take ${ENV_VAR} from the worker's environment.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from ctxbatch import ConfigError, FailNow, Settings
from ctxbatch.engines.session import SessionEngine, connections_for, expand


def expand_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers with each ${ENV_VAR} replaced from the environment; ConfigError names a missing one."""
    return {name: expand(f"http.headers.{name}", text) for name, text in headers.items()}


class HttpEngine(SessionEngine):
    """An async engine calling `settings.url`; one per run, shipped to the workers with its settings."""

    def __init__(self, settings: Any = None, connections: int | None = None) -> None:
        # The `http:` section (config.HttpSettings).
        super().__init__(settings or Settings().http, connections)

    def configure(self, settings: Settings) -> HttpEngine:
        if not settings.http.url:
            raise ConfigError("http.url", "the http engine needs the service's URL (set `http: {url: ...}`)")
        expand_headers(settings.http.headers)  # a missing variable is refused here, before any worker starts
        return HttpEngine(settings.http, connections_for(settings))

    def headers(self) -> dict[str, str]:
        return expand_headers(self.settings.headers)

    def body(self, payload: dict[str, Any]) -> Any:
        """What is sent for a payload: all of it, or its `http.payload_field`.

        A payload without that field fails at once (FailNow): sending an empty body would only be
        refused, or worse answered, and retrying it cannot help.
        """
        field = self.settings.payload_field
        if not field:
            return payload
        if not isinstance(payload, dict) or field not in payload:
            raise FailNow(f"the payload has no field {field!r} to send (http.payload_field)")
        return payload[field]

    async def send(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> Any:
        body = self.body(payload)
        url = str(self.settings.url)
        reply = await self.exchange(session, self.settings.method, url, body)
        reply.check(url)
        return reply.content()


http_engine = HttpEngine()
