"""Loops in real processes: several side by side, one killed with SIGKILL, one stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import IO, Any

import yaml
from conftest import DEADLINE_SECONDS, until

from ctxbatch import ContextStore, Pipeline

ENGINE = "tests.engines:record_call"


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


def wait_for_calls(calls: Path, at_least: int) -> None:
    until(lambda: calls.exists() and len(calls.read_text().split()) >= at_least, f"{at_least} engine calls")


def submit_calls(store: ContextStore, calls: Path, count: int, sleep: float = 0.0) -> str:
    return store.submit([{"payload": {"i": i, "calls_file": str(calls), "sleep": sleep}} for i in range(count)])


def test_three_loops_process_every_context_exactly_once(store: ContextStore, loops: Any, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    batch_id = submit_calls(store, calls, 90, sleep=0.01)
    config = write_config(tmp_path / "config.yaml")
    processes = [loops(config, ENGINE, "--until-empty") for _ in range(3)]
    for process in processes:
        _, err = process.communicate(timeout=110)
        assert process.returncode == 0, err
    assert sorted(int(i) for i in calls.read_text().split()) == list(range(90))
    assert store.batch_status(batch_id)["counts"]["completed"] == 90


def test_a_killed_loop_loses_nothing(store: ContextStore, loops: Any, tmp_path: Path) -> None:
    # Given a loop that is killed with SIGKILL in the middle of a batch
    calls = tmp_path / "calls"
    batch_id = submit_calls(store, calls, 20, sleep=0.2)
    victim = loops(write_config(tmp_path / "config.yaml", lease_seconds=2), ENGINE)
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
    process = loops(write_config(tmp_path / "config.yaml"), ENGINE)
    wait_for_calls(calls, 1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    counts = store.status_counts()
    assert counts["processing"] == 0
    assert counts["completed"] >= 5
    assert counts["completed"] + counts["pending"] == 40
    assert "Traceback" not in err


def read_lines(stream: IO[str]) -> list[str]:
    """The stream's lines as they come, read in a thread (so a full pipe never blocks the process)."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(stream), daemon=True).start()
    return lines


def test_a_second_sigterm_releases_batches_at_once(store: ContextStore, loops: Any, tmp_path: Path) -> None:
    # Given a loop in the middle of a batch whose rows never finish: each waits for a file nobody writes
    calls, never = tmp_path / "calls", tmp_path / "never"
    store.submit([{"payload": {"i": i, "calls_file": str(calls), "release": str(never)}} for i in range(10)])
    # (A worker process: a thread running a row cannot be stopped, a process can.)
    process = loops(write_config(tmp_path / "config.yaml", processes=True), ENGINE)
    assert process.stderr is not None
    err = read_lines(process.stderr)
    until(lambda: store.status_counts()["processing"] == 5, "claimed")
    # When it gets SIGTERM, says it drains, and gets SIGTERM again
    process.send_signal(signal.SIGTERM)
    until(lambda: any("finishing batches in flight" in line for line in err), "draining")
    process.send_signal(signal.SIGTERM)
    # Then it exits 0, though no row of its batch could finish: it released the batch instead of draining it
    process.wait(timeout=DEADLINE_SECONDS)
    assert process.returncode == 0, "".join(err)
    assert any("SIGTERM: releasing batches in flight" in line for line in err), "".join(err)
    assert calls.exists() is False  # no row finished
    # And every context it claimed and did not finish is pending again, held by no lease, its try uncounted
    contexts = list(store.contexts.find({}, {"status": 1, "lease": 1, "attempts": 1}))
    assert {c["status"] for c in contexts} == {"pending"}
    assert {c["attempts"] for c in contexts} == {0}
    assert len(store.claim(len(contexts), "checker", 60)) == len(contexts)  # held by nobody
