"""`ctxbatch submit FILE` against one bare insert_many of the same documents (issue 22, item 3).

One run, one server, one JSON Lines file of N lines of the issue's shape:
`{"payload": {"text": "lorem ipsum dolor sit amet " x 16, "n": i}, "priority": i % 101}` (~450-byte payloads).
  (a) `ctxbatch submit FILE` as a user runs it, a subprocess: the time until it prints the batch id
      (the acknowledgement, at the commit) and until it exits. It exits once the move into the
      queue is finished (it waits for it), and then every context is checked claimable: pending in
      `contexts`, no submission on its way in. Its peak RSS, and the server's CPU seconds.
  (b) one bare `insert_many(docs, ordered=False)` of the same documents, as ctxbatch stores them
      (built from the file by the store's own code before the clock starts), into a fresh
      collection with no index but `_id`: the target's baseline.
  (c) the same into the real `contexts` collection with the store's indexes: (c) - (b) is what
      the indexes cost, (a) - (c) what staging, validation and start-up cost.
Rounds alternate the order of the ways; each way goes into a fresh database; medians are reported.
Then one in-process submission (`ContextStore.submit` + its move) with a pymongo listener: how
long the server took over each kind of command, to show where (a)'s time goes.

    python benchmarks/submit.py [--contexts 300000] [--repeat 3] [--mongo-uri URI] [--plain-server]

--plain-server runs nx-27017 as it ships (each inserted document committed on its own) instead of
the embedded server as ctxbatch starts it (one commit per insert command, io/embedded_server.py).
Target: (a)/(b) <= 2.
"""

from __future__ import annotations

import json
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import arguments, cpu_seconds, free_port, server  # benchmarks/ is on sys.path when run as a script
from bson import ObjectId
from pymongo import MongoClient, monitoring

from ctxbatch.io import ContextStore, embedded, utcnow
from ctxbatch.io.schema import context_document, iter_requests

TEXT = "lorem ipsum dolor sit amet " * 16


def ctxbatch_command() -> list[str]:
    script = Path(sys.executable).with_name("ctxbatch")
    found = str(script) if script.exists() else shutil.which("ctxbatch")
    if found is None:
        sys.exit("the ctxbatch console script is not installed (pip install -e .)")
    return [found]


def write_contexts(path: Path, count: int) -> float:
    """A JSON Lines file of `count` contexts of the issue's shape; returns the mean line size."""
    size = 0
    with path.open("w") as out:
        for i in range(count):
            line = json.dumps({"payload": {"text": TEXT, "n": i}, "priority": i % 101}) + "\n"
            size += len(line)
            out.write(line)
    return size / count


def documents(path: Path) -> list[dict[str, Any]]:
    """The documents the store inserts for this file: validated and shaped by its own code, fresh ids."""
    batch_id, now = str(ObjectId()), utcnow()
    with path.open() as lines:
        requests = iter_requests(json.loads(line) for line in lines)
        return [context_document(r, str(ObjectId()), batch_id, now, i, "default") for i, r in enumerate(requests)]


@dataclass
class Way:
    """One way's figures in one round."""

    seconds: float
    server_cpu: float
    acknowledged: float | None = None
    peak_mb: float | None = None


class PeakMemory(threading.Thread):
    """A process's peak RSS (VmHWM), read every 20 ms until it exits.

    Not getrusage's maxrss: a child forked from a large process (this one holds the documents of (b))
    reports the parent's size there.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.peak_kb = 0
        self.start()

    def run(self) -> None:
        while True:
            try:
                lines = self.status.read_text().splitlines()
            except OSError:
                return
            for line in lines:
                if line.startswith("VmHWM:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            if any(line.startswith("State:\tZ") for line in lines):
                return
            time.sleep(0.02)

    @property
    def megabytes(self) -> float:
        self.join()
        return self.peak_kb / 1024


def submit(uri: str, database: str, path: Path, count: int, pid: int | None) -> Way:
    command = [*ctxbatch_command(), "--mongo-uri", uri, "--database", database, "submit", str(path)]
    cpu = cpu_seconds(pid)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    memory = PeakMemory(process.pid)
    assert process.stdout is not None
    batch_id = process.stdout.readline().strip()
    acknowledged = time.perf_counter() - start
    _, errors = process.communicate()
    seconds = time.perf_counter() - start
    server_cpu = cpu_seconds(pid) - cpu
    if process.returncode != 0 or not batch_id:
        sys.exit(f"ctxbatch submit failed: {errors.strip()}")
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        db = client[database]
        claimable = db.contexts.count_documents({"batch_id": {"$eq": batch_id}, "status": {"$eq": "pending"}})
        in_transit = db.submissions.count_documents({"_id": {"$eq": batch_id}})
    finally:
        client.close()
    assert claimable == count and not in_transit, f"{claimable} of {count} claimable; {in_transit} in transit"
    return Way(seconds, server_cpu, acknowledged, memory.megabytes)


def insert(uri: str, database: str, docs: list[dict[str, Any]], pid: int | None, *, indexed: bool) -> Way:
    if indexed:
        store = ContextStore(uri, database)
        store.connection.ensure_indexes()  # exactly the store's indexes
        store.close()
    client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True)
    try:
        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        client[database]["contexts"].insert_many(docs, ordered=False)
        return Way(time.perf_counter() - start, cpu_seconds(pid) - cpu)
    finally:
        client.close()


def measure(uri: str, pid: int | None, path: Path, count: int, repeat: int) -> dict[str, list[Way]]:
    docs = documents(path)
    ways: dict[str, Callable[[str], Way]] = {
        "(a) ctxbatch submit FILE": lambda database: submit(uri, database, path, count, pid),
        "(b) insert_many, bare collection": lambda database: insert(uri, database, docs, pid, indexed=False),
        "(c) insert_many into `contexts`, its indexes": lambda database: insert(uri, database, docs, pid, indexed=True),
    }
    names = list(ways)
    runs: dict[str, list[Way]] = {name: [] for name in ways}
    admin: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        for round_ in range(repeat):
            # Alternated: whichever way runs first in a round meets the machine as the others left it.
            for name in names[round_ % 3 :] + names[: round_ % 3]:
                database = f"bench_submit_{round_}_{name[1]}"
                admin.drop_database(database)
                runs[name].append(ways[name](database))
                admin.drop_database(database)
                way = runs[name][-1]
                said = f"round {round_ + 1}: {name}: {way.seconds:.2f} s, server {way.server_cpu:.2f} s"
                print(said, file=sys.stderr)
    finally:
        admin.close()
    return runs


def table(runs: dict[str, list[Way]], count: int, line_bytes: float, server_name: str) -> str:
    def median(name: str, figure: Callable[[Way], float | None]) -> float:
        return statistics.median(v for v in map(figure, runs[name]) if v is not None)

    a, b, c = runs
    base = median(b, lambda w: w.seconds)
    base_cpu = median(b, lambda w: w.server_cpu) or float("nan")
    lines = [
        f"{count:,} lines of {line_bytes:.0f} bytes, {server_name}, medians of {len(runs[a])} rounds",
        "",
        "| way | median s | x (b) | contexts/s | server CPU s | x (b) | runs s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, ways in runs.items():
        seconds = median(name, lambda w: w.seconds)
        shown = ", ".join(f"{w.seconds:.1f}" for w in ways)
        cpu = median(name, lambda w: w.server_cpu)
        lines.append(
            f"| {name} | {seconds:.1f} | {seconds / base:.2f} | {count / seconds:,.0f} | {cpu:.1f} | "
            f"{cpu / base_cpu:.2f} | {shown} |"
        )
    acknowledged = median(a, lambda w: w.acknowledged)
    lines.insert(5, f"| (a) until it printed the batch id | {acknowledged:.1f} | {acknowledged / base:.2f} | | | | |")
    # The machine is shared and noisy: the ratio within each round is steadier than across rounds.
    per_round = [wa.seconds / wb.seconds for wa, wb in zip(runs[a], runs[b], strict=True)]
    lines += [
        "",
        f"(a)/(b) = {median(a, lambda w: w.seconds) / base:.2f} (target <= 2.0); median of the per-round ratios "
        f"{statistics.median(per_round):.2f}; (c)/(b) = {median(c, lambda w: w.seconds) / base:.2f}; "
        f"peak RSS of (a) {median(a, lambda w: w.peak_mb):.0f} MB",
    ]
    return "\n".join(lines)


@dataclass
class ServerTime(monitoring.CommandListener):
    """The time each kind of command took, from its start to its reply, by command and collection."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _started: dict[int, tuple[str, float]] = field(default_factory=dict)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        where = f" {target}" if isinstance(target, str) else ""
        self._started[event.request_id] = (f"{event.command_name}{where}", time.perf_counter())

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._ended(event.request_id)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._ended(event.request_id)

    def _ended(self, request_id: int) -> None:
        kind, start = self._started.pop(request_id)
        self.seconds[kind] += time.perf_counter() - start
        self.calls[kind] += 1


def where_the_time_goes(uri: str, path: Path, count: int) -> str:
    """One in-process submission: the time the server took over each kind of command; our CPU."""
    listener = ServerTime()
    store = ContextStore(uri, "bench_submit_phases", client=MongoClient(uri, tz_aware=True, event_listeners=[listener]))
    ours = resource.getrusage(resource.RUSAGE_SELF)
    try:
        start = time.perf_counter()
        with path.open() as lines:
            batch_id = store.submit(json.loads(line) for line in lines)
        acknowledged = time.perf_counter() - start
        store.wait_moved(batch_id)
        total = time.perf_counter() - start
    finally:
        store.close()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - ours.ru_utime - ours.ru_stime
    admin: MongoClient[dict[str, Any]] = MongoClient(uri)
    admin.drop_database("bench_submit_phases")
    admin.close()
    lines = [
        f"One in-process `ContextStore.submit` of the same {count:,} lines (read and parsed here) and its move: "
        f"acknowledged after {acknowledged:.1f} s, moved in after {total:.1f} s; this process's CPU {cpu:.1f} s. "
        "Time from each command's start to its reply (chunks are staged in a thread while the next is made, "
        "so the staged inserts overlap our CPU):",
        "",
        "| command | calls | s | share of the whole |",
        "| --- | ---: | ---: | ---: |",
    ]
    for kind, seconds in sorted(listener.seconds.items(), key=lambda item: -item[1]):
        if seconds >= 0.005:
            lines.append(f"| {kind} | {listener.calls[kind]:,} | {seconds:.2f} | {seconds / total:.0%} |")
    return "\n".join(lines)


@contextmanager
def measured_server(args: Any, uri: str, workdir: Path) -> Iterator[tuple[str, int | None, str]]:
    """(uri, pid, what it is) of the server measured: the embedded one as ctxbatch starts it, nx-27017
    as it ships (--plain-server), or the one at --mongo-uri (its CPU unknown)."""
    if args.mongo_uri:
        yield uri, None, "the server at --mongo-uri"
        return
    if not args.plain_server:
        yield uri, embedded.status().pid, "the embedded server as ctxbatch starts it"
        return
    port = free_port()
    data = workdir / "plain"
    data.mkdir()
    words = ["--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port), "--log-file", str(data / "log")]
    command = [sys.executable, "-m", "nx_27017.nx_27017", *words, "--pid-file", str(data / "pid")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    plain = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(plain, serverSelectionTimeoutMS=30_000)
        client.admin.command("ping")
        client.close()
        yield plain, process.pid, "nx-27017 as it ships"
    finally:
        process.terminate()
        process.wait(10)


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, contexts=300_000, repeat=3, argv=argv, plain_server=False)
    with server(args.mongo_uri) as (uri, workdir):
        path = workdir / "contexts.jsonl"
        line_bytes = write_contexts(path, args.contexts)
        with measured_server(args, uri, workdir) as (target, pid, name):
            print(table(measure(target, pid, path, args.contexts, args.repeat), args.contexts, line_bytes, name))
            print()
            print(where_the_time_goes(target, path, args.contexts))


if __name__ == "__main__":
    main()
