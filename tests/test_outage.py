"""The embedded server SIGKILLed mid-run: it comes back on its recorded port, the loop rides it out.

Each test has a CTXBATCH_HOME of its own (conftest's `home` fixture), so the server it
kills is its own.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import servers_for, small_run, until
from distributed import Client
from pymongo import MongoClient
from pymongo.errors import ConnectionFailure, PyMongoError

from ctxbatch import Pipeline
from ctxbatch.config import LimitsSettings, RetrySettings
from ctxbatch.errors import DatabaseUnavailable
from ctxbatch.io import ContextStore, connect, embedded
from ctxbatch.io.outage import ride_out
from ctxbatch.pipeline.budget import POLL_SECONDS, SharedLimit
from ctxbatch.pipeline.engine import resolve_engine
from ctxbatch.pipeline.fate import RetryPolicy
from ctxbatch.pipeline.partition import Loaded, PartitionJob, process_with

# Batches of 20; a batch the outage stopped runs again, up to 50 times.
RUN = small_run(batch_size=20, retry={"batch_retries": 50, "backoff_seconds": [0.2]})
POLICY = RetryPolicy(RetrySettings())


def kill_server(home: Path) -> int:
    (pid,) = servers_for(home)
    os.kill(pid, signal.SIGKILL)
    # Until the process itself is gone or a zombie: while it exits, its command line reads empty
    # (so servers_for() no longer lists it) though it still answers as alive.
    until(lambda: dead(pid), f"the SIGKILLed server {pid} to exit")
    return pid


def dead(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def test_a_restarted_server_takes_its_recorded_port(home: Path) -> None:
    first = embedded.start()
    kill_server(home)
    again = embedded.start()
    assert again.pid != first.pid and again.uri == first.uri


def test_a_stopped_server_starts_again_on_its_port(home: Path) -> None:
    first = embedded.start()
    assert embedded.stop()
    assert embedded.start().uri == first.uri


@contextmanager
def started_elsewhere(home: Path) -> Iterator[embedded.ServerState]:
    """The embedded server started while another socket holds its recorded port: it has to move."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        (home / "server.json").write_text(json.dumps({"port": taken.getsockname()[1]}))
        yield embedded.start()


def test_a_store_on_the_default_follows_a_server_that_had_to_move(home: Path) -> None:
    # Given a store on the default, and a server that must come back elsewhere: its port is taken
    embedded.start()
    store = connect()
    kill_server(home)
    with started_elsewhere(home) as moved:
        # Then the store follows the record there
        assert moved.uri != store.uri
        assert store.follow_embedded() and store.uri == moved.uri
        assert store.ping() > 0
    store.close()


def test_a_store_on_the_default_follows_a_moved_server_on_its_own(home: Path) -> None:
    # Given a store on the default whose server was killed: an ordinary operation fails
    embedded.start()
    store = connect()
    store.ping()
    kill_server(home)
    with pytest.raises(PyMongoError):
        store.status_counts()
    # When the server comes back elsewhere (its port is taken) and the operation is tried again
    with started_elsewhere(home) as moved:
        assert moved.uri != store.uri
        # Then it reaches the moved server, though nobody called follow_embedded
        assert store.status_counts()["pending"] == 0
        assert store.uri == moved.uri
    store.close()


def test_a_loop_rides_out_a_sigkilled_server_and_loses_nothing(home: Path, client: Client, tmp_path: Path) -> None:
    # Given a loop running over 400 contexts on the embedded default
    embedded.start()
    store = connect()
    calls = tmp_path / "calls"
    total = 400
    batch_id = store.submit([{"payload": {"i": i, "calls_file": str(calls), "sleep": 0.01}} for i in range(total)])
    failure: list[BaseException] = []

    def run() -> None:
        try:
            Pipeline("tests.engines:record_call", RUN, store, client).run(until_empty=True)
        except BaseException as exc:  # reported by the test
            failure.append(exc)

    loop = threading.Thread(target=run)
    loop.start()
    watcher = ContextStore(store.uri, store.database_name)
    deadline = time.monotonic() + 60
    while watcher.batch_status(batch_id)["counts"]["completed"] < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    watcher.close()
    # When the server is SIGKILLed mid-run and started again
    kill_server(home)
    time.sleep(1)  # an outage of a second: the loop's database calls fail meanwhile
    embedded.start()
    loop.join(120)
    # Then the run finishes with every context completed, and each ran at least once
    assert not loop.is_alive() and not failure, failure
    counts = store.batch_status(batch_id)["counts"]
    unfinished = store.results(batch_id).query("status != 'completed'")
    assert counts["completed"] == total, (counts, unfinished[["status", "error", "attempts"]].to_dict("records"))
    ran = {int(line) for line in calls.read_text().split()}
    assert ran == set(range(total))
    store.close()


def test_results_computed_during_an_outage_are_written_after_it_without_a_second_call(
    home: Path, client: Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a loop whose engine calls are under way, each waiting for a file, on a database its
    # clients wait 0.3 s for (so that its absence fails each try of the partition's write at once)
    state = embedded.start()
    assert state.uri is not None
    store = ContextStore(state.uri + "&serverSelectionTimeoutMS=300", "kept")
    calls, release, began = tmp_path / "calls", tmp_path / "release", tmp_path / "began"
    total = 10
    files = {"calls_file": str(calls), "release": str(release), "started": str(began)}
    batch_id = store.submit([{"payload": {"i": i, **files}} for i in range(total)])
    caplog.set_level(logging.INFO, "ctxbatch.io.outage")
    stopped: list[object] = []

    class Stops:
        def on_batch_critical(self, event: object) -> None:
            stopped.append(event)

    failure: list[BaseException] = []

    def run() -> None:
        try:
            pipeline = Pipeline(
                "tests.engines:record_call", small_run(batch_size=total), store, client, subscribers=[Stops()]
            )
            pipeline.run(until_empty=True)
        except BaseException as exc:  # reported by the test
            failure.append(exc)

    loop = threading.Thread(target=run)
    loop.start()
    until(lambda: began.exists() or failure, "an engine call under way")
    # When the server is SIGKILLed, and every call finishes while it is away
    kill_server(home)
    release.touch()
    until(lambda: calls.exists() and len(calls.read_text().split()) == total, "every call done in the outage")
    until(lambda: any("writing" in r.getMessage() for r in caplog.records), "the write to meet the outage")
    embedded.start()
    loop.join(120)
    # Then, once it is back, every result is written: each context completed after one call, no batch stopped
    assert not loop.is_alive() and not failure, failure
    assert store.batch_status(batch_id)["counts"]["completed"] == total
    assert sorted(int(line) for line in calls.read_text().split()) == list(range(total))
    assert not stopped, stopped
    store.close()


def test_a_partition_gives_up_its_write_once_the_outage_outlasts_mongo_outage_seconds(home: Path) -> None:
    # Given a partition computed under its claim, whose database is then SIGKILLed and stays away
    state = embedded.start()
    assert state.uri is not None
    store = ContextStore(state.uri + "&serverSelectionTimeoutMS=200", "bound")
    store.submit([{"payload": {"i": i}} for i in range(3)])
    claim = store.claim(3, "loop")
    loaded = Loaded.of(store.load(claim))
    job = PartitionJob(resolve_engine("tests.engines:echo"), store.uri, "bound", POLICY, 4, outage_seconds=1)
    kill_server(home)
    # When its write has been tried for mongo.outage_seconds, then the partition fails as it did
    # before results were kept (its batch is stopped and run again by the loop)
    with pytest.raises(ConnectionFailure):
        process_with(store, lambda engine: engine, loaded, claim, job)
    store.close()


def test_a_try_on_a_database_its_client_knows_is_away_is_told_within_its_selection_timeout(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a client that already found its server gone (SIGKILLed): pymongo would wait for a server
    # the whole of a pymongo.timeout(), so a write ridden out for 60 s would say nothing for 60 s
    state = embedded.start()
    assert state.uri is not None
    store = ContextStore(state.uri + "&serverSelectionTimeoutMS=300", "told")
    store.ping()
    kill_server(home)
    with pytest.raises(ConnectionFailure):
        store.ping()
    caplog.set_level(logging.INFO, "ctxbatch.io.outage")
    written: list[object] = []
    failure: list[BaseException] = []

    def write() -> None:
        try:
            written.append(ride_out(store, lambda: store.contexts.insert_one({"_id": "late"}), 60, "writing 1 outcome"))
        except BaseException as exc:  # reported by the test
            failure.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    # When its write is ridden out, then each try is told once the client's own selection timeout passes
    until(
        lambda: any("writing 1 outcome: the database did not answer" in r.getMessage() for r in caplog.records),
        "a try told",
        timeout=10,
    )
    # and once the server is back, the write is done and said to be
    embedded.start()
    writer.join(60)
    assert not writer.is_alive() and not failure and written, failure
    assert store.contexts.find_one({"_id": "late"}) is not None
    assert any("done once the database was back" in r.getMessage() for r in caplog.records)
    store.close()


def test_a_workers_calls_go_on_under_the_pause_it_knows_while_the_database_is_away(home: Path) -> None:
    # Given a worker's view of the limits, its pause read while the database was there
    state = embedded.start()
    assert state.uri is not None
    store = ContextStore(state.uri + "&serverSelectionTimeoutMS=300", "limited")
    limit = SharedLimit(store.limits, LimitsSettings())
    limit.acquire(limit.cost(None))
    # When the server is SIGKILLed while a row engine's calls go on, one every 20 ms
    kill_server(home)
    started: list[float] = []
    stop = threading.Event()

    def calls() -> None:
        while not stop.is_set():
            limit.acquire(limit.cost(None))
            started.append(time.monotonic())
            stop.wait(0.02)

    caller = threading.Thread(target=calls)
    caller.start()
    try:
        # Then they go on across many times the oldest view a call may start on: none waits for a
        # read of the pause that waits for the server (before, the first call past it waited for good)
        until(lambda: started and started[-1] - started[0] > 10 * POLL_SECONDS, "calls to go on in the outage")
    finally:
        stop.set()
        caller.join(30)
    assert not caller.is_alive()
    store.close()


def test_a_run_started_while_the_database_is_away_waits_for_it(
    home: Path, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    # Given contexts waiting, and a server that is down when the run starts
    embedded.start()
    uri = embedded.located()
    assert uri is not None
    submitter = ContextStore(uri, "away")
    submitter.submit([{"payload": {"i": i}} for i in range(20)])
    submitter.close()
    # (the run's store is a new one, as a new process's is: it has not touched the database yet)
    quick: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=300)
    store = ContextStore(uri, "away", client=quick)
    kill_server(home)
    caplog.set_level(logging.WARNING, "ctxbatch.pipeline")
    reports: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            reports.append(Pipeline("tests.engines:echo", RUN, store, client).run(until_empty=True))
        except BaseException as exc:  # reported by the test
            failure.append(exc)

    loop = threading.Thread(target=run)
    loop.start()
    # When the loop has found the database away, and the server comes back
    until(lambda: any("did not answer" in r.getMessage() for r in caplog.records), "the loop to find it away")
    embedded.start()
    loop.join(120)
    # Then the run waited for it and processed every context
    assert not loop.is_alive() and not failure, failure
    assert reports[0].completed == 20
    store.close()


def test_a_loop_gives_up_after_mongo_outage_seconds_with_one_line(home: Path, client: Client) -> None:
    embedded.start()
    uri = embedded.located()
    assert uri is not None
    quick: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=200)
    store = ContextStore(uri, "outage", client=quick)
    store.ping()

    class KillAtStart:
        def on_run_started(self, _: object) -> None:
            kill_server(home)

    settings = {**RUN, "mongo": {"outage_seconds": 1}}
    with pytest.raises(DatabaseUnavailable) as gave_up:
        Pipeline("tests.engines:echo", settings, store, client, subscribers=[KillAtStart()]).run(until_empty=True)
    message = str(gave_up.value)
    assert "\n" not in message and "mongo.outage_seconds" in message and "Topology" not in message
    store.close()
