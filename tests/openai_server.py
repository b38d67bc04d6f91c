"""A small real OpenAI-compatible HTTP server, for the tests and benchmarks of the `openai` engine.

`POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings` and `/v1/responses` answer in
OpenAI's shapes, each with a `usage` (prompt or input tokens: the request's text / 4; completion or
output tokens: its `max_tokens`, `max_completion_tokens` or `max_output_tokens`, else
COMPLETION_TOKENS) and a unique `x-request-id` (`req_...`). The answer echoes the request's last text
(the last message's content, the prompt, the input), so a test can match answers to lines. A `Script`
says what else it does: take `latency` seconds per call; hold at most `capacity` calls at once and
answer 429 with `Retry-After` beyond that; answer a request whose text holds a `fail` marker with
that status in OpenAI's error shape. It records what it saw: paths, Authorization headers, request
ids, calls, the most held at once. `GET /stats` answers the same counts as JSON.

In a test: `with serve(Script(latency=0.01)) as base_url:` (`http://127.0.0.1:PORT/v1`, in a thread,
stopped on exit). As a process (a benchmark's): `python tests/openai_server.py --port 8000
--latency 0.2 --capacity 64` prints its base URL once it listens, and its counts as JSON when
stopped (SIGTERM or SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

COMPLETION_TOKENS = 16  # a call's completion tokens when the request sets no maximum
EMBEDDING_DIMENSIONS = 8  # unless the request asks for `dimensions`
CHARS_PER_TOKEN = 4
# A request whose text holds a marker is answered with its status, in OpenAI's error shape.
FAIL = {"BAD-REQUEST": 400, "SERVER-ERROR": 500}
ERROR_TYPES = {400: "invalid_request_error", 429: "requests", 500: "server_error", 503: "server_error"}


@dataclass
class Script:
    latency: float = 0.0  # seconds each call served takes
    capacity: int | None = None  # calls held at once; beyond it a call is answered 429 at once
    retry_after: str = "1"  # the Retry-After of those 429s
    fail: dict[str, int] = field(default_factory=lambda: dict(FAIL))
    # What it saw (read them once the server stopped, or between calls).
    calls: int = 0
    inside: int = 0  # calls held now
    most_inside: int = 0  # the most calls held at once
    turned_away: int = 0  # calls answered 429 for want of capacity
    paths: Counter[str] = field(default_factory=Counter)
    authorizations: Counter[str | None] = field(default_factory=Counter)
    request_ids: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def stats(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "inside": self.inside,
            "most_inside": self.most_inside,
            "turned_away": self.turned_away,
            "paths": dict(self.paths),
            "statuses": {str(status): count for status, count in self.statuses.items()},
        }


def text_of(value: Any) -> str:
    """The text in a request field: a string, a list of them, messages' `content`, parts' `text`."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(text_of(item) for item in value)
    if isinstance(value, dict):
        return text_of(value.get("content")) + text_of(value.get("text"))
    return ""


def last_text(value: Any) -> str:
    """What the answer echoes: the last message's (or item's) text, or the text itself."""
    return text_of(value[-1]) if isinstance(value, list) and value else text_of(value)


def prompt_tokens(body: dict[str, Any]) -> int:
    chars = sum(len(text_of(body.get(name))) for name in ("messages", "prompt", "input", "instructions"))
    return max(1, math.ceil(chars / CHARS_PER_TOKEN))


def completion_tokens(body: dict[str, Any], *names: str) -> int:
    for name in names:
        if isinstance(body.get(name), int) and not isinstance(body[name], bool):
            return int(body[name])
    return COMPLETION_TOKENS


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"), "param": param, "code": code}}


def chat(body: dict[str, Any], ident: str) -> dict[str, Any]:
    prompt, answer = prompt_tokens(body), completion_tokens(body, "max_completion_tokens", "max_tokens")
    message = {"role": "assistant", "content": last_text(body.get("messages")), "refusal": None}
    return {
        "id": f"chatcmpl-{ident}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "local"),
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer},
    }


def completion(body: dict[str, Any], ident: str) -> dict[str, Any]:
    prompt, answer = prompt_tokens(body), completion_tokens(body, "max_tokens")
    choice = {"index": 0, "text": last_text(body.get("prompt")), "logprobs": None, "finish_reason": "stop"}
    return {
        "id": f"cmpl-{ident}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model", "local"),
        "choices": [choice],
        "usage": {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer},
    }


def vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit-free vector of the text: the same text, the same embedding."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(digest[i % len(digest)] / 255, 6) for i in range(dimensions)]


def embeddings(body: dict[str, Any], ident: str) -> dict[str, Any]:
    given = body.get("input")
    texts = given if isinstance(given, list) else [given]
    dimensions = body.get("dimensions") if isinstance(body.get("dimensions"), int) else EMBEDDING_DIMENSIONS
    data = [
        {"object": "embedding", "index": i, "embedding": vector(text_of(text), dimensions)}
        for i, text in enumerate(texts)
    ]
    prompt = prompt_tokens(body)
    usage = {"prompt_tokens": prompt, "total_tokens": prompt}
    return {"object": "list", "data": data, "model": body.get("model", "local"), "usage": usage}


def response(body: dict[str, Any], ident: str) -> dict[str, Any]:
    given, answer = prompt_tokens(body), completion_tokens(body, "max_output_tokens")
    content = [{"type": "output_text", "text": last_text(body.get("input")), "annotations": []}]
    output = [{"type": "message", "id": f"msg_{ident}", "status": "completed", "role": "assistant", "content": content}]
    return {
        "id": f"resp_{ident}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": body.get("model", "local"),
        "output": output,
        "usage": {"input_tokens": given, "output_tokens": answer, "total_tokens": given + answer},
    }


ROUTES = {"chat/completions": chat, "completions": completion, "embeddings": embeddings, "responses": response}


def make_app(script: Script) -> web.Application:
    """The server's routes, answering as `script` says and recording in it what they saw."""

    async def call(request: web.Request) -> web.Response:
        ident = uuid.uuid4().hex
        headers = {"x-request-id": f"req_{ident}"}
        script.calls += 1
        script.paths[request.path] += 1
        script.authorizations[request.headers.get("Authorization")] += 1
        script.request_ids.append(headers["x-request-id"])
        if script.capacity is not None and script.inside >= script.capacity:
            script.turned_away += 1
            busy = error(429, "Rate limit reached: too many requests at once", code="rate_limit_exceeded")
            return answer(script, 429, busy, {**headers, "Retry-After": script.retry_after})

        script.inside += 1
        script.most_inside = max(script.most_inside, script.inside)
        try:
            if script.latency:
                await asyncio.sleep(script.latency)
            try:
                body = await request.json()
            except ValueError:
                return answer(script, 400, error(400, "We could not parse the JSON body of your request."), headers)
            if not isinstance(body, dict):
                return answer(script, 400, error(400, "The request body must be a JSON object."), headers)
            text = text_of([body.get(name) for name in ("messages", "prompt", "input")])
            for marker, status in script.fail.items():
                if marker in text:
                    return answer(script, status, error(status, f"the request holds {marker}"), headers)
            return answer(script, 200, ROUTES[request.match_info["route"]](body, ident), headers)
        finally:
            script.inside -= 1

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(script.stats())

    app = web.Application()
    app.router.add_post(r"/v1/{route:chat/completions|completions|embeddings|responses}", call)
    app.router.add_get("/stats", stats)
    return app


def answer(script: Script, status: int, body: dict[str, Any], headers: dict[str, str]) -> web.Response:
    script.statuses[status] += 1
    return web.json_response(body, status=status, headers=headers)


async def start(script: Script, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """The server listening (port 0: a free one); its runner and base URL (`http://host:port/v1`)."""
    # Calls still held when it stops are given a moment, then cut: a test never waits out a latency.
    runner = web.AppRunner(make_app(script), access_log=None, shutdown_timeout=0.25)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}/v1"


async def stop(runner: web.AppRunner) -> None:
    """The server stopped, and every call it still held cut, before its loop closes."""
    await runner.cleanup()
    # A call whose caller left (a timeout) runs on past the shutdown timeout: cancelled here, not
    # destroyed pending with the loop.
    held = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


@contextmanager
def serve(script: Script) -> Iterator[str]:
    """Serve `script` on a free port of 127.0.0.1, on a loop in a thread; yields the base URL; stopped on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="openai-server", daemon=True)
    thread.start()
    try:
        runner, base_url = asyncio.run_coroutine_threadsafe(start(script), loop).result()
        try:
            yield base_url
        finally:
            asyncio.run_coroutine_threadsafe(stop(runner), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def main(script: Script, host: str, port: int) -> None:
    runner, base_url = await start(script, host, port)
    print(base_url, flush=True)
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    await stopping.wait()
    await stop(runner)
    print(json.dumps(script.stats()), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An OpenAI-compatible server for tests and benchmarks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (the base URL printed says which)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each call takes")
    parser.add_argument("--capacity", type=int, default=None, help="calls held at once; beyond: 429")
    parser.add_argument("--retry-after", default="1", help="the Retry-After of the 429s beyond capacity")
    options = parser.parse_args()
    script = Script(latency=options.latency, capacity=options.capacity, retry_after=options.retry_after)
    asyncio.run(main(script, options.host, options.port))
