"""What the engines that call a service over HTTP share (`http`, `openai`): the session and the answer.

One `aiohttp.ClientSession` per worker, made in the async `setup()` on the worker's engine loop and
closed in the async `teardown()`; its connector keeps at most as many connections as the worker has
calls in flight (`worker.engine_concurrency`, or `max_engine_concurrency` under `auto`), kept alive
between calls. A subclass says what one call sends (`send`, `body`) and with which headers.

What the service answers decides what happens to the context (`check`):
- 429 or 503 (with `Retry-After` honoured): RetryLater, the context waits without spending retries;
- 408, other 5xx, connection errors and timeouts: a failure (ServiceError), retried as any other;
- other 4xx: FailNow, the request itself is bad, so the context fails at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
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
    """A response that a later try may not get (408, 5xx, no answer in time).

    `response`, when given, is kept in the context's error record, so a context that runs out of
    retries keeps the service's last answer.
    """

    def __init__(self, message: str, response: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.response = response


def expand(key: str, text: str) -> str:
    """`text` with each ${ENV_VAR} replaced from the environment; ConfigError names `key` and a missing one."""

    def replace(match: re.Match[str]) -> str:
        found = os.environ.get(match.group(1))
        if found is None:
            raise ConfigError(key, f"environment variable {match.group(1)} is not set")
        return found

    return ENV_VAR.sub(replace, text)


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


def decoded(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Reply:
    """A service's answer, read whole."""

    status: int
    headers: Mapping[str, str]
    text: str

    def content(self) -> Any:
        """The body's JSON, or its text when it is no JSON."""
        try:
            return json.loads(self.text)
        except ValueError:
            return self.text

    def check(self, url: str, response: dict[str, Any] | None = None) -> None:
        """Raise what the status calls for (nothing below 400); `response` goes with a failure, to be kept."""
        if self.status < 400:
            return
        said = f"HTTP {self.status} from {url}: {self.text[:BODY_CHARS]}"
        if self.status in BUSY:
            raise RetryLater(retry_after(self.headers), said)
        if self.status in RETRIED or self.status >= 500:
            raise ServiceError(said, response)
        raise FailNow(said, response)


class SessionEngine:
    """An async engine with one session per worker; shipped to the workers with its settings section.

    `settings` is the engine's section (it has `timeout_seconds`); `connections`, the connector's limit.
    """

    # Longest wait to connect to the service; None: within the call's timeout.
    connect_seconds: float | None = None

    def __init__(self, settings: Any, connections: int | None = None) -> None:
        self.settings = settings
        self.connections = connections or connections_for(Settings())
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "connections": self.connections}

    def __setstate__(self, state: dict[str, Any]) -> None:
        SessionEngine.__init__(self, state["settings"], state["connections"])

    def headers(self) -> dict[str, str]:
        """Headers sent with every call, read from the worker's environment; ConfigError when it lacks one."""
        return {}

    def body(self, payload: dict[str, Any]) -> Any:
        """What is sent for a payload (FailNow when it cannot be sent)."""
        raise NotImplementedError

    async def send(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> Any:
        """One call for one payload, on `session`: the result to store, or the exception `Reply.check` raised."""
        raise NotImplementedError

    def tokens(self, payload: dict[str, Any]) -> int:
        """The call's token estimate under `limits.tokens_per_minute`: that of the body it sends."""
        return estimate_tokens(self.body(payload))

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
            headers = self.headers()
        except ConfigError as exc:  # this worker's environment lacks a variable: no row could succeed
            raise CriticalError(str(exc)) from exc
        connector = aiohttp.TCPConnector(
            limit=self.connections, limit_per_host=self.connections, keepalive_timeout=KEEPALIVE_SECONDS
        )
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds, sock_connect=self.connect_seconds)
        # trust_env: proxies from HTTP(S)_PROXY / NO_PROXY, as the httpx client this replaced honoured them.
        return aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector, trust_env=True)

    async def __call__(self, payload: dict[str, Any]) -> Any:
        if self._session is not None and self._loop is asyncio.get_running_loop():
            return await self.send(self._session, payload)
        # No worker set this engine up on this loop: `run_partition` in a notebook runs each partition
        # on a fresh loop that closes after it, and nothing would close a session kept across calls
        # there ("Unclosed client session"). So this call has a session of its own, closed after it.
        async with self.open() as session:
            return await self.send(session, payload)

    async def exchange(self, session: aiohttp.ClientSession, method: str, url: str, body: Any) -> Reply:
        """`body` sent as JSON, the answer read whole; ServiceError when none comes within the timeout."""
        try:
            async with session.request(method, url, json=body) as response:
                return Reply(response.status, response.headers, decoded(await response.read(), response.charset))
        except TimeoutError:
            # Told apart from worker.context_timeout_seconds, which isolate reports as a TimeoutError.
            raise ServiceError(f"no answer from {url} within {self.settings.timeout_seconds:g} s") from None
