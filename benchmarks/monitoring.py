"""What monitoring costs: the loop with and without metrics and alerts, and store.stats() as history grows.

One embedded server (or --mongo-uri), three parts:
  (1) the loop: `ctxbatch run --until-empty --engine echo` over the same --contexts, (a) with no
      alert rules and no metrics port, (b) with the default rules evaluated every 5 s and
      `--metrics-port`, scraped every second by this script; alternating which goes first;
      medians of the loop's own seconds (its summary line). Target: (b) at most 3% slower.
  (2) the cost of the `finished` index on status changes: claim + complete 1,000 at a time over
      20,000 pending contexts, with the store's indexes and with them less `finished`.
  (3) store.stats() over a 300 s window: (a) 10,000 finished contexts, all in the window; (b) the
      same 10,000 in the window after 990,000 older ones (--history); (c) like (b) with a window
      that holds all of them. The finished documents are inserted directly. Target: (b)/(a) <= 2.

    python benchmarks/monitoring.py [--contexts 20000] [--repeat 3] [--history 1000000] [--mongo-uri URI]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from _common import server  # benchmarks/ is on sys.path when run as a script
from pipeline import RUN_CONFIG, completed, fill
from pymongo import MongoClient

from ctxbatch.io import ContextStore
from ctxbatch.io.schema import epoch_ms

IN_WINDOW = 10_000
INSERT_CHUNK = 10_000


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=20_000, help="contexts of each loop run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--history", type=int, default=1_000_000, help="finished contexts of stats (b) and (c)")
    parser.add_argument("--parts", default="loop,index,stats", help="which of loop, index, stats to run")
    parser.add_argument("--mongo-uri", help="Measure against this server instead of a private embedded one.")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- (1) the loop ---------------------------------------------------------------------------------


def scrape(url: str, stop: threading.Event, seen: list[int]) -> None:
    """GET the metrics every second, as Prometheus would (more often than its default 15 s)."""
    with httpx.Client(timeout=5) as client:
        while not stop.wait(1.0):
            with contextlib.suppress(httpx.HTTPError):  # not up yet, or already gone
                seen.append(len(client.get(url).content))


def run_loop(uri: str, database: str, workdir: Path, monitored: bool) -> float:
    """The loop's own seconds (its summary line) for one run of `ctxbatch run`."""
    config = {**RUN_CONFIG, "monitoring": {"default_alerts": False}}
    command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", uri, "--database", database, "run"]
    stop, seen = threading.Event(), []
    scraper = None
    if monitored:
        port = free_port()
        config["monitoring"] = {"default_alerts": True, "evaluate_every_seconds": 5}
        command += ["--metrics-port", str(port)]
        scraper = threading.Thread(target=scrape, args=(f"http://127.0.0.1:{port}/metrics", stop, seen))
        scraper.start()
    path = workdir / f"run-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    command += ["--config", str(path), "--engine", "echo", "--until-empty"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    finally:
        stop.set()
        if scraper is not None:
            scraper.join()
    if monitored and not seen:
        print("warning: no scrape answered during the monitored run", file=sys.stderr)
    summary = done.stderr.strip().splitlines()[-1]
    return next(float(part.split()[0]) for part in summary.split(", ") if part.endswith(" s"))


def loop_part(uri: str, count: int, repeat: int, workdir: Path) -> dict[str, list[float]]:
    ways = {"(a) no metrics, no alerts": False, "(b) metrics scraped every 1 s, default rules every 5 s": True}
    times: dict[str, list[float]] = {name: [] for name in ways}
    admin = MongoClient(uri)
    for round_ in range(repeat):
        order = list(ways) if round_ % 2 == 0 else list(reversed(ways))
        for name in order:
            database = f"bench_monitoring_loop_{round_}_{list(ways).index(name)}"
            admin.drop_database(database)
            fill(uri, database, count)
            times[name].append(run_loop(uri, database, workdir, ways[name]))
            assert completed(uri, database) == count, f"{name} did not complete every context"
            admin.drop_database(database)
            print(f"round {round_ + 1}: {name}: {times[name][-1]:.2f} s", file=sys.stderr)
    return times


# -- (2) the index ---------------------------------------------------------------------------------


def settle_rate(uri: str, database: str, with_finished: bool, count: int = 20_000) -> float:
    """Contexts claimed and completed per second, 1,000 at a time."""
    store = ContextStore(uri, database)
    store.client.drop_database(database)
    store.submit([{"payload": {"i": i, "text": "x" * 200}} for i in range(count)])
    if not with_finished:
        for name, index in store.contexts.index_information().items():
            if "finished_ms" in dict(index["key"]):
                store.contexts.drop_index(name)
    start = time.perf_counter()
    while True:
        claim = store.claim(1000, "bench")
        if not claim.ids:
            break
        store.complete(claim, dict.fromkeys(claim.ids, "ok"))
    rate = count / (time.perf_counter() - start)
    store.client.drop_database(database)
    return rate


def index_part(uri: str, repeat: int) -> dict[str, list[float]]:
    ways = {"store's indexes": True, "the same less `finished`": False}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(repeat):
        for name in list(ways) if round_ % 2 == 0 else list(reversed(ways)):
            rates[name].append(settle_rate(uri, f"bench_monitoring_index_{round_}", ways[name]))
            print(f"round {round_ + 1}: settle, {name}: {rates[name][-1]:.0f} contexts/s", file=sys.stderr)
    return rates


# -- (3) stats -------------------------------------------------------------------------------------


def finished_docs(start: int, count: int, finished: Callable[[random.Random], dt.datetime]) -> list[dict[str, Any]]:
    """Completed (95%) and failed contexts as the store leaves them, finished when `finished` says."""
    rng = random.Random(start)
    docs = []
    for i in range(start, start + count):
        end = finished(rng)
        began = end - dt.timedelta(seconds=rng.uniform(0.01, 2))
        created = began - dt.timedelta(seconds=rng.uniform(0, 60))
        docs.append(
            {
                "_id": f"c{i:09d}",
                "batch_id": f"b{i // 10_000}",
                "priority": rng.randint(0, 100),
                "status": "failed" if rng.random() < 0.05 else "completed",
                "payload": {"i": i, "text": "x" * 200},
                "result": {"n": i},
                "attempts": rng.choice([1, 1, 1, 2]),
                "next_attempt_at": created,
                "next_attempt_ms": epoch_ms(created),
                "created_at": created,
                "started_at": began,
                "finished_at": end,
                "finished_ms": epoch_ms(end),
            }
        )
    return docs


def insert(store: ContextStore, start: int, count: int, finished: Callable[[random.Random], dt.datetime]) -> None:
    for offset in range(0, count, INSERT_CHUNK):
        store.contexts.insert_many(finished_docs(start + offset, min(INSERT_CHUNK, count - offset), finished))


def recent(rng: random.Random) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=rng.uniform(1, 240))


def old(rng: random.Random) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(days=rng.uniform(1, 30))


def timed(call: Callable[[], Any], repeat: int = 5) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def stats_part(uri: str, history: int) -> dict[str, list[float]]:
    small, large = ContextStore(uri, "bench_monitoring_stats_a"), ContextStore(uri, "bench_monitoring_stats_b")
    for store in (small, large):
        store.client.drop_database(store.database_name)
        store.ensure_indexes()
    started = time.perf_counter()
    insert(large, 0, history - IN_WINDOW, old)
    print(
        f"inserted {history - IN_WINDOW:,} older finished contexts in {time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    insert(large, history - IN_WINDOW, IN_WINDOW, recent)
    insert(small, 0, IN_WINDOW, recent)
    assert small.stats()["completed"] + small.stats()["failed"] == IN_WINDOW
    assert large.stats()["completed"] + large.stats()["failed"] == IN_WINDOW
    figures = {
        f"(a) {IN_WINDOW:,} finished, all in the window": timed(small.stats),
        f"(b) {history:,} finished, {IN_WINDOW:,} in the window": timed(large.stats),
        f"(c) {history:,} finished, all in the window": timed(lambda: large.stats(window_seconds=31 * 86400), 3),
        f"timeline(), 1 h in 60 buckets, {history:,} finished": timed(lambda: large.timeline(), 3),
    }
    for store in (small, large):
        store.client.drop_database(store.database_name)
    return figures


def _rows(title: str, header: str, figures: dict[str, list[float]], shown: str) -> list[str]:
    lines = [title, "", f"| {header} | median | runs |", "| --- | ---: | --- |"]
    for name, runs in figures.items():
        lines.append(f"| {name} | {statistics.median(runs):{shown}} | {', '.join(f'{r:{shown}}' for r in runs)} |")
    return lines


def table(loop: dict[str, list[float]], index: dict[str, list[float]], stats: dict[str, list[float]]) -> str:
    lines: list[str] = []
    if loop:
        a, b = (statistics.median(runs) for runs in loop.values())
        lines += _rows("(1) the loop, its own seconds", "way", loop, ".2f")
        lines += ["", f"(b)/(a) = {b / a:.3f} (target <= 1.03)", ""]
    if index:
        with_index, without = (statistics.median(runs) for runs in index.values())
        lines += _rows("(2) claim + complete, contexts/s", "indexes", index, ".0f")
        lines += ["", f"the `finished` index costs {100 * (1 - with_index / without):.1f}% of the settle rate", ""]
    if stats:
        sa, sb, sc, _ = (statistics.median(runs) for runs in stats.values())
        lines += _rows("(3) store.stats(), window 300 s unless said, seconds", "case", stats, ".3f")
        lines += ["", f"(b)/(a) = {sb / sa:.2f} (target <= 2); (c)/(a) = {sc / sa:.2f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = arguments(argv)
    parts = set(args.parts.split(","))
    with server(args.mongo_uri) as (uri, workdir):
        loop = loop_part(uri, args.contexts, args.repeat, workdir) if "loop" in parts else {}
        index = index_part(uri, args.repeat) if "index" in parts else {}
        stats = stats_part(uri, args.history) if "stats" in parts else {}
    print(table(loop, index, stats))


if __name__ == "__main__":
    main()
