"""Throughput of `ctxbatch run` against the loop a user would write by hand, on one server.

One run, one embedded server (or --mongo-uri), the same 20,000 contexts (~0.5 KB) with a trivial
engine and fixed batches of 1,000, each way into a fresh database:
  (a) `ctxbatch run --until-empty --engine echo`, as a user runs it: a subprocess, Dask included;
      wall time of the whole command, and the loop's own time from its summary line;
  (a') `Pipeline.run(until_empty=True)` timed in-process on a warm cluster: the loop alone;
  (a'') (a) with `--scheduler-address` of that warm cluster: a whole command without a cluster's start;
  (b) the hand-written loop (hand_loop.py): find 1,000 pending ids by priority, update_many them to
      processing under an owner, find them back, a list comprehension, one unordered bulk_write; one
      index (status, priority); timed in-process, as issue 22 timed it;
  (b') the same loop as a whole command (`python hand_loop.py`), to compare with (a) like for like;
  (c) a naive loop: find_one_and_update, process, update_one per context (--naive).
Besides wall time, the server's CPU seconds per context (utime + stime of its process, read from
/proc/<pid>/stat before and after each way). Then an empty `run --until-empty` against
`ctxbatch db status`, both as subprocesses. Medians over --repeat rounds.

    python benchmarks/pipeline.py [--contexts 20000] [--repeat 3] [--mongo-uri URI] [--naive]
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from _common import arguments, cpu_seconds, server  # benchmarks/ is on sys.path when run as a script
from distributed import Client, LocalCluster
from hand_loop import hand_loop
from pymongo import ASCENDING, MongoClient, ReturnDocument

from ctxbatch import Pipeline
from ctxbatch.engines.trivial import echo
from ctxbatch.io import ContextStore, embedded
from ctxbatch.io.schema import context_document, utcnow, validate_requests

RUN_CONFIG: dict[str, Any] = {
    "worker": {
        "batch_size": 1000,
        "dynamic_batch_sizing": False,
        "max_parallel_batches": 3,
        "batch_timeout_seconds": 0,
        "retry": {"context_retries": 0},
    },
    "dask": {"n_workers": 1, "threads_per_worker": 2, "processes": True, "dashboard_address": None},
}
Way = Callable[[str, str], dict[str, float]]
HAND_LOOP = Path(__file__).with_name("hand_loop.py")


def records(count: int) -> list[dict[str, Any]]:
    """Issue 22's contexts: ~450-byte payloads, every priority."""
    text = "lorem ipsum dolor sit amet " * 16
    return [{"payload": {"text": text, "n": i}, "priority": i % 101} for i in range(count)]


def fill(uri: str, database: str, count: int) -> None:
    store = ContextStore(uri, database)
    store.submit(records(count))
    store.wait_moved()  # the submission is acknowledged at its commit; its move must not count in the run
    store.close()


def fill_plain(uri: str, database: str, count: int) -> None:
    """The same documents as a submission stores, with the hand loop's one index (status, priority)."""
    contexts = MongoClient(uri)[database]["contexts"]
    contexts.create_index([("status", ASCENDING), ("priority", ASCENDING)])
    now = utcnow()
    requests = validate_requests(records(count), None)
    documents = [context_document(r, f"c{i}", "b", now, i, "default") for i, r in enumerate(requests)]
    for start in range(0, count, 10_000):
        contexts.insert_many(documents[start : start + 10_000], ordered=False)


def cli(uri: str, database: str, *words: str) -> tuple[float, str]:
    command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", uri, "--database", database, *words]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, done.stderr


def run_ctxbatch(uri: str, database: str, workdir: Path, *words: str) -> dict[str, float]:
    config = workdir / "run.yaml"
    config.write_text(yaml.safe_dump(RUN_CONFIG))
    wall, stderr = cli(uri, database, "run", "--config", str(config), "--engine", "echo", "--until-empty", *words)
    # The summary line says how long the loop itself ran (working, and idle if it ever was), without
    # the interpreter's and the cluster's start-up.
    summary = next(line for line in reversed(stderr.splitlines()) if line.startswith("completed "))
    found = re.search(r"over ([\d.]+) s working(?:, ([\d.]+) s idle)?", summary)
    assert found, summary
    loop = float(found[1]) + float(found[2] or 0)
    return {"wall": wall, "loop": loop}


def run_in_process(uri: str, database: str, client: Client) -> dict[str, float]:
    store = ContextStore(uri, database)
    start = time.perf_counter()
    Pipeline("echo", RUN_CONFIG, store, client).run(until_empty=True)
    wall = time.perf_counter() - start
    store.close()
    return {"wall": wall, "loop": wall}


def hand_written(uri: str, database: str) -> dict[str, float]:
    wall = hand_loop(uri, database)
    return {"wall": wall, "loop": wall}


def hand_written_command(uri: str, database: str) -> dict[str, float]:
    """The same loop as a script of its own: Python's start, pymongo's import, the loop and the exit."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(HAND_LOOP), uri, database], capture_output=True, text=True, check=True)
    return {"wall": time.perf_counter() - start, "loop": float(done.stdout)}


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
    return MongoClient(uri)[database]["contexts"].count_documents({"status": {"$eq": "completed"}})


def measure(uri: str, count: int, repeat: int, workdir: Path, naive_too: bool) -> dict[str, list[dict[str, float]]]:
    pid = embedded.status().pid if uri == embedded.status().uri else None
    dask = RUN_CONFIG["dask"]
    cluster = LocalCluster(
        n_workers=dask["n_workers"],
        threads_per_worker=dask["threads_per_worker"],
        processes=True,
        dashboard_address=None,
    )
    client = Client(cluster)
    ways: dict[str, tuple[Way, Callable[[str, str, int], None]]] = {
        "(a) ctxbatch run, whole command": (lambda u, d: run_ctxbatch(u, d, workdir), fill),
        "(a') Pipeline.run in-process": (lambda u, d: run_in_process(u, d, client), fill),
        "(a'') ctxbatch run on a running cluster": (
            lambda u, d: run_ctxbatch(u, d, workdir, "--scheduler-address", cluster.scheduler_address),
            fill,
        ),
        "(b) hand-written loop": (hand_written, fill_plain),
        "(b') hand-written loop, whole command": (hand_written_command, fill_plain),
    }
    if naive_too:
        ways["(c) naive per-context loop"] = (naive, fill)
    times: dict[str, list[dict[str, float]]] = {name: [] for name in ways}
    admin: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        for round_ in range(repeat):
            for number, (name, (way, filler)) in enumerate(ways.items()):
                database = f"bench_pipeline_{round_}_{number}"
                admin.drop_database(database)
                filler(uri, database, count)
                before = cpu_seconds(pid)
                figures = way(uri, database)
                figures["server_cpu"] = cpu_seconds(pid) - before
                times[name].append(figures)
                assert completed(uri, database) == count, f"{name} did not complete every context"
                admin.drop_database(database)
                print(f"round {round_ + 1}: {name}: {figures}", file=sys.stderr)
        empty = "bench_pipeline_empty"
        ContextStore(uri, empty).ensure_indexes()
        config = workdir / "run.yaml"
        config.write_text(yaml.safe_dump(RUN_CONFIG))
        for _ in range(repeat):
            times.setdefault("(e) empty run --until-empty", []).append(
                {"wall": cli(uri, empty, "run", "--config", str(config), "--engine", "echo", "--until-empty")[0]}
            )
            times.setdefault("(f) ctxbatch db status", []).append({"wall": cli(uri, empty, "db", "status")[0]})
        admin.drop_database(empty)
    finally:
        client.close()
        cluster.close()
    return times


def table(times: dict[str, list[dict[str, float]]], count: int) -> str:
    def median(name: str, key: str) -> float:
        return statistics.median(t.get(key, 0.0) for t in times[name])

    empty_run, status = median("(e) empty run --until-empty", "wall"), median("(f) ctxbatch db status", "wall")
    whole, in_process, hand = "(a) ctxbatch run, whole command", "(a') Pipeline.run in-process", "(b) hand-written loop"
    hand_command = "(b') hand-written loop, whole command"
    running = "(a'') ctxbatch run on a running cluster"
    lines = [
        f"{count:,} contexts, trivial engine, batches of 1,000, medians of {len(times[hand])} runs",
        "",
        "| way | wall s | contexts/s | loop-only s | server CPU s | server CPU us/context | runs wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name in times:
        if name.startswith(("(e)", "(f)")):
            continue
        wall, cpu = median(name, "wall"), median(name, "server_cpu")
        runs = ", ".join(f"{t['wall']:.2f}" for t in times[name])
        lines.append(
            f"| {name} | {wall:.2f} | {count / wall:,.0f} | {median(name, 'loop'):.2f} | {cpu:.2f} "
            f"| {cpu / count * 1e6:.0f} | {runs} |"
        )
    hand_cpu = median(hand, "server_cpu")
    lines += [
        "",
        f"loop-only ratio (b)/(a'): {median(hand, 'wall') / median(in_process, 'wall'):.2f}x (target >= 0.85x); "
        f"(b)/(a) loop from its summary: {median(hand, 'wall') / median(whole, 'loop'):.2f}x",
        f"whole-command ratio (b)/(a): {median(hand, 'wall') / median(whole, 'wall'):.2f}x (target >= 0.7x); "
        f"(b')/(a), both whole commands: {median(hand_command, 'wall') / median(whole, 'wall'):.2f}x",
        f"(a) against (b), time: {median(whole, 'wall') / median(hand, 'wall'):.1f}x; against (b'): "
        f"{median(whole, 'wall') / median(hand_command, 'wall'):.1f}x (target at 1,000 contexts: <= 2x); "
        f"(a'') against (b'): {median(running, 'wall') / median(hand_command, 'wall'):.1f}x",
        f"server CPU per context, (a)/(b): {median(whole, 'server_cpu') / hand_cpu:.2f}x, "
        f"(a')/(b): {median(in_process, 'server_cpu') / hand_cpu:.2f}x (target <= 1.3x)"
        if hand_cpu
        else "",
        f"empty run: {empty_run:.2f} s against db status {status:.2f} s = {empty_run / status:.2f}x (target <= 2x)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser_argv = list(sys.argv[1:] if argv is None else argv)
    naive_too = "--naive" in parser_argv
    args = arguments(__doc__, contexts=20_000, repeat=3, argv=[a for a in parser_argv if a != "--naive"])
    with server(args.mongo_uri) as (uri, workdir):
        print(table(measure(uri, args.contexts, args.repeat, workdir, naive_too), args.contexts))


if __name__ == "__main__":
    main()
