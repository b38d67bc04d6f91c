"""Fault injection: real processes killed mid-run, and a checker that counts what it cost.

Each scenario runs in a CTXBATCH_HOME of its own (an embedded server of its own), submits numbered
contexts whose engine appends each call to a file, injects its fault, lets the queue drain, and
checks the database and the calls against what was submitted:

  lost        a submitted context that did not finish (not completed)
  duplicated  a submitted context stored twice, or completed with a result that is not its own
              (a write-back that got past the fence)
  rerun       contexts the engine ran more than once: what a fault costs under at-least-once
              (the batch in flight when it struck, run again)
  unexpected  a context or result of something never submitted, or of a refused, killed or
              unacknowledged submission (all or nothing: none of it may appear)
  calls/ctx   engine calls per submitted context (1.00 when no fault reran anything)

    python benchmarks/chaos.py [--contexts 2000] [--only NAME ...]

The tests run a small version of each scenario (tests/test_chaos.py).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCHMARKS = Path(__file__).resolve().parent
CONFIG = """
worker:
  batch_size: 50
  dynamic_batch_sizing: false
  max_parallel_batches: 2
  batch_timeout_seconds: 0
  lease_seconds: 5
  retry: {batch_retries: 100, backoff_seconds: [0.5], context_retries: 3}
dask: {n_workers: 2, threads_per_worker: 1, dashboard_address: null}
mongo: {outage_seconds: 90}
"""


@dataclass
class Figures:
    scenario: str
    submitted: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    rerun: int = 0
    calls_per_context: float = 0.0
    max_calls: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.submitted:,} | {self.lost} | {self.duplicated} | {self.unexpected} | "
            f"{self.rerun} | {self.calls_per_context:.3f} (max {self.max_calls}) | {self.seconds:.0f} |"
        )


class Harness:
    """One scenario's home, server, processes and checker."""

    def __init__(self, folder: Path) -> None:
        self.home = folder / "home"
        self.calls = folder / "calls"
        self.config = folder / "chaos.yaml"
        self.config.write_text(CONFIG)
        self.env = {
            **os.environ,
            "CTXBATCH_HOME": str(self.home),
            "PYTHONPATH": os.pathsep.join([str(BENCHMARKS), os.environ.get("PYTHONPATH", "")]),
        }
        self.env.pop("CTXBATCH_MONGO_URI", None)
        self.processes: list[subprocess.Popen[Any]] = []
        self.logs: dict[int, str] = {}
        self.db("start")

    # -- processes --------------------------------------------------------------------------

    def ctxbatch(self, *args: str) -> list[str]:
        return [str(Path(sys.executable).with_name("ctxbatch")), *args]

    def db(self, word: str) -> None:
        subprocess.run(self.ctxbatch("db", word), env=self.env, check=True, capture_output=True)

    def server_pid(self) -> int:
        return int(json.loads((self.home / "server.json").read_text())["pid"])

    def uri(self) -> str:
        return str(json.loads((self.home / "server.json").read_text())["uri"])

    def kill_db(self) -> None:
        os.kill(self.server_pid(), signal.SIGKILL)

    def spawn(self, *args: str, **kwargs: Any) -> subprocess.Popen[Any]:
        # A session of its own: SIGKILL of the group kills a loop with its Dask workers, as a crash would.
        # Its stderr goes to a file of its own, shown when it exits non-zero (see `wait`).
        with (self.home.parent / f"{args[0]}-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                self.ctxbatch(*args),
                env=self.env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=log,
                **kwargs,
            )
        self.processes.append(process)
        self.logs[process.pid] = log.name
        return process

    def wait(self, process: subprocess.Popen[Any], timeout: float = 600) -> int:
        """The process's exit code; when not 0, the end of its stderr and of the server's log, to stderr."""
        code = process.wait(timeout)
        if code != 0:
            for path in (Path(self.logs[process.pid]), self.home / "server.log"):
                if path.exists():
                    tail = path.read_text(errors="replace").splitlines()[-15:]
                    print(f"--- {path.name} (exit {code}) ---", *tail, sep="\n", file=sys.stderr)
        return code

    def loop(self) -> subprocess.Popen[Any]:
        return self.spawn("run", "--until-empty", "--engine", "chaos_engine:record", "--config", str(self.config))

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        self.db("stop")

    # -- data and checking ------------------------------------------------------------------

    def store(self) -> Any:
        from ctxbatch.io import ContextStore

        return ContextStore(self.uri(), "ctxbatch")

    def records(self, tag: str, count: int, sleep: float = 0.002) -> Iterator[dict[str, Any]]:
        for i in range(count):
            yield {"payload": {"tag": tag, "i": i, "calls_file": str(self.calls), "sleep": sleep}}

    def check(self, name: str, expected: dict[str, int], forbidden: set[str], started: float) -> Figures:
        """Count lost / duplicated / unexpected against `expected` ({tag: count}); `forbidden` tags must be absent."""
        store = self.store()
        store.tidy_submissions()
        seen: collections.Counter[tuple[str, int]] = collections.Counter()
        figures = Figures(name, submitted=sum(expected.values()))
        for doc in store.contexts.find({}, {"payload": 1, "status": 1, "result": 1}):
            key = (doc["payload"].get("tag"), doc["payload"].get("i"))
            seen[key] += 1
            if key[0] not in expected or key[0] in forbidden or key[1] >= expected.get(key[0], 0):
                figures.unexpected += 1
            elif doc["status"] != "completed" or doc.get("result") != {"i": key[1]}:
                figures.lost += 1
        arriving = store.submissions.count_documents({"state": "committed"})
        if arriving:  # committed, never moved into the queue: what a lost acknowledged context looks like
            figures.notes.append(f"{arriving} committed submissions not moved")
        store.close()
        wanted = {(tag, i) for tag, n in expected.items() for i in range(n)}
        missing = sorted(wanted - set(seen))
        figures.lost += len(missing)
        if missing:
            figures.notes.append(f"never stored: {missing[:5]}")
        figures.duplicated += sum(n - 1 for n in seen.values() if n > 1)
        calls = collections.Counter(tuple(json.loads(line)) for line in self.calls.read_text().split("\n") if line)
        figures.unexpected += sum(1 for key in calls if key not in wanted)
        figures.rerun = sum(1 for key, n in calls.items() if key in wanted and n > 1)
        made = [calls.get(key, 0) for key in wanted]
        figures.calls_per_context = sum(made) / max(len(made), 1)
        figures.max_calls = max(made, default=0)
        figures.seconds = time.monotonic() - started
        return figures


def completed(harness: Harness, at_least: int, timeout: float = 120) -> None:
    """Until at least this many contexts are completed (the moment to inject the fault)."""
    store = harness.store()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                if store.contexts.count_documents({"status": {"$eq": "completed"}}) >= at_least:
                    return
            except Exception:  # the server may be down: that is the point
                pass
            time.sleep(0.2)
    finally:
        store.close()


# -- scenarios --------------------------------------------------------------------------------


def database_restarts(harness: Harness, n: int, restarts: int = 3) -> tuple[dict[str, int], set[str]]:
    store = harness.store()
    store.submit(harness.records("db", n))
    store.close()
    loop = harness.loop()
    for k in range(restarts):
        completed(harness, n * (k + 1) // (restarts + 2))
        harness.kill_db()
        time.sleep(1.0)
        harness.db("start")
    assert harness.wait(loop) == 0, "the loop did not ride out the restarts"
    return {"db": n}, set()


def _workers_of(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                command = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat[3]) == pid and b"spawn_main" in command:
                found.append(int(proc.name))
    return found


def worker_killed(harness: Harness, n: int) -> tuple[dict[str, int], set[str]]:
    store = harness.store()
    store.submit(harness.records("worker", n, sleep=0.005))
    store.close()
    loop = harness.loop()
    completed(harness, n // 4)
    # The nannies' children are the workers: kill one in the middle of its partition.
    workers = [w for nanny in _workers_of(loop.pid) for w in _workers_of(nanny)] or _workers_of(loop.pid)
    os.kill(max(workers), signal.SIGKILL)
    assert harness.wait(loop) == 0
    return {"worker": n}, set()


def loop_killed(harness: Harness, n: int) -> tuple[dict[str, int], set[str]]:
    store = harness.store()
    store.submit(harness.records("loop", n))
    store.close()
    first = harness.loop()
    completed(harness, n // 3)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert harness.wait(harness.loop()) == 0
    return {"loop": n}, set()


def three_loops(harness: Harness, n: int) -> tuple[dict[str, int], set[str]]:
    store = harness.store()
    store.submit(harness.records("race", n))
    store.close()
    loops = [harness.loop() for _ in range(3)]
    assert all(harness.wait(loop) == 0 for loop in loops)
    return {"race": n}, set()


SUBMITTER = """
import sys, json
from ctxbatch.io import ContextStore
store = ContextStore(sys.argv[1], "ctxbatch")
tag, count, bad_last = sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
def stream():
    for i in range(count):
        if i == 6000:
            print("staged", flush=True)
        yield {"payload": {"tag": tag, "i": i, "calls_file": sys.argv[5], "sleep": 0}}
    if bad_last:
        yield {"payload": {"tag": tag, "i": count, "x": float("nan")}}
store.submit(stream())
"""


def submit_killed(harness: Harness, n: int) -> tuple[dict[str, int], set[str]]:
    store = harness.store()
    store.submit(harness.records("base", n))
    store.close()
    loop = harness.loop()
    args = [sys.executable, "-c", SUBMITTER, harness.uri()]
    killed = subprocess.Popen([*args, "killed", "10000000", "0", str(harness.calls)], stdout=subprocess.PIPE, text=True)
    refused = subprocess.Popen([*args, "refused", "12000", "1", str(harness.calls)], stdout=subprocess.DEVNULL)
    harness.processes += [killed, refused]
    assert killed.stdout is not None and killed.stdout.readline().strip() == "staged"
    os.kill(killed.pid, signal.SIGKILL)
    assert refused.wait(300) == 1
    assert harness.wait(loop) == 0
    # The killed submission's lease has not expired yet: what the janitor will find later.
    from ctxbatch.io.schema import epoch_ms, utcnow

    store = harness.store()
    store.submissions.update_many({}, {"$set": {"lease.expires_ms": epoch_ms(utcnow()) - 1}})
    store.close()
    return {"base": n}, {"killed", "refused"}


def api_submitters(harness: Harness, n: int, clients: int = 20) -> tuple[dict[str, int], set[str]]:
    port = _free_port()
    harness.spawn("serve", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    _until(lambda: httpx.get(f"{base}/healthz", timeout=1).status_code == 200)
    loop = harness.loop()
    per_client = max(n // clients // 4, 1)
    acknowledged: dict[str, int] = {}
    refused: set[str] = set()
    lock = threading.Lock()

    def submitter(k: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            for j in range(4):
                tag = f"api-{k}-{j}"
                body = list(harness.records(tag, per_client, sleep=0))
                try:
                    answer = http.post("/api/contexts/bulk", json=body)
                    ok = answer.status_code == 202
                except httpx.HTTPError:
                    ok = False
                with lock:
                    (acknowledged.__setitem__(tag, per_client) if ok else refused.add(tag))

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    harness.kill_db()
    time.sleep(1.0)
    harness.db("start")
    for thread in threads:
        thread.join(300)
    # Contexts submitted after the loop drained the queue: a second loop takes them.
    assert harness.wait(loop) == 0
    assert harness.wait(harness.loop()) == 0
    return acknowledged, refused


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _until(ready: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError("not ready")


SCENARIOS: dict[str, Callable[[Harness, int], tuple[dict[str, int], set[str]]]] = {
    "database SIGKILLed and restarted x3": database_restarts,
    "a Dask worker SIGKILLed mid-partition": worker_killed,
    "the loop SIGKILLed": loop_killed,
    "three loops racing": three_loops,
    "a submit SIGKILLed midway (and one refused) while a loop runs": submit_killed,
    "20 API submitters, loop running, database restarted": api_submitters,
}


@contextmanager
def harness() -> Iterator[Harness]:
    with tempfile.TemporaryDirectory(prefix="ctxbatch-chaos-") as folder:
        made = Harness(Path(folder))
        try:
            yield made
        finally:
            made.close()


def run_scenario(name: str, n: int) -> Figures:
    with harness() as made:
        started = time.monotonic()
        expected, forbidden = SCENARIOS[name](made, n)
        return made.check(name, expected, forbidden, started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=2000)
    parser.add_argument("--only", nargs="*", help="Scenarios whose name holds one of these words.")
    options = parser.parse_args()
    print("| scenario | contexts | lost | duplicated | unexpected | rerun | calls per context | s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in SCENARIOS:
        if options.only and not any(word in name for word in options.only):
            continue
        print(run_scenario(name, options.contexts).row(), flush=True)


if __name__ == "__main__":
    main()
