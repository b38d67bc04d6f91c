"""The built-in HTTP engine (alias `http`): one request per context to the service in `http:`.

The payload (or its `http.payload_field`) is sent as JSON; the result is the response's JSON, or its
text. What the service answers decides what happens to the context:
- 429 or 503 (with `Retry-After` honoured): RetryLater, the context waits without spending retries;
- 408, other 5xx, connection errors and timeouts: a failure, retried as any other;
- other 4xx: FailNow, the request itself is bad, so the context fails at once with the status and the
  start of the body.
One `httpx.AsyncClient` per worker (made in `setup()`, keep-alive pooled, closed in `teardown()`),
used from the worker's one event loop.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import httpx

from ctxbatch import ConfigError, CriticalError, FailNow, RetryLater, Settings, estimate_tokens

ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
BODY_CHARS = 500
BUSY = (429, 503)
RETRIED = (408,)


class ServiceError(Exception):
    """A response that a later try may not get (408, 5xx)."""


def expand_headers(headers: dict[str, str]) -> dict[str, str]:
    """The headers with each ${ENV_VAR} replaced from the environment; ConfigError names a missing one."""

    def value(name: str, text: str) -> str:
        def replace(match: re.Match[str]) -> str:
            found = os.environ.get(match.group(1))
            if found is None:
                raise ConfigError(f"http.headers.{name}", f"environment variable {match.group(1)} is not set")
            return found

        return ENV_VAR.sub(replace, text)

    return {name: value(name, text) for name, text in headers.items()}


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the service asks to wait (Retry-After in seconds; an HTTP date falls back to the backoff)."""
    raw = response.headers.get("Retry-After", "").strip()
    try:
        return max(float(raw), 0.0)
    except ValueError:
        return None


class HttpEngine:
    """An async engine calling `settings.url`; one per run, shipped to the workers with its settings."""

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings or Settings().http  # the `http:` section (config.HttpSettings)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])  # type: ignore[misc]

    def configure(self, settings: Settings) -> HttpEngine:
        if not settings.http.url:
            raise ConfigError("http.url", "the http engine needs the service's URL (set `http: {url: ...}`)")
        expand_headers(settings.http.headers)  # a missing variable is refused here, before any worker starts
        return HttpEngine(settings.http)

    def setup(self) -> None:
        try:
            headers = expand_headers(self.settings.headers)
        except ConfigError as exc:  # this worker's environment lacks a variable: no row could succeed
            raise CriticalError(str(exc)) from exc
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=self.settings.timeout_seconds,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        )

    def teardown(self) -> None:
        client, loop, self._client = self._client, self._loop, None
        if client is not None and loop is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=5)

    def tokens(self, payload: dict[str, Any]) -> int:
        """The call's token estimate under `limits.tokens_per_minute`: that of the body it sends."""
        field = self.settings.payload_field
        return estimate_tokens(payload.get(field) if field else payload)

    async def __call__(self, payload: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop not in (None, loop):
            # Run without a worker's loop (run_partition in a notebook): a client per loop it meets.
            self.setup()
        assert self._client is not None
        self._loop = loop
        field = self.settings.payload_field
        body = payload.get(field) if field else payload
        response = await self._client.request(self.settings.method, str(self.settings.url), json=body)
        return answer(response)


def answer(response: httpx.Response) -> Any:
    """The response's JSON (or text), or the exception its status calls for."""
    status = response.status_code
    if status < 400:
        try:
            return response.json()
        except ValueError:
            return response.text
    said = f"HTTP {status} from {response.request.url}: {response.text[:BODY_CHARS]}"
    if status in BUSY:
        raise RetryLater(retry_after(response), said)
    if status in RETRIED or status >= 500:
        raise ServiceError(said)
    raise FailNow(said)


http_engine = HttpEngine()
