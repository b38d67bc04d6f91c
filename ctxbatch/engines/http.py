"""The built-in HTTP engine (alias `http`): one request per context to the service in `http:`.

The payload (or its `http.payload_field`) is sent as JSON; the result is the response's JSON, or its
text. What the service answers decides what happens to the context:
- 429 or 503 (with `Retry-After` honoured): RetryLater, the context waits without spending retries;
- 408, other 5xx, connection errors and timeouts: a failure, retried as any other;
- other 4xx: FailNow, the request itself is bad, so the context fails at once with the status and the
  start of the body; so does a payload without the `payload_field` to send, before any call.
One `aiohttp.ClientSession` per worker, made in the async `setup()` on the worker's engine loop and
closed in the async `teardown()`; its connector keeps at most as many connections as the worker has
calls in flight (`worker.engine_concurrency`, or `max_engine_concurrency` under `auto`), kept alive
between calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import aiohttp

from ctxbatch import ConfigError, CriticalError, FailNow, RetryLater, Settings, estimate_tokens

ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
BODY_CHARS = 500
BUSY = (429, 503)
RETRIED = (408,)
# Idle connections are dropped before uvicorn's default 5 s keep-alive would close them under a
# request on its way (a reused connection the server just closed fails that call).
KEEPALIVE_SECONDS = 4.0


class ServiceError(Exception):
    """A response that a later try may not get (408, 5xx, no answer in time)."""


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


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the service asks to wait (Retry-After in seconds; an HTTP date falls back to the backoff)."""
    raw = headers.get("Retry-After", "").strip()
    try:
        return max(float(raw), 0.0)
    except ValueError:
        return None


def connections_for(settings: Settings) -> int:
    """The worker's limit on calls in flight: the most connections its calls can use at once."""
    limit = settings.worker.engine_concurrency
    return limit if isinstance(limit, int) else settings.worker.max_engine_concurrency


class HttpEngine:
    """An async engine calling `settings.url`; one per run, shipped to the workers with its settings."""

    def __init__(self, settings: Any = None, connections: int | None = None) -> None:
        self.settings = settings or Settings().http  # the `http:` section (config.HttpSettings)
        self.connections = connections or connections_for(Settings())
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "connections": self.connections}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"], state["connections"])  # type: ignore[misc]

    def configure(self, settings: Settings) -> HttpEngine:
        if not settings.http.url:
            raise ConfigError("http.url", "the http engine needs the service's URL (set `http: {url: ...}`)")
        expand_headers(settings.http.headers)  # a missing variable is refused here, before any worker starts
        return HttpEngine(settings.http, connections_for(settings))

    async def setup(self) -> None:
        self._session = self.open()
        self._loop = asyncio.get_running_loop()

    async def teardown(self) -> None:
        session, self._session, self._loop = self._session, None, None
        if session is not None:
            await session.close()

    def open(self) -> aiohttp.ClientSession:
        """A session with the headers, timeout and connection limit of the settings; on the running loop."""
        try:
            headers = expand_headers(self.settings.headers)
        except ConfigError as exc:  # this worker's environment lacks a variable: no row could succeed
            raise CriticalError(str(exc)) from exc
        connector = aiohttp.TCPConnector(
            limit=self.connections, limit_per_host=self.connections, keepalive_timeout=KEEPALIVE_SECONDS
        )
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
        # trust_env: proxies from HTTP(S)_PROXY / NO_PROXY, as the httpx client this replaced honoured them.
        return aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector, trust_env=True)

    def tokens(self, payload: dict[str, Any]) -> int:
        """The call's token estimate under `limits.tokens_per_minute`: that of the body it sends."""
        return estimate_tokens(self.body(payload))

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

    async def __call__(self, payload: dict[str, Any]) -> Any:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            return await self.send(self._session, payload)
        # No worker set this engine up on this loop: `run_partition` in a notebook runs each partition
        # on a fresh loop that closes after it, and nothing would close a session kept across calls
        # there ("Unclosed client session"). So this call has a session of its own, closed after it.
        async with self.open() as session:
            return await self.send(session, payload)

    async def send(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> Any:
        body = self.body(payload)
        url = str(self.settings.url)
        try:
            async with session.request(self.settings.method, url, json=body) as response:
                text = decoded(await response.read(), response.charset)
                return answer(response.status, response.headers, text, url)
        except TimeoutError:
            # Told apart from worker.context_timeout_seconds, which isolate reports as a TimeoutError.
            raise ServiceError(f"no answer from {url} within {self.settings.timeout_seconds:g} s") from None


def decoded(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


def answer(status: int, headers: Mapping[str, str], text: str, url: str) -> Any:
    """The response's JSON (or text), or the exception its status calls for."""
    if status < 400:
        try:
            return json.loads(text)
        except ValueError:
            return text
    said = f"HTTP {status} from {url}: {text[:BODY_CHARS]}"
    if status in BUSY:
        raise RetryLater(retry_after(headers), said)
    if status in RETRIED or status >= 500:
        raise ServiceError(said)
    raise FailNow(said)


http_engine = HttpEngine()
