"""The store's listing and paging methods the HTTP API stands on (and the CLI and Python API may use)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from conftest import Commands

from ctxbatch.errors import InvalidCursor
from ctxbatch.io import ContextStore


def _plan(store: ContextStore, command: dict[str, Any]) -> str:
    collection = store.db[command["find"]]
    cursor = collection.find(command.get("filter", {})).sort(list(command.get("sort", {}).items()))
    return json.dumps(cursor.explain(), default=str)


def _assert_index_backed(plan: str) -> None:
    # COLLSCAN on MongoDB; "SCAN <collection>" (not "SEARCH ... USING INDEX") on nx-27017.
    assert "COLLSCAN" not in plan
    assert "SCAN contexts" not in plan and "SCAN batches" not in plan


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_results_pages_cover_the_batch_in_iter_results_order(store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {"i": i}} for i in range(10)])
    ids: list[str] = []
    cursor = None
    while True:
        page, cursor = store.results_page(batch_id, limit=4, cursor=cursor)
        ids += [row["id"] for row in page]
        if cursor is None:
            break

    assert ids == [row["id"] for row in store.iter_results(batch_id)]


def test_a_page_that_ends_the_batch_has_no_cursor(store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {}}] * 4)

    page, cursor = store.results_page(batch_id, limit=4)

    assert (len(page), cursor) == (4, None)


def test_the_results_page_query_uses_an_index(watched: ContextStore, commands: Commands) -> None:
    store = watched
    batch_id = store.submit([{"payload": {}}] * 5)
    _, cursor = store.results_page(batch_id, limit=2)
    commands.clear()

    store.results_page(batch_id, limit=2, cursor=cursor)

    (command,) = commands.on("find")
    _assert_index_backed(_plan(store, command))


@pytest.mark.parametrize("cursor", ["", "!!!", _cursor("x5"), _cursor("o-1"), _cursor("o\u00b2"), _cursor("o1e3")])
def test_a_cursor_the_store_did_not_make_is_refused(store: ContextStore, cursor: str) -> None:
    batch_id = store.submit([{"payload": {}}])

    with pytest.raises(InvalidCursor):
        store.results_page(batch_id, cursor=cursor)


def test_a_page_needs_a_positive_limit(store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {}}])

    with pytest.raises(ValueError, match="limit"):
        store.results_page(batch_id, limit=0)


def test_batches_are_listed_newest_first_up_to_the_limit(store: ContextStore) -> None:
    ids = [store.submit([{"payload": {}}]) for _ in range(4)]

    listed = store.list_batches(limit=3)

    assert [b["batch_id"] for b in listed] == ids[::-1][:3]
    assert listed[0] == store.batch_status(ids[-1])


def test_batches_are_listed_by_status(store: ContextStore) -> None:
    kept, cancelled = store.submit([{"payload": {}}]), store.submit([{"payload": {}}])
    store.cancel(cancelled)

    assert [b["batch_id"] for b in store.list_batches("pending")] == [kept]
    assert [b["batch_id"] for b in store.list_batches("cancelled")] == [cancelled]
    assert store.list_batches("completed") == []


def test_listing_batches_uses_an_index(watched: ContextStore, commands: Commands) -> None:
    store = watched
    store.submit([{"payload": {}}])
    commands.clear()

    store.list_batches(limit=5)

    command = next(c for c in commands.on("find", "batches") if "sort" in c)
    _assert_index_backed(_plan(store, command))


def test_an_unknown_status_is_refused(store: ContextStore) -> None:
    with pytest.raises(ValueError):
        store.list_batches("done")


def test_a_deep_page_is_a_key_range_on_the_results_index_not_a_skip(watched: ContextStore, commands: Commands) -> None:
    store = watched
    batch_id = store.submit([{"payload": {"i": i}} for i in range(35)])
    cursor = None
    for _ in range(3):  # the fourth page of ten
        _, cursor = store.results_page(batch_id, limit=10, cursor=cursor)
    commands.clear()

    page, _ = store.results_page(batch_id, limit=10, cursor=cursor)

    (command,) = commands.on("find")
    assert "skip" not in command
    assert command["filter"]["sort_id"] == {"$gte": 30}
    assert [row["payload"]["i"] for row in page] == list(range(30, 35))
    plan = _plan(store, command)
    _assert_index_backed(plan)
    # An index bound on sort_id: "=? AND >?" on nx-27017's SQL plan, the `results` index on MongoDB.
    bound = "batch_id_sort_id (<expr>=? AND <expr>>?)" in plan or '"indexName": "results"' in plan
    assert bound and "SKIP" not in plan


def test_pages_hold_no_sort_key_and_start_where_the_last_ended(store: ContextStore) -> None:
    batch_id = store.submit([{"payload": {"i": i}} for i in range(7)])

    first, cursor = store.results_page(batch_id, limit=4, cursor=None)
    second, end = store.results_page(batch_id, limit=4, cursor=cursor)

    assert [row["payload"]["i"] for row in first + second] == list(range(7)) and end is None
    assert all("sort_id" not in row for row in first + second)


def test_a_batch_stored_without_sort_ids_is_numbered_on_its_first_page(store: ContextStore) -> None:
    # Given a batch as an earlier version stored it: no sort_id
    batch_id = store.submit([{"payload": {"i": i}} for i in range(5)])
    store.contexts.update_many({"batch_id": {"$eq": batch_id}}, {"$unset": {"sort_id": ""}})
    # When it is paged
    first, cursor = store.results_page(batch_id, limit=3)
    second, end = store.results_page(batch_id, limit=3, cursor=cursor)
    # Then every context comes once, in id order
    assert [row["id"] for row in first + second] == sorted(row["id"] for row in store.iter_results(batch_id))
    assert end is None
