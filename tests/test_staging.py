"""Submissions invisible until whole, streamed in chunks; interrupted ones cleaned by the janitor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import small_run, until
from distributed import Client
from pymongo import MongoClient, monitoring
from pymongo.errors import AutoReconnect
from wire import command, reply_losing_proxy

from ctxbatch import Pipeline
from ctxbatch.errors import SubmitError
from ctxbatch.io import ContextStore, moves, staging
from ctxbatch.io.schema import epoch_ms, utcnow


def records(n: int, start: int = 0) -> Iterator[dict[str, Any]]:
    for i in range(start, start + n):
        yield {"payload": {"i": i, "text": "x" * 100}}


def nothing_claimable(store: ContextStore) -> bool:
    return not store.claim(100_000, "checker", 60).ids and store.contexts.count_documents({}) == 0


def expire_leases(store: ContextStore) -> None:
    # What the passing of LEASE_SECONDS does, without waiting for it.
    store.submissions.update_many({}, {"$set": {"lease.expires_ms": epoch_ms(utcnow()) - 1}})


def submitted_watched(
    mongo_uri: str, database: str, listener: monitoring.CommandListener, submitted: Iterator[dict[str, Any]]
) -> int:
    """How many contexts a store whose client reports its commands to `listener` submitted from `submitted`."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True, event_listeners=[listener])
    store = ContextStore(mongo_uri, database, client=client)
    try:
        return store.submit_counted(submitted).count
    finally:
        store.close()


class FirstInsert(monitoring.CommandListener):
    """Notes how many records the generator had given when the first insert went out."""

    def __init__(self, pulled: list[int]) -> None:
        self.pulled = pulled
        self.at: int | None = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert" and event.command.get("insert") in ("staged", "contexts") and self.at is None:
            self.at = self.pulled[0]

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_a_generator_is_streamed_not_materialised(mongo_uri: str, database: str) -> None:
    pulled = [0]
    listener = FirstInsert(pulled)

    def counted() -> Iterator[dict[str, Any]]:
        for record in records(3 * staging.CHUNK_CONTEXTS):
            pulled[0] += 1
            yield record

    count = submitted_watched(mongo_uri, database, listener, counted())
    assert count == 3 * staging.CHUNK_CONTEXTS
    # The next chunk is made while the first is written: at most two are held.
    assert listener.at is not None and listener.at <= 2 * staging.CHUNK_CONTEXTS + 1


class HeldFirstChunk(monitoring.CommandListener):
    """Holds the first staged chunk's write until the records after it are being read (or 10 s)."""

    def __init__(self, reading_on: threading.Event) -> None:
        self.reading_on = reading_on
        self.overlapped: bool | None = None

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "insert" and event.command.get("insert") == "staged" and self.overlapped is None:
            self.overlapped = self.reading_on.wait(10)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_the_next_chunk_is_read_while_one_is_written(mongo_uri: str, database: str) -> None:
    # Given a submission of two chunks whose first write waits for the second chunk's records
    reading_on = threading.Event()
    listener = HeldFirstChunk(reading_on)

    def noted() -> Iterator[dict[str, Any]]:
        for index, record in enumerate(records(2 * staging.CHUNK_CONTEXTS)):
            # The first chunk is full when the record after it arrives; the one after that is the next chunk's read.
            if index == staging.CHUNK_CONTEXTS + 1:
                reading_on.set()
            yield record

    # When it is submitted
    count = submitted_watched(mongo_uri, database, listener, noted())
    # Then the submitter read on while the server stored the first chunk
    assert count == 2 * staging.CHUNK_CONTEXTS
    assert listener.overlapped is True


def test_a_submission_refused_at_its_last_record_is_never_claimable(store: ContextStore) -> None:
    # Given a submission that has streamed most of its records and waits before its last one
    staged, go_on = threading.Event(), threading.Event()
    outcome: list[BaseException] = []

    def stalling() -> Iterator[Any]:
        yield from records(2 * staging.CHUNK_CONTEXTS + 10)
        staged.set()
        go_on.wait(30)
        yield {"payload": {"n": float("nan")}}

    def submit() -> None:
        try:
            store.submit(stalling())
        except SubmitError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=submit)
    worker.start()
    assert staged.wait(30)
    # When a loop claims meanwhile, it finds nothing of it
    # (the second chunk is written while the records after it are read)
    until(lambda: store.staged.count_documents({}) >= 2, "two chunks staged")
    assert nothing_claimable(store)
    assert store.list_batches() == []
    go_on.set()
    worker.join(30)
    # Then the refusal names the last record, and its staging is gone
    assert outcome and isinstance(outcome[0], SubmitError) and outcome[0].index == 2 * staging.CHUNK_CONTEXTS + 10
    assert nothing_claimable(store)
    assert store.staged.count_documents({}) == 0 and store.submissions.count_documents({}) == 0


SUBMITTER = """
import sys
from ctxbatch.io import ContextStore
store = ContextStore(sys.argv[1], sys.argv[2])
def stream():
    for i in range(10**7):
        if i == 12_000:
            print("staged", flush=True)
        yield {"payload": {"i": i}}
store.submit(stream())
"""


def test_a_submit_sigkilled_midway_leaves_nothing_claimable_and_the_janitor_cleans_it(
    mongo_uri: str, database: str, store: ContextStore
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SUBMITTER, mongo_uri, database], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "staged"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(30)
    assert nothing_claimable(store)
    assert store.staged.count_documents({}) >= 2
    # The janitor leaves a submission alone while its lease holds: it may still be streaming.
    assert store.tidy_submissions() == 0
    expire_leases(store)
    assert store.tidy_submissions() == 1
    assert store.staged.count_documents({}) == 0 and store.submissions.count_documents({}) == 0
    assert nothing_claimable(store) and store.list_batches() == []


def test_a_committed_submission_cut_off_while_moving_is_finished_by_the_janitor(
    store: ContextStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a submission committed, whose move stops after its first chunk (the database went away)
    real_move = moves._move
    moved = [0]

    def cut_off(store_: ContextStore, batch_id: str, documents: list[dict[str, Any]]) -> None:
        moved[0] += 1
        if moved[0] > 1:
            raise AutoReconnect("gone")
        real_move(store_, batch_id, documents)

    monkeypatch.setattr(moves, "_move", cut_off)
    total = 3 * staging.CHUNK_CONTEXTS
    batch_id = store.submit(records(total))
    store.wait_moved()  # the move, in this process's thread, stops after its first chunk
    monkeypatch.setattr(moves, "_move", real_move)
    assert store.contexts.count_documents({}) == staging.CHUNK_CONTEXTS
    # When the janitor runs once its lease has expired
    expire_leases(store)
    assert store.tidy_submissions() == 1
    # Then every context is there once, and the staging is gone
    assert store.batch_status(batch_id)["counts"]["pending"] == total
    assert len({d["_id"] for d in store.contexts.find({}, {"_id": 1})}) == total
    assert store.staged.count_documents({}) == 0 and store.submissions.count_documents({}) == 0


def test_a_key_already_stored_is_refused_in_a_later_chunk_naming_the_record(store: ContextStore) -> None:
    store.submit([{"payload": {}, "key": "taken"}])
    late = staging.CHUNK_CONTEXTS + 7
    with pytest.raises(SubmitError) as refused:
        store.submit([*records(late), {"payload": {}, "key": "taken"}])
    assert (refused.value.index, refused.value.field) == (late, "key")
    assert store.contexts.count_documents({}) == 1
    assert store.staged.count_documents({}) == 0


def test_a_taken_key_is_reported_before_a_bad_record_read_while_its_chunk_was_written(store: ContextStore) -> None:
    # Given a stored key, and a submission whose first chunk takes it again and whose second chunk
    # holds a bad record (read while the first chunk is checked and written)
    store.submit([{"payload": {}, "key": "taken"}])
    bad = staging.CHUNK_CONTEXTS + 3
    submission = [*records(3), {"payload": {}, "key": "taken"}, *records(bad - 4, 4), {"payload": []}]
    # When it is submitted
    with pytest.raises(SubmitError) as refused:
        store.submit(submission)
    # Then the earlier record's problem is the one reported, as when staging read and wrote by turns
    assert (refused.value.index, refused.value.field) == (3, "key")
    assert store.staged.count_documents({}) == 0 and store.submissions.count_documents({}) == 0


def test_a_commit_whose_answer_was_lost_is_read_back_not_refused(mongo_uri: str, database: str) -> None:
    # Given a connection that loses the answer to the commit (the one update of `submissions`)
    with reply_losing_proxy(mongo_uri) as proxy:
        store = ContextStore(proxy.uri, database)
        proxy.lose_reply_to(command("update", "submissions"))
        # When the commit is applied but its answer never comes
        batch_id = store.submit(records(10))
        # Then the submission is acknowledged, not refused, and is whole in the queue
        assert proxy.lost.is_set()
        assert store.batch_status(batch_id)["counts"]["pending"] == 10
        assert store.submissions.count_documents({}) == 0
        store.client.drop_database(database)
        store.close()


def test_a_run_until_empty_waits_for_a_submission_cut_off_on_its_way_in(
    mongo_uri: str, database: str, client: Client
) -> None:
    # Given a committed submission whose move was cut off before any context reached the queue
    with reply_losing_proxy(mongo_uri) as proxy:
        cut = ContextStore(proxy.uri, database)
        proxy.lose_reply_to(command("insert", "batches"))
        batch_id = cut.submit(records(30))
        cut.wait_moved()
        assert proxy.lost.is_set() and cut.contexts.count_documents({}) == 0
        cut.close()
    store = ContextStore(mongo_uri, database)
    # Then the queue is not drained: the submission is on its way in
    assert not store.drained()
    # And a run until empty moves it in (its move lease expired) and processes every context
    report = Pipeline("tests.engines:echo", small_run(lease_seconds=2), store, client).run(until_empty=True)
    assert report.completed == 30
    assert store.batch_status(batch_id)["counts"]["completed"] == 30
    assert store.drained()
    store.client.drop_database(database)
    store.close()
