"""Named queues: a batch joins one, a loop claims only its own, and each is counted apart."""

from __future__ import annotations

from pathlib import Path

from conftest import Invoke, json_lines, small_run
from distributed import Client

from ctxbatch import Pipeline
from ctxbatch.io import ContextStore


def payloads(n: int, tag: str) -> list[dict[str, object]]:
    return [{"payload": {"i": i, "tag": tag}} for i in range(n)]


def test_a_claim_takes_only_its_queues(store: ContextStore) -> None:
    paid = store.submit(payloads(3, "paid"), queue="paid")
    test = store.submit(payloads(2, "test"))
    assert store.claim(10, "loop", queues=["default"]).batch_ids == [test]
    assert len(store.claim(10, "loop", queues=["paid"])) == 3
    assert store.claim(10, "loop", queues=["paid", "default"]).ids == []
    assert store.batch_status(paid)["queue"] == "paid"


def test_a_claim_over_several_queues_keeps_priority_order(store: ContextStore) -> None:
    store.submit([{"payload": {"q": "a"}, "priority": 30}], queue="a")
    store.submit([{"payload": {"q": "b"}, "priority": 10}], queue="b")
    claim = store.claim(2, "loop", queues=["a", "b"])
    assert [store.get_context(i)["queue"] for i in claim.ids] == ["b", "a"]


def test_queues_isolate_two_loops(store: ContextStore, client: Client) -> None:
    paid = store.submit(payloads(6, "paid"), queue="paid")
    test = store.submit(payloads(4, "test"), queue="test")
    first = Pipeline("echo", small_run(queues=["paid"]), store, client).run(until_empty=True)
    assert first.completed == 6
    assert store.counts(paid)["completed"] == 6
    assert store.counts(test)["pending"] == 4
    assert store.stats()["queues"]["test"] == {"pending": 4, "processing": 0}
    second = Pipeline("echo", small_run(queues=["test"]), store, client).run(until_empty=True)
    assert second.completed == 4
    assert store.counts(test)["completed"] == 4


def test_submit_and_run_take_a_queue_on_the_command_line(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    result = ctxbatch("submit", "--queue", "nightly", json_lines(tmp_path / "in.jsonl", payloads(2, "n")))
    assert result.exit_code == 0, result.stderr
    batch_id = result.stdout.strip()
    assert store.batch_status(batch_id)["queue"] == "nightly"
    # A loop on another queue finds nothing to do and stops at once.
    empty = ctxbatch("run", "--engine", "echo", "--until-empty", "--queue", "other")
    assert empty.exit_code == 0, empty.stderr
    assert store.counts(batch_id)["pending"] == 2


def test_an_empty_queue_name_is_refused(store: ContextStore, api: object) -> None:
    refused = api.post("/api/contexts/bulk?queue=", json=payloads(1, "x"))
    assert refused.status_code == 422
    assert store.batches.count_documents({}) == 0
    accepted = api.post("/api/contexts/bulk?queue=paid", json=payloads(1, "x"))
    assert accepted.status_code == 202
    assert store.batch_status(accepted.json()["batch_id"])["queue"] == "paid"
