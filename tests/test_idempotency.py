"""Idempotency keys, with Stripe's semantics: replayed, refused when the content differs, 409 while in progress."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, Invoke, json_lines

from ctxbatch.config import load_config
from ctxbatch.errors import IdempotencyKeyReused, SubmitError
from ctxbatch.io import ContextStore, connect
from ctxbatch.io.schema import epoch_ms, utcnow


def records(n: int, tag: str = "a") -> list[dict[str, Any]]:
    return [{"payload": {"tag": tag, "i": i}} for i in range(n)]


def stored(store: ContextStore) -> tuple[int, int]:
    """(batches, contexts) in the database."""
    return store.batches.count_documents({}), store.contexts.count_documents({})


class Stalled:
    """A submission with an idempotency key, in a thread, that stops before its last record until released."""

    def __init__(self, store: ContextStore, key: str, content: list[dict[str, Any]]) -> None:
        self.streaming, self.go_on = threading.Event(), threading.Event()
        self.batch_id: str | None = None
        self.raised: BaseException | None = None

        def stream() -> Iterator[dict[str, Any]]:
            yield from content[:-1]
            self.streaming.set()
            self.go_on.wait(60)
            yield content[-1]

        def submit() -> None:
            try:
                self.batch_id = store.submit(stream(), idempotency_key=key)
            except BaseException as exc:
                self.raised = exc

        self.thread = threading.Thread(target=submit)
        self.thread.start()
        assert self.streaming.wait(30)

    def finish(self) -> str:
        self.go_on.set()
        self.thread.join(30)
        if self.raised is not None:
            raise self.raised
        assert self.batch_id is not None
        return self.batch_id


# -- the store ----------------------------------------------------------------------------------


def test_a_retry_with_the_same_key_and_content_gets_the_first_batch_and_stores_nothing(store: ContextStore) -> None:
    first = store.submit_counted(records(5), name="n", idempotency_key="order-1")
    again = store.submit_counted(iter(records(5)), name="n", idempotency_key="order-1")
    assert (again.batch_id, again.count, again.replayed) == (first.batch_id, 5, True)
    assert not first.replayed
    assert stored(store) == (1, 5)
    assert store.batches.find_one({})["idempotency_key"] == "order-1"


def test_the_same_key_with_other_content_is_refused_naming_the_key(store: ContextStore) -> None:
    first = store.submit(records(5), idempotency_key="order-1")
    for other in ({"records": records(6)}, {"records": records(5, tag="b")}, {"records": records(5), "name": "x"}):
        with pytest.raises(IdempotencyKeyReused, match="'order-1'") as refused:
            store.submit(idempotency_key="order-1", **other)  # type: ignore[arg-type]
        assert refused.value.batch_id == first
    assert stored(store) == (1, 5)


def test_a_refused_submission_leaves_its_key_free(store: ContextStore) -> None:
    with pytest.raises(SubmitError):
        store.submit([*records(3), {"payload": "not an object"}], idempotency_key="k")
    batch_id = store.submit(records(3), idempotency_key="k")
    assert store.submit(records(3), idempotency_key="k") == batch_id
    assert stored(store) == (1, 3)


def test_a_key_past_its_hours_is_new_again_and_is_forgotten(store: ContextStore) -> None:
    first = store.submit(records(2), idempotency_key="k")
    store.idempotency.update_one({"_id": "k"}, {"$set": {"expires_ms": epoch_ms(utcnow()) - 1}})
    second = store.submit(records(2), idempotency_key="k")
    assert second != first and stored(store) == (2, 4)
    store.idempotency.update_one({"_id": "k"}, {"$set": {"expires_ms": epoch_ms(utcnow()) - 1}})
    store.tidy_submissions()
    assert store.idempotency.count_documents({}) == 0


def test_a_key_is_kept_for_api_idempotency_hours(mongo_uri: str, database: str) -> None:
    configured = connect(mongo_uri, database, config=load_config({"api": {"idempotency_hours": 2}}))
    try:
        configured.submit(records(1), idempotency_key="k")
        kept_ms = configured.idempotency.find_one({})["expires_ms"] - epoch_ms(utcnow())
        assert 2 * 3_600_000 - 60_000 < kept_ms <= 2 * 3_600_000
    finally:
        configured.wait_moved()
        configured.client.drop_database(database)
        configured.close()


def test_a_key_whose_first_submitter_stalled_before_its_commit_is_taken_over(store: ContextStore) -> None:
    # Given a first attempt that holds the key and stops streaming
    stalled = Stalled(store, "k", records(4))
    # When its lease passes (it was killed, say), a retry stores the submission itself
    store.submissions.update_many({}, {"$set": {"lease.expires_ms": epoch_ms(utcnow()) - 1}})
    retried = store.submit(records(4), idempotency_key="k")
    # Then the first can no longer commit: the retry's batch is the one
    with pytest.raises(SubmitError, match="stalled past its lease"):
        stalled.finish()
    assert store.submit(records(4), idempotency_key="k") == retried
    assert stored(store) == (1, 4)
    assert store.staged.count_documents({}) == 0 and store.submissions.count_documents({}) == 0


def test_an_invalid_key_is_refused_before_anything_is_read(store: ContextStore) -> None:
    for key in ("", "x" * 256, "tab\there"):
        with pytest.raises(SubmitError, match="idempotency_key"):
            store.submit(records(1), idempotency_key=key)
    assert stored(store) == (0, 0)


# -- over HTTP ----------------------------------------------------------------------------------


def post(api: httpx.Client, key: str, body: Any) -> Any:
    return api.post("/api/contexts/bulk", json=body, headers={"Idempotency-Key": key})


def test_a_replayed_request_gets_the_first_answer_marked_replayed(api: httpx.Client, store: ContextStore) -> None:
    first = post(api, "req-1", records(3))
    again = post(api, "req-1", records(3))
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() == {"batch_id": first.json()["batch_id"], "count": 3}
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert again.headers["Location"] == first.headers["Location"]
    assert stored(store) == (1, 3)


def test_a_request_reusing_a_key_with_another_body_is_a_422_naming_the_key(
    api: httpx.Client, store: ContextStore
) -> None:
    first = post(api, "req-1", records(3))
    refused = post(api, "req-1", records(4))
    assert refused.status_code == 422
    body = refused.json()
    assert "'req-1'" in body["error"] and first.json()["batch_id"] in body["error"]
    assert body["problems"][0]["field"] == "Idempotency-Key"
    assert stored(store) == (1, 3)


def test_a_request_whose_key_is_still_being_stored_is_a_409_then_replayed(
    api: httpx.Client, store: ContextStore
) -> None:
    content = records(3)
    stalled = Stalled(store, "req-1", content)
    busy = post(api, "req-1", content)
    assert busy.status_code == 409 and "in progress" in busy.json()["error"] and "'req-1'" in busy.json()["error"]
    batch_id = stalled.finish()
    replayed = post(api, "req-1", content)
    assert replayed.status_code == 202 and replayed.json()["batch_id"] == batch_id
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert stored(store) == (1, 3)


def test_an_invalid_idempotency_key_header_is_a_422_naming_it(api: httpx.Client, store: ContextStore) -> None:
    refused = post(api, "x" * 256, records(1))
    assert refused.status_code == 422 and refused.json()["problems"][0]["field"] == "Idempotency-Key"
    assert stored(store) == (0, 0)


# -- from the CLI -------------------------------------------------------------------------------


def test_the_cli_prints_the_first_batch_again_for_a_retry_and_refuses_other_content(
    ctxbatch: Invoke, store: ContextStore, tmp_path: Path
) -> None:
    path = json_lines(tmp_path / "a.jsonl", records(3))
    first = ctxbatch("submit", "--idempotency-key", "run-7", path)
    again = ctxbatch("submit", "--idempotency-key", "run-7", path)
    assert first.exit_code == again.exit_code == 0
    assert again.stdout == first.stdout and "nothing stored" in again.stderr
    other = ctxbatch("submit", "--idempotency-key", "run-7", json_lines(tmp_path / "b.jsonl", records(4)))
    assert other.exit_code == 1 and "'run-7'" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    assert stored(store) == (1, 3)


def test_the_cli_waits_for_the_first_submission_with_its_key_and_answers_like_it(
    mongo_uri: str, database: str, store: ContextStore, tmp_path: Path
) -> None:
    # Given a first submission with the key, still being stored
    content = records(3)
    stalled = Stalled(store, "run-7", content)
    # When the CLI submits the same content with the same key
    command = [sys.executable, "-m", "ctxbatch", "--mongo-uri", mongo_uri, "--database", database]
    path = json_lines(tmp_path / "a.jsonl", content)
    cli = subprocess.Popen(
        [*command, "submit", "--idempotency-key", "run-7", path],
        cwd=ROOT,
        env=os.environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Then it waits for the first
        assert cli.stderr is not None and "waiting for it" in cli.stderr.readline()
        batch_id = stalled.finish()
        out, _ = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    # And answers with the first's batch id, storing nothing
    assert cli.returncode == 0 and out.strip() == batch_id
    assert stored(store) == (1, 3)
