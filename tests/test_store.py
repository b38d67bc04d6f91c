"""ContextStore against the real embedded server: submission, batch status, and index-backed queries."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pandas as pd
import pytest
from conftest import Commands

from ctxbatch import BatchNotFound, ContextNotFound, SubmitError
from ctxbatch.io import ContextStore, Status, derive_status
from ctxbatch.io.columns import RESULT_COLUMNS
from ctxbatch.io.schema import CONTEXT_INDEXES


def records(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"payload": {"n": i, "text": f"context {i}"}, **extra} for i in range(n)]


def stored(store: ContextStore) -> tuple[int, int]:
    """How many contexts and batches the store's database holds."""
    return store.contexts.count_documents({}), store.batches.count_documents({})


# -- submission -----------------------------------------------------------------------------


def test_submit_stores_every_record_as_a_pending_context(store: ContextStore) -> None:
    batch_id = store.submit(records(5))
    frame = store.results(batch_id)
    assert list(frame.columns) == RESULT_COLUMNS
    assert frame["payload"].tolist() == [r["payload"] for r in records(5)]
    assert set(frame["status"]) == {"pending"}
    assert set(frame["attempts"]) == {0}


def test_a_record_without_priority_gets_the_submission_default(store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {}}, {"payload": {}, "priority": 3}], priority=7)
    assert sorted(store.results(batch_id)["priority"]) == [3, 7]


def test_the_default_priority_is_50(store: ContextStore) -> None:
    batch_id = store.submit(records(1))
    assert store.results(batch_id)["priority"].tolist() == [50]


def test_a_key_becomes_the_context_id(store: ContextStore) -> None:
    store.submit([{"payload": {"a": 1}, "key": "doc-1"}])
    assert store.get_context("doc-1")["payload"] == {"a": 1}


def test_an_unknown_context_id_raises_context_not_found(store: ContextStore) -> None:
    with pytest.raises(ContextNotFound):
        store.get_context("nope")


def test_stored_times_are_utc_datetimes(store: ContextStore) -> None:
    batch_id = store.submit(records(1))
    context = store.results(batch_id).iloc[0]
    assert isinstance(context["created_at"], dt.datetime)
    assert context["created_at"].utcoffset() == dt.timedelta(0)


BAD_RECORDS = [
    pytest.param({"priority": 5}, "payload", "missing", id="payload-missing"),
    pytest.param({"payload": "some text"}, "payload", "JSON object", id="payload-string"),
    pytest.param({"payload": [1, 2]}, "payload", "JSON object", id="payload-list"),
    pytest.param({"payload": {"x": object()}}, "payload.x", "is not a JSON value", id="payload-not-bson"),
    pytest.param({"payload": {}, "priority": 500}, "priority", "0 to 100", id="priority-500"),
    pytest.param({"payload": {}, "priority": -1}, "priority", "0 to 100", id="priority-negative"),
    pytest.param({"payload": {}, "priority": "high"}, "priority", "0 to 100", id="priority-string"),
    pytest.param({"payload": {}, "priority": True}, "priority", "0 to 100", id="priority-bool"),
    pytest.param({"payload": {}, "priority": 5.5}, "priority", "0 to 100", id="priority-float"),
    pytest.param({"payload": {}, "colour": "red"}, "colour", "unknown field", id="unknown-field"),
    pytest.param({"payload": {}, "key": 7}, "key", "string", id="key-not-string"),
    pytest.param({"payload": {}, "key": ""}, "key", "string", id="key-empty"),
    pytest.param("just text", None, "object", id="record-not-object"),
]


@pytest.mark.parametrize(("bad", "field", "problem"), BAD_RECORDS)
def test_a_bad_record_is_refused_naming_its_position_and_problem(
    store: ContextStore, bad: Any, field: str | None, problem: str
) -> None:
    with pytest.raises(SubmitError) as refused:
        store.submit([*records(2), bad, *records(2)])
    assert refused.value.index == 2
    assert refused.value.field == field
    assert problem in refused.value.message
    assert str(refused.value).startswith("record 2: ")


def test_the_first_of_several_bad_records_is_named(store: ContextStore) -> None:
    with pytest.raises(SubmitError) as refused:
        store.submit([*records(1), {"payload": {}, "priority": 500}, *records(1), {"payload": "x"}])
    assert (refused.value.index, refused.value.field) == (1, "priority")


@pytest.mark.parametrize(("bad", "field", "problem"), BAD_RECORDS[:3])
def test_a_refused_submission_leaves_nothing_behind(store: ContextStore, bad: Any, field: str, problem: str) -> None:
    store.submit(records(3))
    before = stored(store)
    with pytest.raises(SubmitError):
        store.submit([*records(1000), bad])
    assert stored(store) == before


def test_a_refused_submission_writes_nothing_to_the_queue(watched: ContextStore, commands: Commands) -> None:
    # Streamed, it stages chunks before the bad last record is seen; the queue itself is never written.
    with pytest.raises(SubmitError):
        watched.submit([*records(5000), {"payload": "late and bad"}])
    for collection in ("contexts", "batches"):
        assert not [c for name in ("insert", "update", "delete") for c in commands.on(name, collection)]
    assert watched.staged.count_documents({}) == 0
    assert watched.submissions.count_documents({}) == 0


def test_an_empty_submission_is_refused(store: ContextStore) -> None:
    with pytest.raises(SubmitError, match="no contexts"):
        store.submit([])


def test_a_bad_default_priority_is_refused(store: ContextStore) -> None:
    with pytest.raises(SubmitError, match="priority"):
        store.submit(records(1), priority=101)


def test_a_key_repeated_within_a_submission_is_refused(store: ContextStore) -> None:
    with pytest.raises(SubmitError) as refused:
        store.submit([{"payload": {}, "key": "a"}, {"payload": {}, "key": "b"}, {"payload": {}, "key": "a"}])
    assert (refused.value.index, refused.value.field) == (2, "key")
    assert refused.value.earlier == 0
    assert "first at record 0" in str(refused.value)
    assert stored(store) == (0, 0)


def test_a_key_from_an_earlier_batch_is_refused_and_nothing_of_the_new_batch_stays(store: ContextStore) -> None:
    store.submit([{"payload": {"v": 1}, "key": "taken"}])
    before = stored(store)
    with pytest.raises(SubmitError) as refused:
        store.submit([*records(3), {"payload": {"v": 2}, "key": "taken"}])
    assert (refused.value.index, refused.value.field) == (3, "key")
    assert stored(store) == before
    assert store.get_context("taken")["payload"] == {"v": 1}


def test_a_dataframe_with_a_payload_column_is_submitted(store: ContextStore) -> None:
    frame = pd.DataFrame({"payload": [{"a": 1}, {"b": 2}], "priority": [1, 2], "key": ["k1", "k2"]})
    batch_id = store.submit(frame)
    assert store.results(batch_id)[["id", "priority", "payload"]].to_dict("records") == [
        {"id": "k1", "priority": 1, "payload": {"a": 1}},
        {"id": "k2", "priority": 2, "payload": {"b": 2}},
    ]


def test_a_dataframe_with_missing_priorities_uses_the_default_for_them(store: ContextStore) -> None:
    # pandas turns an int column with a gap into floats; 3.0 is still priority 3.
    frame = pd.DataFrame([{"payload": {"a": 1}, "priority": 3}, {"payload": {"b": 2}}])
    batch_id = store.submit(frame)
    assert sorted(store.results(batch_id)["priority"]) == [3, 50]


def test_a_dataframe_without_a_payload_column_is_refused(store: ContextStore) -> None:
    with pytest.raises(SubmitError, match="payload"):
        store.submit(pd.DataFrame({"text": ["a", "b"]}))
    assert stored(store) == (0, 0)


def test_a_submission_is_inserted_in_a_few_unordered_bulk_writes(watched: ContextStore, commands: Commands) -> None:
    watched.submit(records(25_000))
    watched.wait_moved()
    inserts = commands.on("insert")
    assert 1 <= len(inserts) <= 5
    assert all(command["ordered"] is False for command in inserts)
    assert len(commands.on("insert", "batches")) == 1


# -- batch status, cancel, retry -------------------------------------------------------------


def test_batch_status_has_the_shape_of_the_design(store: ContextStore) -> None:
    batch_id = store.submit(records(3), name="nightly")
    report = store.batch_status(batch_id)
    assert {"batch_id", "status", "counts", "created_at", "updated_at"} <= set(report)
    assert report["batch_id"] == batch_id
    assert report["counts"] == {
        "total": 3,
        "pending": 3,
        "processing": 0,
        "completed": 0,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
    }
    assert dt.datetime.fromisoformat(report["updated_at"]) >= dt.datetime.fromisoformat(report["created_at"])
    assert json.loads(json.dumps(report)) == report


def test_a_fresh_batch_is_pending(store: ContextStore) -> None:
    assert store.batch_status(store.submit(records(2)))["status"] == "pending"


def test_a_batch_with_a_claimed_context_is_processing(store: ContextStore) -> None:
    batch_id = store.submit(records(2))
    store.claim(1, "loop")
    assert store.batch_status(batch_id)["status"] == "processing"


def test_a_batch_partly_done_and_partly_pending_is_processing(store: ContextStore) -> None:
    batch_id = store.submit(records(2))
    claim = store.claim(1, "loop")
    store.complete(claim, {claim.ids[0]: {"ok": True}})
    assert store.batch_status(batch_id)["status"] == "processing"


def test_a_batch_whose_contexts_all_completed_or_failed_is_completed(store: ContextStore) -> None:
    batch_id = store.submit(records(2))
    claim = store.claim(2, "loop")
    store.complete(claim, {claim.ids[0]: 1})
    store.fail(claim, {claim.ids[1]: {"type": "ValueError", "message": "bad", "traceback": ""}})
    report = store.batch_status(batch_id)
    assert report["status"] == "completed"
    assert (report["counts"]["completed"], report["counts"]["failed"]) == (1, 1)


def test_cancel_cancels_the_pending_contexts_only(store: ContextStore) -> None:
    batch_id = store.submit(records(3))
    claim = store.claim(1, "loop")
    assert store.cancel(batch_id) == 2
    assert store.get_context(claim.ids[0])["status"] == "processing"
    assert store.batch_status(batch_id)["counts"]["cancelled"] == 2


def test_a_cancelled_batch_is_cancelled(store: ContextStore) -> None:
    batch_id = store.submit(records(2))
    store.cancel(batch_id)
    assert store.batch_status(batch_id)["status"] == "cancelled"


def test_cancelled_contexts_are_not_claimed(store: ContextStore) -> None:
    store.cancel(store.submit(records(2)))
    assert len(store.claim(5, "loop")) == 0


def test_retry_sends_failed_contexts_back_to_pending_with_attempts_reset(store: ContextStore) -> None:
    batch_id = store.submit(records(2))
    claim = store.claim(2, "loop")
    store.fail(claim, {cid: {"type": "E", "message": "m", "traceback": ""} for cid in claim.ids})
    assert store.retry(batch_id) == 2
    again = store.claim(5, "loop")
    assert sorted(again.ids) == sorted(claim.ids)
    assert set(again.attempts.values()) == {1}


@pytest.mark.parametrize("operation", ["batch_status", "cancel", "retry", "results"])
def test_an_unknown_batch_raises_batch_not_found(store: ContextStore, operation: str) -> None:
    with pytest.raises(BatchNotFound, match="no batch"):
        getattr(store, operation)("000000000000000000000000")


@pytest.mark.parametrize(
    ("counts", "status"),
    [
        ({"pending": 2}, "pending"),
        ({"pending": 1, "processing": 1}, "processing"),
        ({"pending": 1, "completed": 1}, "processing"),
        ({"processing": 2}, "processing"),
        ({"completed": 1, "failed": 1}, "completed"),
        ({"cancelled": 2}, "cancelled"),
        ({"completed": 1, "cancelled": 1}, "cancelled"),
        ({}, "completed"),
    ],
)
def test_derived_batch_status(counts: dict[str, int], status: str) -> None:
    assert derive_status({s.value: 0 for s in Status} | counts) == status


def test_results_carry_results_and_errors(store: ContextStore) -> None:
    batch_id = store.submit(records(2))
    claim = store.claim(2, "loop")
    store.complete(claim, {claim.ids[0]: {"answer": 42}})
    store.fail(claim, {claim.ids[1]: {"type": "KeyError", "message": "x", "traceback": ""}})
    by_id = store.results(batch_id).set_index("id")
    assert by_id.loc[claim.ids[0], "result"] == {"answer": 42}
    assert by_id.loc[claim.ids[1], "error"]["type"] == "KeyError"


def test_queue_length_counts_pending_contexts_by_level(store: ContextStore) -> None:
    store.submit([{"payload": {}, "priority": p} for p in (0, 10, 11, 60, 100)])
    assert store.queue_length() == {"high": 2, "medium": 1, "low": 2}


# -- the hot queries use an index -------------------------------------------------------------


def index_used(store: ContextStore, command: dict[str, Any]) -> list[str] | None:
    """The key fields of the index a find would use, or None when it scans the collection."""
    explained = store.db.command("explain", command)
    plan = explained["queryPlanner"]["winningPlan"]
    if isinstance(plan, list):
        # nx-27017 reports SQLite's plan: "SEARCH contexts USING INDEX idx_... (...)", or "SCAN contexts"
        # for a read of the whole table (even "SCAN ... USING INDEX"); "SCAN json_each" walks an `$in` list.
        details = " ".join(step["detail"] for step in plan)
        found = re.search(r"SEARCH contexts USING (?:COVERING )?INDEX (\S+)", details)
        if found is None or "SCAN contexts" in details:
            return None
        name = found.group(1)
    else:
        # MongoDB: the IXSCAN stage somewhere under the winning plan.
        stages = [plan]
        name = ""
        while stages:
            stage = stages.pop()
            if stage.get("stage") == "IXSCAN":
                name = stage["indexName"]
            stages += [s for s in (stage.get("inputStage"), *stage.get("inputStages", [])) if s]
        if not name:
            return None
    if name in ("idx_contexts_id", "_id_"):
        return ["_id"]
    return [field for field, _ in store.contexts.index_information()[name]["key"]]


def index_keys(name: str) -> list[str]:
    model = next(m for m in CONTEXT_INDEXES if m.document["name"] == name)
    return list(model.document["key"])


def as_find(command: dict[str, Any]) -> dict[str, Any]:
    """The find that an update's, a count's or an aggregate's $match would run, to explain it."""
    if "query" in command:
        return {"find": "contexts", "filter": command["query"]}
    if "updates" in command:
        return {"find": "contexts", "filter": command["updates"][0]["q"]}
    if "pipeline" in command:
        return {"find": "contexts", "filter": command["pipeline"][0]["$match"]}
    return {k: v for k, v in command.items() if k in ("find", "filter", "sort", "limit")}


@pytest.fixture
def queue(watched: ContextStore, commands: Commands) -> ContextStore:
    """A store holding 300 pending contexts of mixed priority, its commands so far forgotten."""
    watched.submit([{"payload": {"n": i}, "priority": i % 101} for i in range(300)])
    commands.events.clear()
    return watched


def test_the_claim_find_reads_the_pending_contexts_through_the_claim_index(
    queue: ContextStore, commands: Commands
) -> None:
    queue.claim(10, "loop")
    find = next(c for c in commands.on("find") if "sort" in c)
    assert find["sort"] == {"due": 1}
    assert index_used(queue, as_find(find)) == index_keys("queue_order")


def dates_in(value: Any) -> list[dt.datetime]:
    if isinstance(value, dt.datetime):
        return [value]
    if isinstance(value, dict):
        return [d for v in value.values() for d in dates_in(v)]
    if isinstance(value, list):
        return [d for v in value for d in dates_in(v)]
    return []


def test_the_claim_find_compares_no_dates(queue: ContextStore, commands: Commands) -> None:
    # nx-27017 compares a date in Python, row by row over every pending context (the plan still
    # names the index); it compares a number in SQL.
    queue.claim(10, "loop")
    find = next(c for c in commands.on("find") if "sort" in c)
    assert dates_in(find["filter"]) == []


def test_a_claim_among_tenants_reads_each_one_through_the_claim_index(
    watched: ContextStore, commands: Commands
) -> None:
    for tenant in ("a", "b", "c"):
        watched.submit([{"payload": {"n": i}} for i in range(20)], tenant=tenant)
    commands.clear()
    assert len(watched.claim(24, "loop")) == 24  # three tenants visited, about 8 contexts each
    finds = [c for c in commands.on("find") if "sort" in c]
    assert sorted(f["filter"]["tenant"]["$eq"] for f in finds) == ["a", "b", "c"]
    assert all(index_used(watched, as_find(find)) == index_keys("queue_order") for find in finds)


def test_the_claim_update_uses_the_id_index(queue: ContextStore, commands: Commands) -> None:
    queue.claim(10, "loop")
    (update,) = commands.on("update")
    assert index_used(queue, as_find(update)) == ["_id"]


def test_reading_a_lease_back_finds_its_ids_by_the_id_index(queue: ContextStore, commands: Commands) -> None:
    claim = queue.claim(10, "loop")
    commands.events.clear()
    queue.held(claim)
    (by_token,) = commands.on("find")
    assert index_used(queue, as_find(by_token)) == ["_id"]


def test_batch_counts_match_through_the_batch_status_index(queue: ContextStore, commands: Commands) -> None:
    queue.counts(queue.batches.find_one()["_id"])  # type: ignore[index]
    counts = commands.on("count")
    assert len(counts) == len(Status)
    # nx-27017 cannot explain a count; its query runs as this find does.
    assert all(index_used(queue, as_find(count)) == index_keys("batch_status") for count in counts)


def test_queue_lengths_count_each_level_of_each_queue_through_the_claim_index(
    queue: ContextStore, commands: Commands
) -> None:
    lengths = queue.queue_length()
    assert sum(lengths.values()) == 300
    counts = commands.on("count")
    assert len(counts) == len(queue.levels)  # one queue: one count per level
    assert all(index_used(queue, as_find(count)) == index_keys("queue_order") for count in counts)


def test_renew_finds_the_lease_by_the_id_index(queue: ContextStore, commands: Commands) -> None:
    claim = queue.claim(10, "loop")
    commands.events.clear()
    queue.renew(claim)
    (update,) = commands.on("update")
    assert index_used(queue, as_find(update)) == ["_id"]


def test_reap_expired_finds_processing_contexts_through_a_status_index(queue: ContextStore, commands: Commands) -> None:
    queue.claim(10, "loop")
    commands.events.clear()
    queue.reap_expired(max_attempts=3)
    updates = commands.on("update")
    assert len(updates) == 2
    for update in updates:
        # The status-led index: processing contexts are few, however many wait.
        assert index_used(queue, as_find(update)) == index_keys("finished")


def test_settling_finds_each_context_by_id(queue: ContextStore, commands: Commands) -> None:
    claim = queue.claim(10, "loop")
    commands.events.clear()
    queue.complete(claim, dict.fromkeys(claim.ids, 1))
    (update,) = commands.on("update")
    assert index_used(queue, as_find(update)) == ["_id"]


def test_results_read_the_batch_through_a_batch_led_index(queue: ContextStore, commands: Commands) -> None:
    list(queue.iter_results(queue.batches.find_one()["_id"]))  # type: ignore[index]
    find = commands.on("find")[-1]
    assert index_used(queue, as_find(find)) in (index_keys("results"), index_keys("batch_status"))


def test_stats_read_the_window_through_the_finished_index_comparing_no_dates(
    queue: ContextStore, commands: Commands
) -> None:
    claim = queue.claim(10, "loop")
    queue.complete(claim, dict.fromkeys(claim.ids, 1))
    commands.events.clear()
    queue.stats()
    filters = [as_find(c)["filter"] for c in commands.on("count") + commands.on("aggregate")]
    windowed = [f for f in filters if "finished_ms" in f]
    assert len(windowed) >= 3  # completed, failed, the percentiles' sample
    for query in windowed:
        assert index_used(queue, {"find": "contexts", "filter": query}) == index_keys("finished")
        assert dates_in(query) == []
