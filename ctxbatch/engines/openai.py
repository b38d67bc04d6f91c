"""The built-in OpenAI engine (alias `openai`): each payload is one request of an OpenAI batch.

A payload is a line of an OpenAI Batch API file without its `custom_id` (kept on the context):
`{"method": "POST", "url": "/v1/chat/completions", "body": {...}}`. Its `body` is POSTed to its
`url` under `openai.base_url`, joined as the openai SDK joins them: the base ends at the API's root,
so `http://host:8000/v1` and `/v1/chat/completions` make `http://host:8000/v1/chat/completions`.
The result is what a line of the batch's output holds under `response`:
`{"status_code", "request_id" (the x-request-id header), "body" (the response's JSON)}`.

Answers are judged as the `http` engine judges them (`engines/session.py`), and a failure keeps that
same `{status_code, request_id, body}` in the context's `error.response`: a 4xx other than 408 and
429 fails at once (FailNow), a 5xx is retried and the last one kept. A payload that is no such
request fails at once, before any call. `openai.base_url` and `openai.api_key` default to
$OPENAI_BASE_URL and $OPENAI_API_KEY, read when the engine is configured for a run; the key is sent
as `Authorization: Bearer`, and a `${VAR}` in it is read from the worker's environment, so no key
travels with the engine's settings.
"""

from __future__ import annotations

import json
import os
from typing import Any

import aiohttp

from ctxbatch import ConfigError, FailNow, Settings
from ctxbatch.engines.session import SessionEngine, connections_for, expand

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BASE_URL_VARIABLE = "OPENAI_BASE_URL"
KEY_VARIABLE = "OPENAI_API_KEY"
# The version prefix of a batch line's url: the part of the path `base_url` already ends at.
API_ROOT = "/v1"
# The openai SDK's connect timeout: an unreachable API fails a call in seconds, not in `timeout_seconds`.
CONNECT_SECONDS = 5.0
SHOWN_CHARS = 200


def resolved(section: Any) -> Any:
    """The `openai:` section with its defaults read from the environment now; ConfigError for a bad one.

    An unset key becomes a reference to $OPENAI_API_KEY when that is set (read again on the workers),
    else "" (no Authorization header).
    """
    base_url = section.base_url or os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError("openai.base_url", f"${BASE_URL_VARIABLE} is {base_url!r}, not an http:// or https:// URL")
    api_key = section.api_key
    if api_key is None:
        api_key = f"${{{KEY_VARIABLE}}}" if os.environ.get(KEY_VARIABLE) else ""
    expand("openai.api_key", api_key)  # a missing variable is refused here, before any worker starts
    return section.model_copy(update={"base_url": base_url, "api_key": api_key})


def request_of(payload: Any) -> tuple[str, dict[str, Any]]:
    """The `url` and `body` of an OpenAI batch request; FailNow for a payload that is none."""
    if not (
        isinstance(payload, dict)
        and isinstance(payload.get("url"), str)
        and payload["url"].startswith("/")
        and isinstance(payload.get("body"), dict)
    ):
        raise FailNow(f"the payload is not an OpenAI batch request (needs url and body): {shown(payload)}")
    method = payload.get("method", "POST")
    if not isinstance(method, str) or method.upper() != "POST":
        raise FailNow(f"the payload's method is {method!r}: OpenAI batch requests are POST")
    return payload["url"], payload["body"]


def shown(payload: Any) -> str:
    try:
        text = json.dumps(payload, default=repr)
    except (ValueError, RecursionError):
        text = repr(type(payload))
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def endpoint(base_url: str, path: str) -> str:
    """A batch line's url under `base_url`, which ends at the API's root (where the line's `/v1` ends)."""
    if path == API_ROOT or path.startswith(f"{API_ROOT}/"):
        path = path[len(API_ROOT) :]
    return f"{base_url.rstrip('/')}/{path.lstrip('/')}"


class OpenAIEngine(SessionEngine):
    """An async engine sending OpenAI batch requests to `openai.base_url`; shipped with its settings."""

    connect_seconds = CONNECT_SECONDS

    def __init__(self, settings: Any = None, connections: int | None = None) -> None:
        # The `openai:` section (config.OpenAISettings); its defaults are read by `configure`.
        super().__init__(settings or Settings().openai, connections)

    def configure(self, settings: Settings) -> OpenAIEngine:
        return OpenAIEngine(resolved(settings.openai), connections_for(settings))

    def headers(self) -> dict[str, str]:
        key = expand("openai.api_key", resolved(self.settings).api_key)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def body(self, payload: dict[str, Any]) -> Any:
        return request_of(payload)[1]

    async def send(self, session: aiohttp.ClientSession, payload: dict[str, Any]) -> Any:
        path, body = request_of(payload)
        # Unconfigured (a partition run by hand), the defaults are read at each call.
        url = endpoint(self.settings.base_url or resolved(self.settings).base_url, path)
        reply = await self.exchange(session, "POST", url, body)
        response = {
            "status_code": reply.status,
            "request_id": reply.headers.get("x-request-id"),
            "body": reply.content(),
        }
        reply.check(url, response)
        return response


openai_engine = OpenAIEngine()
