"""ctxbatch calling a service of limited capacity, against a hand-written aiohttp loop and the bound.

The service (uvicorn in a subprocess, this file with `--serve`): 100 ms per request, K = 40 requests
served at once; beyond K requests queue, beyond 2K it answers 429 + Retry-After: 1. ctxbatch is not
told K. Rows, `--contexts` each (one run, fresh database per row):

  (a)  ctxbatch with nothing tuned: `ctxbatch run --engine http` with only `http.url` set
  (b)  (a) with `engine_concurrency: auto` written out
  (c)  a hand-written aiohttp loop with a semaphore of K (it knows K), payloads in memory, no database
  (d)  the bound, K / 0.1 s
  (e)  README's "Calling a service" recipe as written, against an OpenAI-compatible mock answering
       in 200 ms, 64 at once (queueing beyond, 429 + Retry-After beyond 128), 10% of first tries 429
       (no Retry-After, so deferred for the 5 s backoff); its bound is 64 / 0.2 s. A minute at the
       bound (or --contexts, if more), so that the deferrals' last 5 s do not make the figure
  (f)  (a) while the service's capacity drops from K to K/4 for 20 s and comes back

    python benchmarks/service.py --contexts 4000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml
from _common import served, server  # benchmarks/ is on sys.path when run as a script
from pymongo import MongoClient

from ctxbatch.io import ContextStore

K = 40
SECONDS = 0.1
RECIPE_SECONDS, RECIPE_CAPACITY = 0.2, 64
DROP_AFTER, DROP_FOR = 5.0, 20.0
# README's recipe, as its YAML block says (the URL is the mock's, the header's variable set below).
RECIPE = {
    "engine": "http",
    "http": {
        "headers": {"Authorization": "Bearer ${OPENAI_API_KEY}"},
        "timeout_seconds": 120,
        "payload_field": "request",
    },
}


class Capacity:
    """Requests served at once, changeable while requests wait (a semaphore whose size moves)."""

    def __init__(self, size: int) -> None:
        self.size, self.inside = size, 0
        self._turn = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._turn:
            await self._turn.wait_for(lambda: self.inside < self.size)
            self.inside += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self._turn:
            self.inside -= 1
            self._turn.notify_all()

    async def resize(self, size: int) -> None:
        async with self._turn:
            self.size = size
            self._turn.notify_all()


def app(capacity: int, seconds: float, openai: bool) -> Any:
    """The service as an ASGI app; GET answers its counters, POST /capacity {"capacity": n} resizes it.

    It serves `capacity` at once, queues up to as many more, and answers 429 + Retry-After: 1
    beyond. The OpenAI-compatible one also answers 429 (no Retry-After) to the first try of one
    request in ten, and a chat completion to the others.
    """
    gate = Capacity(capacity)
    state = {"inside": 0, "most_inside": 0, "busy": 0, "served": 0}
    seen: set[int] = set()

    async def reply(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["method"] == "GET":
            await reply(send, 200, json.dumps(state).encode(), [])
            return
        if scope["path"] == "/capacity":
            await gate.resize(int(json.loads(body)["capacity"]))
            await reply(send, 200, b"{}", [])
            return
        key = zlib.crc32(body)
        if openai and key % 10 == 0 and key not in seen:
            seen.add(key)
            state["busy"] += 1
            await reply(send, 429, b'{"error": {"message": "busy", "type": "rate_limit"}}', [])
            return
        if state["inside"] >= 2 * gate.size:
            state["busy"] += 1
            await reply(send, 429, b'{"error": "busy"}', [(b"retry-after", b"1")])
            return
        state["inside"] += 1
        state["most_inside"] = max(state["most_inside"], state["inside"])
        try:
            async with gate:
                await asyncio.sleep(seconds)
        finally:
            state["inside"] -= 1
        state["served"] += 1
        answer = completion(body) if openai else body or b"{}"
        await reply(send, 200, answer, [])

    return asgi


def completion(request: bytes) -> bytes:
    """A chat completion as OpenAI's API shapes it, echoing the last message."""
    messages = json.loads(request).get("messages", [{}])
    text = str(messages[-1].get("content", ""))
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "local",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
        }
    ).encode()


def service(openai: bool = False) -> contextlib.AbstractContextManager[str]:
    """The service (or the OpenAI-compatible mock) in a subprocess; its base URL."""
    return served(__file__, *(["--openai"] if openai else []))


def stats(url: str) -> dict[str, int]:
    return dict(httpx.get(url, timeout=5).json())


def payloads(count: int, openai: bool) -> list[dict[str, Any]]:
    if openai:
        return [
            {"request": {"model": "local", "messages": [{"role": "user", "content": f"hi {i}"}]}} for i in range(count)
        ]
    return [{"i": i} for i in range(count)]


def fill(uri: str, database: str, count: int, openai: bool = False) -> None:
    store = ContextStore(uri, database)
    store.submit([{"payload": payload} for payload in payloads(count, openai)])
    store.close()


def counts(uri: str, database: str) -> dict[str, int]:
    contexts = MongoClient(uri)[database]["contexts"]
    return {s: contexts.count_documents({"status": {"$eq": s}}) for s in ("completed", "failed")}


def run_ctxbatch(uri: str, database: str, workdir: Path, config: dict[str, Any]) -> float:
    """`ctxbatch run --until-empty` with this config; the loop's own seconds from its summary line."""
    path = workdir / f"{database}.yaml"
    path.write_text(yaml.safe_dump({**config, "dask": {"dashboard_address": None}}))
    words = ["run", "--config", str(path), "--engine", "http", "--until-empty"]
    command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", uri, "--database", database, *words]
    environment = {**os.environ, "OPENAI_API_KEY": "sk-local"}
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
    summary = next(line for line in reversed(done.stderr.splitlines()) if "contexts/s" in line)
    return next(float(part.split()[0]) for part in summary.split(", ") if part.endswith(" s"))


def hand_written(count: int, url: str) -> float:
    """What a user who knows K writes: K calls at once with one aiohttp session, results kept in memory."""

    async def main() -> list[Any]:
        gate = asyncio.Semaphore(K)
        connector = aiohttp.TCPConnector(limit=K)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(payload: dict[str, Any]) -> Any:
                async with gate, session.post(url, json=payload) as response:
                    return await response.json()

            return await asyncio.gather(*(one(p) for p in payloads(count, False)))

    start = time.perf_counter()
    results = asyncio.run(main())
    assert len(results) == count
    return time.perf_counter() - start


@contextmanager
def dropping(url: str) -> Iterator[list[tuple[float, int]]]:
    """Drop the service's capacity to K/4 after DROP_AFTER s for DROP_FOR s; yields (t, served) samples,
    the first of them (0, 0) at time.time() = its t."""
    start = time.time()
    samples: list[tuple[float, int]] = [(start, 0)]
    stop = threading.Event()

    def watch() -> None:
        dropped, restored = False, False
        while not stop.wait(0.5):
            now = time.time() - start
            samples.append((now, stats(url)["served"]))
            if not dropped and now >= DROP_AFTER:
                httpx.post(url + "capacity", json={"capacity": K // 4}, timeout=5)
                dropped = True
            if dropped and not restored and now >= DROP_AFTER + DROP_FOR:
                httpx.post(url + "capacity", json={"capacity": K}, timeout=5)
                restored = True

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


def rate_between(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """Calls served per second at the service between two moments (from the watcher's samples)."""
    inside = [(t, served) for t, served in samples[1:] if start <= t <= end]
    if len(inside) < 2:
        return 0.0
    (t0, s0), (t1, s1) = inside[0], inside[-1]
    return (s1 - s0) / (t1 - t0)


Row = tuple[str, float, float, int, int, list[float]]  # name, contexts/s (median), bound, failed, 429s, runs


def measure(uri: str, workdir: Path, count: int, repeat: int) -> tuple[list[Row], list[str]]:
    """The rows (a)-(e), and (f)'s lines; (a)-(c) `repeat` times, in turn."""
    rows: list[Row] = []
    bound = K / SECONDS
    ways: dict[str, dict[str, Any] | None] = {
        "(a) ctxbatch, only http.url set": {},
        "(b) (a) + engine_concurrency: auto": {"engine_concurrency": "auto"},
        f"(c) hand-written aiohttp, semaphore {K}, no database": None,
    }
    runs: dict[str, list[tuple[float, int, int]]] = {name: [] for name in ways}
    for turn in range(repeat):
        for n, (name, worker) in enumerate(ways.items()):
            failed = 0
            with service() as url:
                if worker is None:
                    seconds = hand_written(count, url)
                else:
                    database = f"service_{turn}_{n}"
                    fill(uri, database, count)
                    seconds = run_ctxbatch(uri, database, workdir, {"http": {"url": url}, "worker": worker})
                    found = counts(uri, database)
                    assert found["completed"] + found["failed"] == count, (name, found)
                    failed = found["failed"]
                busy = stats(url)["busy"]
            runs[name].append((count / seconds, failed, busy))
            print(f"{name}: {count / seconds:.0f}/s, failed {failed}, 429s {busy}", file=sys.stderr)
    for name, found in runs.items():
        rates = [rate for rate, _, _ in found]
        failed, busy = sum(f for _, f, _ in found), sum(b for _, _, b in found)
        rows.append((name, statistics.median(rates), bound, failed, busy, rates))
    rows.append((f"(d) the bound, K / {SECONDS:g} s", bound, bound, 0, 0, []))

    recipe_bound = RECIPE_CAPACITY / RECIPE_SECONDS
    many = max(count, int(60 * recipe_bound))
    fill(uri, "service_recipe", many, openai=True)
    with service(openai=True) as url:
        recipe = {**RECIPE, "http": {**RECIPE["http"], "url": url + "v1/chat/completions"}}  # type: ignore[dict-item]
        seconds = run_ctxbatch(uri, "service_recipe", workdir, recipe)
        busy = stats(url)["busy"]
    found = counts(uri, "service_recipe")
    rate = many / seconds
    recipe_row = f"(e) README's recipe as written ({many:,} contexts)"
    rows.append((recipe_row, rate, recipe_bound, found["failed"], busy, [rate]))
    return rows, capacity_drop(uri, workdir, count)


def capacity_drop(uri: str, workdir: Path, count: int) -> list[str]:
    """(f)'s lines: a run while the service's capacity drops to a quarter for DROP_FOR seconds."""
    bound = K / SECONDS
    dropped = max(count, int(bound * (DROP_AFTER + 10) + bound / 4 * DROP_FOR))
    fill(uri, "service_drop", dropped)
    with service() as url, dropping(url) as samples:
        seconds = run_ctxbatch(uri, "service_drop", workdir, {"http": {"url": url}})
        busy = stats(url)["busy"]
    found = counts(uri, "service_drop")
    began = samples[0][0]
    decided = MongoClient(uri)["service_drop"]["sizing_decisions"].find({}, {"at": 1, "window": 1})
    windows = [(d["at"].replace(tzinfo=dt.UTC).timestamp() - began, d.get("window") or 0) for d in decided]
    back = DROP_AFTER + DROP_FOR
    phases = [
        ("before, with the run's start", 1.0, DROP_AFTER, bound),
        ("dropped", DROP_AFTER + 2, back, bound / 4),
        ("after", back + 2, max(t for t, _ in samples[1:]), bound),
    ]
    lines = [
        f"(f) {dropped:,} contexts, capacity {K} -> {K // 4} at {DROP_AFTER:g} s, back at {back:g} s: "
        f"{found['failed']} failed, {busy} 429s, {dropped / seconds:.0f}/s over the run",
        "",
        "| phase | served/s at the service | its bound | x bound | window (median of the decisions) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, start, end, phase_bound in phases:
        rate = rate_between(samples, start, end)
        window = statistics.median([w for t, w in windows if start <= t <= end] or [0])
        span = f"{start:g}-{end:.0f} s" if name != "after" else f"{start:g} s to the end"
        lines.append(f"| {name} ({span}) | {rate:.0f} | {phase_bound:.0f} | {rate / phase_bound:.2f} | {window:.0f} |")
    return lines


def table(rows: list[Row], count: int) -> str:
    lines = [
        f"{count:,} contexts per run, service of 100 ms per call, K = {K} at once (429 beyond {2 * K})",
        "",
        "| row | contexts/s (median) | runs | bound | x bound | contexts failed | 429s answered |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {rate:.0f} | {', '.join(f'{r:.0f}' for r in runs)} | {bound:.0f} | {rate / bound:.2f} | "
        f"{failed} | {busy} |"
        for name, rate, bound, failed, busy, runs in rows
    ]
    hand = next(rate for name, rate, *_ in rows if name.startswith("(c)"))
    for name, rate, *_ in rows:
        if name.startswith(("(a)", "(b)")):
            lines.append(f"{name[:3]} against (c): {rate / hand:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=4_000)
    parser.add_argument("--repeat", type=int, default=3, help="Runs of rows (a)-(c), in turn; medians reported.")
    parser.add_argument("--mongo-uri", help="Measure against this server instead of a private embedded one.")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the service's subprocess
    parser.add_argument("--openai", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--drop-only", action="store_true", help="Only row (f), the capacity drop.")
    args = parser.parse_args(argv)
    if args.serve:
        import uvicorn

        asgi = app(RECIPE_CAPACITY, RECIPE_SECONDS, True) if args.openai else app(K, SECONDS, False)
        uvicorn.run(asgi, host="127.0.0.1", port=args.serve, log_level="warning", backlog=1024)
        return
    with server(args.mongo_uri) as (uri, workdir):
        if args.drop_only:
            print("\n".join(capacity_drop(uri, workdir, args.contexts)))
            return
        rows, drop = measure(uri, workdir, args.contexts, args.repeat)
        print(table(rows, args.contexts))
        print()
        print("\n".join(drop))


if __name__ == "__main__":
    main()
