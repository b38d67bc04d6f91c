"""Priority aging: each `aging_seconds` of waiting makes a context one priority more urgent, through a
claim key (`due`) fixed at submit from the aging its queue's loop recorded; none is strict priority."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from conftest import small_run, until
from distributed import Client
from pymongo import ASCENDING, IndexModel

from ctxbatch import Pipeline
from ctxbatch.config import load_config
from ctxbatch.errors import ConfigError
from ctxbatch.io import ContextStore, utcnow
from ctxbatch.io.schema import (
    RETIRED_CONTEXT_INDEXES,
    STRICT_PRIORITY_MS,
    claim_due,
    context_document,
    epoch_ms,
    validate_requests,
)

CLUSTER = {"n_workers": 1, "threads_per_worker": 1}


def one(priority: int, tag: str) -> list[dict[str, Any]]:
    return [{"payload": {"tag": tag}, "priority": priority}]


def tags(store: ContextStore, ids: list[str]) -> list[str]:
    return [store.get_context(i)["payload"]["tag"] for i in ids]


def after(moment: dt.datetime, seconds: float) -> None:
    """Returns once the clock has passed `moment` + `seconds` (polled, so that later submissions are later)."""
    until(lambda: utcnow() > moment + dt.timedelta(seconds=seconds), "the clock to move on", timeout=10, every=0.01)


def test_without_aging_the_most_urgent_goes_first_however_long_the_other_waited(store: ContextStore) -> None:
    store.submit(one(90, "old-90"))
    after(utcnow(), 0.2)
    store.submit(one(0, "new-0") * 3)
    assert tags(store, store.claim(4, "loop").ids) == ["new-0", "new-0", "new-0", "old-90"]


def test_an_aged_priority_90_context_goes_before_newer_priority_0_ones(store: ContextStore) -> None:
    # Given a queue aging one priority per millisecond, and a priority-90 context submitted first
    store.order_queues(["default"], aging_seconds=0.001)
    store.submit(one(90, "old-90"))
    submitted = utcnow()
    # When priority-0 contexts arrive more than 90 x 1 ms later, and one before that
    after(submitted, 0.2)
    store.submit(one(0, "new-0") * 3)
    # Then the priority-90 context, aged past them, is claimed first
    assert tags(store, store.claim(4, "loop").ids) == ["old-90", "new-0", "new-0", "new-0"]


def test_a_context_not_yet_aged_enough_waits(store: ContextStore) -> None:
    store.order_queues(["default"], aging_seconds=3600)
    store.submit(one(90, "old-90"))
    store.submit(one(0, "new-0"))
    assert tags(store, store.claim(1, "loop").ids) == ["new-0"]


def test_aging_zero_is_oldest_first(store: ContextStore) -> None:
    store.order_queues(["default"], aging_seconds=0)
    store.submit(one(100, "first"))
    store.submit(one(0, "second"))
    assert tags(store, store.claim(2, "loop").ids) == ["first", "second"]


def test_a_retried_context_keeps_its_place(store: ContextStore) -> None:
    store.order_queues(["default"], aging_seconds=0.001)
    store.submit(one(90, "old-90"))
    after(utcnow(), 0.2)
    claim = store.claim(1, "loop")
    store.fail(claim, {claim.ids[0]: {"type": "E", "message": "again", "traceback": ""}}, retry_at=utcnow())
    store.submit(one(0, "new-0"))
    assert tags(store, store.claim(2, "loop").ids) == ["old-90", "new-0"]


def test_a_change_of_aging_orders_what_is_submitted_after_it(store: ContextStore) -> None:
    waiting = store.submit(one(50, "strict-50"))
    due_before = store.contexts.find_one({"batch_id": waiting})["due"]  # type: ignore[index]
    assert store.order_queues(["default"], aging_seconds=0) == ["default"]
    store.submit(one(100, "aged-100"))
    assert store.contexts.find_one({"batch_id": waiting})["due"] == due_before  # type: ignore[index]
    # Ordered strictly, a priority-50 context goes after every context aged since, as strict order would.
    assert tags(store, store.claim(2, "loop").ids) == ["aged-100", "strict-50"]


def test_a_loop_records_its_aging_for_its_queues(store: ContextStore, client: Client) -> None:
    settings = small_run(queues=["paid"], priorities={"aging_seconds": 30})
    Pipeline("echo", settings, store, client).run(until_empty=True)
    assert (store.queue_aging("paid"), store.queue_aging("default")) == (30, None)
    batch = store.submit(one(2, "x"), queue="paid")
    context = store.contexts.find_one({"batch_id": batch})
    assert context is not None
    assert context["due"] == claim_due(context["created_at"], 2, 30) == epoch_ms(context["created_at"]) + 60_000


def test_a_loop_with_priorities_off_orders_its_queue_oldest_first(store: ContextStore, client: Client) -> None:
    Pipeline("echo", small_run(priorities={"enabled": False}), store, client).run(until_empty=True)
    assert store.queue_aging() == 0


def test_aging_with_priorities_off_is_refused() -> None:
    with pytest.raises(ConfigError, match="aging_seconds"):
        load_config({"worker": {"priorities": {"enabled": False, "aging_seconds": 10}}})


def test_an_older_database_is_ordered_strictly_and_its_old_indexes_go(mongo_uri: str, database: str) -> None:
    # Given a database from before `due` and tenants, claimed through queue_claim and queue_claim_fifo
    # (and the claim index of just before, apart from the levels' index)
    old = ContextStore(mongo_uri, database)
    old.contexts.create_indexes(
        [
            IndexModel([("queue", 1), ("status", 1), ("priority", 1), ("created_at", 1)], name="queue_claim"),
            IndexModel([("queue", 1), ("status", ASCENDING), ("created_at", 1)], name="queue_claim_fifo"),
            IndexModel([("queue", 1), ("status", 1), ("tenant", 1), ("due", 1)], name="queue_due"),
        ]
    )
    now = utcnow()
    requests = validate_requests([{"payload": {"tag": f"p{p}"}, "priority": p} for p in (70, 5, 40)])
    for n, request in enumerate(requests):
        document = context_document(request, f"c{n}", "old-batch", now - dt.timedelta(seconds=n), n, "default")
        del document["due"], document["tenant"]
        old.contexts.insert_one(document)
    try:
        # When a current store starts on it
        store = ContextStore(mongo_uri, database)
        store.ensure_indexes()
        # Then every context has a strict-priority `due` and no tenant, and the old indexes are gone
        for found in store.contexts.find():
            assert found["due"] == found["priority"] * STRICT_PRIORITY_MS + epoch_ms(found["created_at"])
            assert found["tenant"] == ""
        # By fields: nx-27017 names an index after its fields.
        fields = {tuple(f for f, _ in index["key"]) for index in store.contexts.index_information().values()}
        assert not fields & set(RETIRED_CONTEXT_INDEXES.values())
        assert ("queue", "status", "tenant", "due", "priority", "created_at") in fields
        assert tags(store, store.claim(3, "loop").ids) == ["p5", "p40", "p70"]
    finally:
        old.client.drop_database(database)
        old.close()
