"""Loops in real processes: several side by side, one killed with SIGKILL, one stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from ctxbatch import ContextStore, Pipeline

ROOT = Path(__file__).resolve().parents[1]


def write_config(path: Path, processes: bool = False, **worker: Any) -> Path:
    settings = {
        "worker": {
            "batch_size": 5,
            "dynamic_batch_sizing": False,
            "max_parallel_batches": 1,
            "batch_timeout_seconds": 0,
            "lease_seconds": 30,
            "retry": {"batch_retries": 1, "backoff_seconds": [0], "context_retries": 2},
            **worker,
        },
        # Threads, not processes: three loops with process clusters would crowd two cores.
        "dask": {"processes": processes, "n_workers": 1, "threads_per_worker": 2, "dashboard_address": None},
    }
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
def loops(mongo_uri: str, database: str) -> Iterator[Any]:
    """Starts `ctxbatch run` processes in their own process groups; kills whatever is left at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(config: Path, *args: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", mongo_uri, "--database", database]
        command += ["run", "--config", str(config), "--engine", "tests.engines:record_call", *args]
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_calls(calls: Path, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if calls.exists() and len(calls.read_text().split()) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} engine calls after {timeout} s")


def submit_calls(store: ContextStore, calls: Path, count: int, sleep: float = 0.0) -> str:
    return store.submit([{"payload": {"i": i, "calls_file": str(calls), "sleep": sleep}} for i in range(count)])


def test_three_loops_process_every_context_exactly_once(store: ContextStore, loops: Any, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    batch_id = submit_calls(store, calls, 90, sleep=0.01)
    config = write_config(tmp_path / "config.yaml")
    processes = [loops(config, "--until-empty") for _ in range(3)]
    for process in processes:
        _, err = process.communicate(timeout=110)
        assert process.returncode == 0, err.decode()
    assert sorted(int(i) for i in calls.read_text().split()) == list(range(90))
    assert store.batch_status(batch_id)["counts"]["completed"] == 90


def test_a_killed_loop_loses_nothing(store: ContextStore, loops: Any, tmp_path: Path) -> None:
    # Given a loop that is killed with SIGKILL in the middle of a batch
    calls = tmp_path / "calls"
    batch_id = submit_calls(store, calls, 20, sleep=0.2)
    victim = loops(write_config(tmp_path / "config.yaml", lease_seconds=2))
    wait_for_calls(calls, 2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert store.status_counts()["processing"] > 0
    # When a second loop runs once the lease has expired
    Pipeline("tests.engines:record_call", write_config(tmp_path / "second.yaml", lease_seconds=2), store).run(
        until_empty=True
    )
    # Then every context completed; only the killed batch ran twice
    counts = store.batch_status(batch_id)["counts"]
    assert counts["completed"] == 20
    seen = [int(i) for i in calls.read_text().split()]
    assert set(seen) == set(range(20))
    assert len(seen) - 20 <= 5  # at most one batch (batch_size 5) re-ran


def test_sigterm_drains_in_flight_batches_and_exits_zero(store: ContextStore, loops: Any, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    submit_calls(store, calls, 40, sleep=0.1)
    process = loops(write_config(tmp_path / "config.yaml"))
    wait_for_calls(calls, 1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()
    counts = store.status_counts()
    assert counts["processing"] == 0
    assert counts["completed"] >= 5
    assert counts["completed"] + counts["pending"] == 40
    assert "Traceback" not in err.decode()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.05)


def read_lines(stream: IO[bytes]) -> list[str]:
    """The stream's lines as they come, read in a thread (so a full pipe never blocks the process)."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(line.decode() for line in stream), daemon=True).start()
    return lines


# A batch of 5 contexts of 20 s each on 2 threads takes at least 60 s to drain. A release is one
# write (well under a second alone); the exit also closes the cluster, which stops its worker process.
SLOW_ROW_SECONDS = 20.0
RELEASE_BOUND_SECONDS = 5.0
EXIT_BOUND_SECONDS = 15.0


def test_a_second_sigterm_releases_batches_at_once(store: ContextStore, loops: Any, tmp_path: Path) -> None:
    # Given a loop in the middle of a slow batch (5 contexts of 20 s each)
    calls = tmp_path / "calls"
    submit_calls(store, calls, 10, sleep=SLOW_ROW_SECONDS)
    # (A worker process: a thread running a row cannot be stopped, a process can.)
    process = loops(write_config(tmp_path / "config.yaml", processes=True))
    assert process.stderr is not None
    err = read_lines(process.stderr)
    wait_until(lambda: store.status_counts()["processing"] == 5, "claimed")
    # When it gets SIGTERM, says it drains, and gets SIGTERM again
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: any("finishing batches in flight" in line for line in err), "draining")
    second = time.monotonic()
    process.send_signal(signal.SIGTERM)
    wait_until(lambda: store.status_counts()["processing"] == 0, "released", timeout=RELEASE_BOUND_SECONDS)
    process.wait(timeout=60)
    # Then it released the batch and exited 0 within the bound, long before the batch could have drained
    assert time.monotonic() - second < EXIT_BOUND_SECONDS
    assert process.returncode == 0, "".join(err)
    # And every context it claimed and did not finish is pending again, held by no lease, its try uncounted
    contexts = list(store.contexts.find({}, {"status": 1, "lease": 1, "attempts": 1}))
    assert calls.exists() is False  # no row finished
    assert {c["status"] for c in contexts} == {"pending"}
    assert {c["attempts"] for c in contexts} == {0}
    assert len(store.claim(len(contexts), "checker", 60)) == len(contexts)  # held by nobody
