"""Throughput of `ctxbatch run` against a hand-written bulk loop and a naive per-context loop.

One run, one embedded server (or --mongo-uri), the same 20,000 contexts with a trivial engine:
  (a) `ctxbatch run --until-empty --engine echo`, as a user runs it (a subprocess, Dask included);
  (b) a hand-written single-process loop: claim 1,000 with one update, a list comprehension,
      one bulk_write back;
  (c) a naive loop: find_one_and_update, process, update_one per context.
Each is repeated (--repeat) into a fresh database; medians are reported.

    python benchmarks/pipeline.py [--contexts 20000] [--repeat 3] [--mongo-uri URI]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml
from _common import arguments, server  # benchmarks/ is on sys.path when run as a script
from pymongo import MongoClient, ReturnDocument, UpdateOne

from ctxbatch.engines.trivial import echo
from ctxbatch.io import ContextStore

RUN_CONFIG = {
    "worker": {
        "batch_size": 1000,
        "dynamic_batch_sizing": False,
        "max_parallel_batches": 3,
        "batch_timeout_seconds": 0,
        "retry": {"context_retries": 0},
    },
    "dask": {"n_workers": 1, "threads_per_worker": 2, "processes": True, "dashboard_address": None},
}


def fill(uri: str, database: str, count: int) -> None:
    ContextStore(uri, database).submit([{"payload": {"i": i, "text": "x" * 200}} for i in range(count)])


def run_ctxbatch(uri: str, database: str, workdir: Path) -> dict[str, float]:
    config = workdir / "run.yaml"
    config.write_text(yaml.safe_dump(RUN_CONFIG))
    command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", uri, "--database", database]
    command += ["run", "--config", str(config), "--engine", "echo", "--until-empty"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    # The summary line says how long the loop itself ran, without interpreter and cluster start-up.
    loop = next(float(part.split()[0]) for part in done.stderr.splitlines()[-1].split(", ") if part.endswith(" s"))
    return {"wall": wall, "loop": loop}


def hand_written(uri: str, database: str, reply_size: int | None = None) -> dict[str, float]:
    """Claim 1,000 with one update, a list comprehension, one bulk_write back.

    With `reply_size`, each find asks for its whole answer in one reply: on nx-27017 every getMore
    (one per 101 documents by default) costs about as much as the query, which a user who has not
    read the server's notes would not know.
    """
    contexts = MongoClient(uri, tz_aware=True)[database]["contexts"]
    start = time.perf_counter()
    while True:
        pending = contexts.find({"status": {"$eq": "pending"}}, {"_id": 1}).sort([("priority", 1), ("created_at", 1)])
        ids = [d["_id"] for d in pending.limit(1000).batch_size(reply_size or 0)]
        if not ids:
            break
        token = uuid.uuid4().hex
        contexts.update_many(
            {"_id": {"$in": ids}, "status": {"$eq": "pending"}},
            {"$set": {"status": "processing", "lease": {"token": token}}, "$inc": {"attempts": 1}},
        )
        claimed = contexts.find({"lease.token": {"$eq": token}}, {"payload": 1}).batch_size(reply_size or 0)
        results = [(d["_id"], echo(d["payload"])) for d in claimed]
        contexts.bulk_write(
            [
                UpdateOne(
                    {"_id": cid, "lease.token": {"$eq": token}},
                    {"$set": {"status": "completed", "result": r}, "$unset": {"lease": ""}},
                )
                for cid, r in results
            ],
            ordered=False,
        )
    wall = time.perf_counter() - start
    return {"wall": wall, "loop": wall}


def naive(uri: str, database: str) -> dict[str, float]:
    contexts = MongoClient(uri, tz_aware=True)[database]["contexts"]
    start = time.perf_counter()
    while True:
        doc = contexts.find_one_and_update(
            {"status": {"$eq": "pending"}},
            {"$set": {"status": "processing"}, "$inc": {"attempts": 1}},
            sort=[("priority", 1), ("created_at", 1)],
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            break
        contexts.update_one({"_id": doc["_id"]}, {"$set": {"status": "completed", "result": echo(doc["payload"])}})
    wall = time.perf_counter() - start
    return {"wall": wall, "loop": wall}


def completed(uri: str, database: str) -> int:
    return ContextStore(uri, database).status_counts()["completed"]


def measure(uri: str, count: int, repeat: int, workdir: Path) -> dict[str, list[dict[str, float]]]:
    ways: dict[str, Callable[[str, str], dict[str, float]]] = {
        "(a) ctxbatch run": lambda u, d: run_ctxbatch(u, d, workdir),
        "(b) hand-written bulk loop": hand_written,
        "(b') the same, one reply per find": lambda u, d: hand_written(u, d, reply_size=1000),
        "(c) naive per-context loop": naive,
    }
    times: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
    admin = MongoClient(uri)
    for round_ in range(repeat):
        for name, way in ways.items():
            database = f"bench_pipeline_{round_}_{list(ways).index(name)}"
            admin.drop_database(database)
            fill(uri, database, count)
            times[name].append(way(uri, database))
            assert completed(uri, database) == count, f"{name} did not complete every context"
            admin.drop_database(database)
            print(f"round {round_ + 1}: {name}: {times[name][-1]['wall']:.2f} s", file=sys.stderr)
    return times


def table(times: dict[str, list[dict[str, float]]], count: int) -> str:
    median = {name: statistics.median(t["wall"] for t in runs) for name, runs in times.items()}
    loop = {name: statistics.median(t["loop"] for t in runs) for name, runs in times.items()}
    a, b, b_tuned, c = (median[name] for name in times)
    lines = [
        f"{count:,} contexts, trivial engine, medians of {len(next(iter(times.values())))} runs",
        "",
        "| way | wall s | contexts/s | loop-only s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name in times:
        lines.append(f"| {name} | {median[name]:.2f} | {count / median[name]:.0f} | {loop[name]:.2f} |")
    lines += [
        "",
        f"(a) vs (b): {b / a:.2f}x the throughput (target >= 0.8x); loop only: {b / loop[next(iter(times))]:.2f}x",
        f"(a) vs (b'): {b_tuned / a:.2f}x; loop only: {b_tuned / loop[next(iter(times))]:.2f}x",
        f"(a) vs (c): {c / a:.2f}x the throughput (target >= 5x)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, contexts=20_000, repeat=3, argv=argv)
    with server(args.mongo_uri) as (uri, workdir):
        print(table(measure(uri, args.contexts, args.repeat, workdir), args.contexts))


if __name__ == "__main__":
    main()
