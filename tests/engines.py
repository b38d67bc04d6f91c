"""Test engines at module level, so Dask can pickle them by reference (STYLE.md: Tests).

Engines that must remember something across worker processes (a first attempt, a critical error
raised once) keep it in marker files, created with O_EXCL so exactly one call wins.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

import pandas as pd

from ctxbatch.errors import CriticalError, RetryLater
from ctxbatch.pipeline.engine import batch_engine


def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return {"echo": payload}


def fail_when_flagged(payload: dict[str, Any]) -> dict[str, Any]:
    if payload.get("bad"):
        raise ValueError(f"bad row {payload.get('i')}")
    return {"i": payload.get("i")}


async def async_fail_when_flagged(payload: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.001)
    if payload.get("bad"):
        raise ValueError(f"bad row {payload.get('i')}")
    return {"i": payload.get("i")}


@batch_engine
def batch_fail_when_flagged(frame: pd.DataFrame) -> list[dict[str, Any]]:
    bad = [p.get("i") for p in frame.payload if p.get("bad")]
    if bad:
        raise ValueError(f"bad rows {bad}")
    return [{"i": p.get("i")} for p in frame.payload]


def record_call(payload: dict[str, Any]) -> dict[str, Any]:
    """Appends payload["i"] to payload["calls_file"] once the row is done: after payload["sleep"] seconds,
    and after the file payload["release"] exists if it names one (at most 120 s, so a row left behind ends).
    A call first creates the file payload["started"] if it names one: evidence that a call is under way."""
    if payload.get("started"):
        open(payload["started"], "a").close()
    if payload.get("sleep"):
        time.sleep(payload["sleep"])
    if payload.get("release"):
        _wait_for_file(payload["release"], 120)
    # One write per call in append mode, so concurrent workers' lines never interleave.
    with open(payload["calls_file"], "a") as calls:
        calls.write(f"{payload['i']}\n")
    return {"i": payload["i"]}


def _first_time(marker_dir: str, name: str) -> bool:
    """True exactly once per marker, across threads and processes."""
    try:
        fd = os.open(os.path.join(marker_dir, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def fail_first_attempt(payload: dict[str, Any]) -> dict[str, Any]:
    if _first_time(payload["marker_dir"], f"attempt-{payload['i']}"):
        raise RuntimeError(f"first attempt at row {payload['i']} fails")
    return {"i": payload["i"]}


def critical_first_time(payload: dict[str, Any]) -> dict[str, Any]:
    if _first_time(payload["marker_dir"], "critical"):
        raise CriticalError("the engine lost its backend (first time only)")
    return {"i": payload.get("i")}


def unstorable(payload: dict[str, Any]) -> Any:
    return {"i": payload.get("i"), "tags": {"a", "b"}}


def nap(payload: dict[str, Any]) -> dict[str, Any]:
    """Sleeps payload["sleep"] seconds: a row with a known cost."""
    time.sleep(payload.get("sleep", 0))
    return {"i": payload.get("i")}


def timed_call(payload: dict[str, Any]) -> dict[str, Any]:
    """Sleeps payload["sleep"] seconds, then appends {who, start, end} (wall clock) to payload["calls_file"]."""
    start = time.time()
    time.sleep(payload.get("sleep", 0))
    line = json.dumps({"who": payload.get("who"), "start": start, "end": time.time()})
    with open(payload["calls_file"], "a") as calls:  # one write per call: lines never interleave
        calls.write(line + "\n")
    return {"i": payload.get("i")}


def nap_with_usage(payload: dict[str, Any]) -> dict[str, Any]:
    """nap(), answered as a chat completion that used 10 + i prompt and i completion tokens."""
    nap(payload)
    i = payload.get("i", 0)
    return {
        "object": "chat.completion",
        "usage": {"prompt_tokens": 10 + i, "completion_tokens": i, "total_tokens": 10 + 2 * i},
    }


def tokens_of(i: int) -> tuple[int, int, int]:
    """(input, output, total) tokens that openai_answer reports for payload i: embeddings have no output."""
    output = 0 if i % 4 == 3 else i
    return 10 + i, output, 10 + i + output


def openai_answer(payload: dict[str, Any]) -> dict[str, Any]:
    """An answer in one of OpenAI's shapes (by i % 4) reporting tokens_of(i); a payload flagged `bad` fails.

    0: a chat completion as the `http` engine stores it; 1: the same as a batch-line response (the
    `openai` engine's result); 2: a Responses API answer as a batch-line response; 3: embeddings.
    """
    if payload.get("bad"):
        raise ValueError(f"bad row {payload.get('i')}")
    i = payload["i"]
    prompt, completion, total = tokens_of(i)
    chat = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"row {i}"}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total},
    }
    if i % 4 == 0:
        return chat
    if i % 4 == 1:
        return {"status_code": 200, "request_id": f"req-{i}", "body": chat}
    if i % 4 == 2:
        usage = {"input_tokens": prompt, "output_tokens": completion, "total_tokens": total}
        return {"status_code": 200, "request_id": f"req-{i}", "body": {"object": "response", "usage": usage}}
    return {"object": "list", "data": [], "usage": {"prompt_tokens": prompt, "total_tokens": total}}


def always_critical(payload: dict[str, Any]) -> dict[str, Any]:
    raise CriticalError("the service is down")


def _mark(kind: str) -> None:
    """A file per call in $CTXBATCH_TEST_MARKERS: evidence that survives the worker process."""
    name = f"{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    open(os.path.join(os.environ["CTXBATCH_TEST_MARKERS"], name), "x").close()


def with_setup(payload: dict[str, Any]) -> dict[str, Any]:
    """An engine with per-worker setup() and teardown() that leave marker files."""
    return {"i": payload.get("i")}


with_setup.setup = lambda: _mark("setup")  # type: ignore[attr-defined]
with_setup.teardown = lambda: _mark("teardown")  # type: ignore[attr-defined]


def _wait_for_file(path: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)


def wait_for_release(payload: dict[str, Any]) -> dict[str, Any]:
    """Blocks until the file payload["release"] exists (at most 60 s): a stalled engine, on demand."""
    _wait_for_file(payload["release"], 60)
    return {"i": payload.get("i")}


def nap_then_fail_when_flagged(payload: dict[str, Any]) -> dict[str, Any]:
    """nap(), then fail_when_flagged(): slow enough rows for several loops to share them."""
    nap(payload)
    return fail_when_flagged(payload)


def _post(payload: dict[str, Any]) -> Any:
    """POST the payload to `payload["url"]`; a 429 becomes RetryLater with the service's Retry-After."""
    request = urllib.request.Request(
        payload["url"], json.dumps(payload).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 429:
            raise RetryLater(float(exc.headers.get("Retry-After", 0)), f"429 from {payload['url']}") from None
        raise


def call_service(payload: dict[str, Any]) -> Any:
    return _post(payload)


async def async_call_service(payload: dict[str, Any]) -> Any:
    """The same call over asyncio streams: a client per call would cost more than the call itself."""
    url = urllib.parse.urlsplit(payload["url"])
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        body = json.dumps(payload).encode()
        head = f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Length: {len(body)}\r\n"
        writer.write(f"{head}Connection: close\r\n\r\n".encode() + body)
        raw_head, _, raw_body = (await reader.read()).partition(b"\r\n\r\n")
    finally:
        writer.close()
    status_line, *header_lines = raw_head.decode().split("\r\n")
    status = int(status_line.split()[1])
    headers = dict(line.split(": ", 1) for line in header_lines)
    if status == 429:
        raise RetryLater(float(headers.get("Retry-After", 0)), "429")
    if status != 200:
        raise RuntimeError(f"HTTP {status}")
    return json.loads(raw_body)


async def async_call_service_signed(payload: dict[str, Any]) -> Any:
    """async_call_service, the payload signed with the calling process's id (the loop, in a thread cluster)
    and the call's start on the machine's monotonic clock (shared by its processes)."""
    return await async_call_service({**payload, "pid": os.getpid(), "started": time.monotonic()})


@batch_engine
def batch_call_service(frame: pd.DataFrame) -> list[Any]:
    """One call per row; a row the service turns away is returned as a RetryLater instance."""
    results: list[Any] = []
    for payload in frame["payload"]:
        try:
            results.append(_post(payload))
        except RetryLater as later:
            results.append(later)
    return results


class LoopBound:
    """An async engine with async setup() and teardown(): each call fails unless it runs on the loop
    its setup() ran on, and teardown() leaves a marker file when it runs on that loop too."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def configure(self, settings: Any) -> LoopBound:
        return LoopBound()  # shipped by value, as the http engine is: each worker sets up its own copy

    async def setup(self) -> None:
        self.loop = asyncio.get_running_loop()

    async def teardown(self) -> None:
        if asyncio.get_running_loop() is self.loop:
            _mark("async-teardown")

    async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        if asyncio.get_running_loop() is not self.loop:
            raise RuntimeError("called on another loop than the one its setup() ran on")
        return {"i": payload.get("i")}


loop_bound = LoopBound()


class HungTeardown:
    """An async engine whose async teardown() never ends."""

    async def teardown(self) -> None:
        await asyncio.Event().wait()

    async def __call__(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"i": payload.get("i")}
