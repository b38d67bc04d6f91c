"""Time of `ctxbatch submit FILE` against a bare pymongo insert_many of the same documents.

One run, one embedded server (or --mongo-uri), one JSON Lines file of N contexts (~0.5 KB payloads):
  (a) `ctxbatch submit FILE` as a user runs it: a subprocess, wall time (interpreter start-up,
      reading, validation, indexes and the inserts all included);
  (b) a bare `insert_many(docs, ordered=False)` of the same documents, shaped as the store shapes
      them (ids included), built before the clock starts, into a collection without indexes;
  (c) the same as (b) into a collection that already has the store's indexes (not a target; it
      tells how much of (a) is index upkeep on the server).
Each is repeated (--repeat), each time into a fresh database; medians are reported. Target: (a)/(b) <= 2.

    python benchmarks/submit.py [--contexts 100000] [--repeat 3] [--mongo-uri URI]
"""

from __future__ import annotations

import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import arguments, server  # benchmarks/ is on sys.path when run as a script
from bson import ObjectId
from pymongo import MongoClient

from ctxbatch.io import ContextStore, utcnow
from ctxbatch.io.schema import BATCH_INDEXES, CONTEXT_INDEXES, ContextRequest, context_document

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]


def ctxbatch_command() -> list[str]:
    script = Path(sys.executable).with_name("ctxbatch")
    found = str(script) if script.exists() else shutil.which("ctxbatch")
    if found is None:
        sys.exit("the ctxbatch console script is not installed (pip install -e .)")
    return [found]


def write_contexts(path: Path, count: int) -> float:
    """A JSON Lines file of `count` contexts with ~0.5 KB payloads; returns the mean line size."""
    rng = random.Random(7)
    size = 0
    with path.open("w") as out:
        for i in range(count):
            text = " ".join(rng.choices(WORDS, k=70))
            record = {
                "payload": {"doc": i, "lang": "en", "text": text, "tags": rng.sample(WORDS, 3), "score": rng.random()},
                "priority": rng.randint(0, 100),
            }
            line = json.dumps(record) + "\n"
            size += len(line)
            out.write(line)
    return size / count


def documents(path: Path) -> list[dict[str, Any]]:
    """The documents the store would insert for this file (same shape, fresh ids)."""
    batch_id, now = str(ObjectId()), utcnow()
    docs = []
    with path.open() as lines:
        for line in lines:
            record = json.loads(line)
            request = ContextRequest(record["payload"], record["priority"])
            docs.append(context_document(request, str(ObjectId()), batch_id, now, len(docs)))
    return docs


def submit(uri: str, database: str, path: Path, count: int) -> float:
    command = [*ctxbatch_command(), "--mongo-uri", uri, "--database", database, "submit", str(path)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"ctxbatch submit failed: {done.stderr.strip()}")
    total = ContextStore(uri, database).counts(done.stdout.strip())["total"]
    assert total == count, f"ctxbatch submit stored {total} of {count} contexts"
    return wall


def insert(uri: str, database: str, docs: list[dict[str, Any]], *, indexed: bool) -> float:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True)
    try:
        if indexed:
            client[database]["contexts"].create_indexes(CONTEXT_INDEXES)
            client[database]["batches"].create_indexes(BATCH_INDEXES)
        start = time.perf_counter()
        client[database]["contexts"].insert_many(docs, ordered=False)
        return time.perf_counter() - start
    finally:
        client.close()


def measure(uri: str, path: Path, count: int, repeat: int) -> dict[str, list[float]]:
    docs = documents(path)
    ways: dict[str, Callable[[str], float]] = {
        "(a) ctxbatch submit FILE": lambda database: submit(uri, database, path, count),
        "(b) insert_many, no indexes": lambda database: insert(uri, database, docs, indexed=False),
        "(c) insert_many, store's indexes": lambda database: insert(uri, database, docs, indexed=True),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    admin: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        for round_ in range(repeat):
            for name, way in ways.items():
                database = f"bench_submit_{round_}_{name[1]}"
                admin.drop_database(database)
                times[name].append(way(database))
                admin.drop_database(database)
                print(f"round {round_ + 1}: {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    finally:
        admin.close()
    return times


def table(times: dict[str, list[float]], count: int, line_bytes: float) -> str:
    median = {name: statistics.median(runs) for name, runs in times.items()}
    a, b, _ = median.values()
    lines = [
        f"{count:,} contexts, {line_bytes:.0f} bytes per JSON line, medians of {len(next(iter(times.values())))} runs",
        "",
        "| way | median s | contexts/s | runs s |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, runs in times.items():
        shown = ", ".join(f"{t:.2f}" for t in runs)
        lines.append(f"| {name} | {median[name]:.2f} | {count / median[name]:,.0f} | {shown} |")
    # The machine is shared and noisy: the ratio within each round is steadier than across rounds.
    rounds = [ta / tb for ta, tb in zip(*list(times.values())[:2], strict=True)]
    lines += [
        "",
        f"(a)/(b) = {a / b:.2f} (target <= 2.0); median of the per-round ratios {statistics.median(rounds):.2f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, contexts=100_000, repeat=3, argv=argv)
    with server(args.mongo_uri) as (uri, workdir):
        path = workdir / "contexts.jsonl"
        line_bytes = write_contexts(path, args.contexts)
        print(table(measure(uri, path, args.contexts, args.repeat), args.contexts, line_bytes))


if __name__ == "__main__":
    main()
