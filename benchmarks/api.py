"""Time of a bulk POST to `ctxbatch serve` against `ContextStore.submit` of the same contexts.

One run, one embedded server (or --mongo-uri), one `ctxbatch serve` process, N contexts (~0.5 KB
payloads), in the same database:
  (a) `ContextStore.submit(records)` in this process (validation, indexes, inserts);
  (b) `POST /api/contexts/bulk` of the same records with httpx, as a client sends it: JSON
      encoding, the socket, the server's size check, parsing, validation and the same submit,
      until the 202 is read;
  (c) `GET /api/batches/{id}/results` of one 1,000-context page (not a target; for reference);
  (d) the whole batch as JSON Lines (`Accept: application/x-ndjson`), read to the end (reference).
(a) and (b) alternate, which goes first changing each round; medians are reported.
Target: (b)/(a) <= 2.

    python benchmarks/api.py [--contexts 10000] [--repeat 5] [--mongo-uri URI]
"""

from __future__ import annotations

import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from _common import arguments, server  # benchmarks/ is on sys.path when run as a script
from pymongo import MongoClient

from ctxbatch.io import ContextStore

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


def contexts(count: int) -> list[dict[str, Any]]:
    """`count` contexts with ~0.5 KB payloads, the shape benchmarks/submit.py uses."""
    rng = random.Random(7)
    return [
        {
            "payload": {
                "doc": i,
                "lang": "en",
                "text": " ".join(rng.choices(WORDS, k=70)),
                "tags": rng.sample(WORDS, 3),
                "score": rng.random(),
            },
            "priority": rng.randint(0, 100),
        }
        for i in range(count)
    ]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(uri: str, database: str, log: Path) -> Iterator[str]:
    """A `ctxbatch serve` process on a free loopback port; its URL; stopped on exit."""
    port = _free_port()
    command = [sys.executable, "-c", "from ctxbatch.cli import main; main()", "--mongo-uri", uri]
    command += ["--database", database, "serve", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "CTXBATCH_API_TOKEN"}
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"ctxbatch serve did not start:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def timed(action: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action(*args, **kwargs)
    return time.perf_counter() - start, result


def measure(uri: str, count: int, repeat: int, workdir: Path) -> dict[str, list[float]]:
    records = contexts(count)
    database = f"bench_api_{uuid.uuid4().hex[:8]}"
    store = ContextStore(uri, database)
    names = [
        "(a) ContextStore.submit",
        "(b) POST /api/contexts/bulk",
        "(c) GET one results page of 1,000",
        "(d) GET results as JSON Lines",
    ]
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        with serving(uri, database, workdir / "serve.log") as url, httpx.Client(base_url=url, timeout=300) as http:
            # Warm both paths (imports, connection pools, indexes) off the clock.
            store.submit(records[:100])
            http.post("/api/contexts/bulk", json=records[:100]).raise_for_status()

            def submit() -> str:
                return store.submit(records)

            def post() -> str:
                answer = http.post("/api/contexts/bulk", json=records)
                answer.raise_for_status()
                return str(answer.json()["batch_id"])

            for round_ in range(repeat):
                order = [("(a) ContextStore.submit", submit), ("(b) POST /api/contexts/bulk", post)]
                for name, way in order if round_ % 2 == 0 else order[::-1]:
                    seconds, batch_id = timed(way)
                    times[name].append(seconds)
                    print(f"round {round_ + 1}: {name}: {seconds:.2f} s", file=sys.stderr)
                pages = f"/api/batches/{batch_id}/results"
                # httpx reads the whole answer before get() returns.
                page, _ = timed(http.get, pages, params={"limit": 1000})
                lines, _ = timed(http.get, pages, headers={"Accept": "application/x-ndjson"})
                times[names[2]].append(page)
                times[names[3]].append(lines)
    finally:
        admin: MongoClient[dict[str, Any]] = MongoClient(uri)
        admin.drop_database(database)
        admin.close()
        store.close()
    return times


def table(times: dict[str, list[float]], count: int) -> str:
    median = {name: statistics.median(runs) for name, runs in times.items()}
    a, b = median["(a) ContextStore.submit"], median["(b) POST /api/contexts/bulk"]
    runs = len(times["(a) ContextStore.submit"])
    lines = [
        f"{count:,} contexts (~0.5 KB payloads), medians of {runs} runs",
        "",
        "| way | median s | runs s |",
        "| --- | ---: | --- |",
    ]
    for name, measured in times.items():
        lines.append(f"| {name} | {median[name]:.3f} | {', '.join(f'{t:.3f}' for t in measured)} |")
    lines += ["", f"(b)/(a) = {b / a:.2f} (target <= 2.0)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, contexts=10_000, repeat=5, argv=argv)
    with server(args.mongo_uri) as (uri, workdir):
        print(table(measure(uri, args.contexts, args.repeat, workdir), args.contexts))


if __name__ == "__main__":
    main()
