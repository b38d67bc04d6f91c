"""ctxbatch calling a service of limited capacity, against a hand-written asyncio loop and the bound.

The service (uvicorn in a subprocess, this file with `--serve`): 100 ms per request, K = 40 requests
served at once; beyond K requests queue, beyond 2K it answers 429 + Retry-After: 1. ctxbatch is not
told K. Rows, `--contexts` each (one run, fresh database per row):

  (a)  ctxbatch defaults, `--engine http` (the default batch sizing: 10-20 contexts per batch)
  (a') the same with batches that hold >= engine_concurrency x workers contexts
  (b)  (a') with `engine_concurrency: auto`
  (c)  a hand-written asyncio + httpx loop with a semaphore of K, reading and writing the same database
  (d)  the bound, K / 0.1 s
  (r)  (a') with `worker.rate_limit_per_second: 200`

    python benchmarks/service.py --contexts 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from _common import server  # benchmarks/ is on sys.path when run as a script
from pymongo import MongoClient, UpdateOne

from ctxbatch.io import ContextStore

K = 40
SECONDS = 0.1
RATE = 200
SIZED = {"batch_size": 200, "min_batch_size": 200, "max_batch_size": 400}


def app(capacity: int) -> Any:
    """The service as an ASGI app: K at once, 2K waiting at most, and a count of its 429s on GET."""
    gate = asyncio.Semaphore(capacity)
    state = {"inside": 0, "busy": 0, "served": 0}

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
        if state["inside"] >= 2 * capacity:
            state["busy"] += 1
            await reply(send, 429, b'{"error": "busy"}', [(b"retry-after", b"1")])
            return
        state["inside"] += 1
        try:
            async with gate:
                await asyncio.sleep(SECONDS)
        finally:
            state["inside"] -= 1
        state["served"] += 1
        await reply(send, 200, body or b"{}", [])

    return asgi


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def service() -> Iterator[str]:
    """The service in a subprocess on a free port; yields its URL; stopped on exit."""
    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(100):
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def stats(url: str) -> dict[str, int]:
    return dict(httpx.get(url, timeout=5).json())


def fill(uri: str, database: str, count: int) -> None:
    store = ContextStore(uri, database)
    store.submit([{"payload": {"i": i}} for i in range(count)])
    store.close()


def counts(uri: str, database: str) -> dict[str, int]:
    contexts = MongoClient(uri)[database]["contexts"]
    return {s: contexts.count_documents({"status": {"$eq": s}}) for s in ("completed", "failed")}


def run_ctxbatch(uri: str, database: str, workdir: Path, url: str, worker: dict[str, Any]) -> float:
    """The CLI's run over the queue; the loop's own seconds from its summary line."""
    config = workdir / f"{database}.yaml"
    config.write_text(yaml.safe_dump({"worker": worker, "http": {"url": url}, "dask": {"dashboard_address": None}}))
    words = ["run", "--config", str(config), "--engine", "http", "--until-empty"]
    command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", uri, "--database", database, *words]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return next(float(part.split()[0]) for part in done.stderr.splitlines()[-1].split(", ") if part.endswith(" s"))


def hand_written(uri: str, database: str, url: str) -> float:
    """What a user who knows K writes: every pending context, K calls at once, results written in bulks."""
    contexts = MongoClient(uri)[database]["contexts"]

    async def main() -> None:
        pending = contexts.find({"status": {"$eq": "pending"}}, {"payload": 1})
        gate = asyncio.Semaphore(K)
        done: list[UpdateOne] = []
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=K)) as client:

            async def one(doc: dict[str, Any]) -> None:
                async with gate:
                    response = await client.post(url, json=doc["payload"])
                result = {"status": "completed", "result": response.json()}
                done.append(UpdateOne({"_id": doc["_id"]}, {"$set": result}))
                if len(done) >= 500:
                    batch = done[:]
                    done.clear()
                    await asyncio.to_thread(contexts.bulk_write, batch, ordered=False)

            await asyncio.gather(*(one(doc) for doc in pending))
        if done:
            contexts.bulk_write(done, ordered=False)

    start = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - start


def measure(uri: str, workdir: Path, count: int) -> list[tuple[str, float, int, int]]:
    """(row, contexts/s, contexts failed, 429s answered) per row."""
    rows = []
    ways: list[tuple[str, Any]] = [
        ("(a) ctxbatch defaults, --engine http", lambda db, url: run_ctxbatch(uri, db, workdir, url, {})),
        ("(a') + batch sizes >= concurrency x workers", lambda db, url: run_ctxbatch(uri, db, workdir, url, SIZED)),
        (
            "(b) (a') + engine_concurrency: auto",
            lambda db, url: run_ctxbatch(uri, db, workdir, url, {**SIZED, "engine_concurrency": "auto"}),
        ),
        (f"(c) hand-written asyncio + httpx, semaphore {K}", lambda db, url: hand_written(uri, db, url)),
        (
            f"(r) (a') + rate_limit_per_second {RATE}",
            lambda db, url: run_ctxbatch(uri, db, workdir, url, {**SIZED, "rate_limit_per_second": RATE}),
        ),
    ]
    for n, (name, way) in enumerate(ways):
        database = f"service_{n}"
        fill(uri, database, count)
        with service() as url:
            seconds = way(database, url)
            busy = stats(url)["busy"]
        found = counts(uri, database)
        assert found["completed"] + found["failed"] == count, (name, found)
        rows.append((name, count / seconds, found["failed"], busy))
        print(f"{name}: {count / seconds:.0f}/s, failed {found['failed']}, 429s {busy}", file=sys.stderr)
    rows.append((f"(d) the bound, K / {SECONDS:g} s", K / SECONDS, 0, 0))
    return rows


def table(rows: list[tuple[str, float, int, int]], count: int) -> str:
    bound = K / SECONDS
    lines = [
        f"{count:,} contexts per row, service of 100 ms per call, K = {K} at once (429 beyond {2 * K})",
        "",
        "| row | contexts/s | x bound | contexts failed | 429s answered |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {rate:.0f} | {rate / bound:.2f} | {failed} | {busy} |" for name, rate, failed, busy in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=20_000)
    parser.add_argument("--mongo-uri", help="Measure against this server instead of a private embedded one.")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the service's subprocess
    args = parser.parse_args(argv)
    if args.serve:
        import uvicorn

        uvicorn.run(app(K), host="127.0.0.1", port=args.serve, log_level="warning", backlog=1024)
        return
    with server(args.mongo_uri) as (uri, workdir):
        print(table(measure(uri, workdir, args.contexts), args.contexts))


if __name__ == "__main__":
    main()
