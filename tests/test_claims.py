"""Claims against the real embedded server: settle round trips, leases, reaping, fencing, concurrency."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Commands
from pymongo.errors import AutoReconnect
from wire import command, reply_losing_proxy

from ctxbatch.config import WorkerSettings
from ctxbatch.io import Claim, ContextStore, utcnow
from ctxbatch.io.schema import epoch_ms
from ctxbatch.pipeline.leases import LeaseKeeper

ERROR = {"type": "ValueError", "message": "bad row", "traceback": ""}


def submit(store: ContextStore, n: int, **extra: Any) -> str:
    return store.submit([{"payload": {"n": i}, **extra} for i in range(n)])


def expire(*claims: Claim) -> None:
    """Wait until these claims' leases have run out."""
    latest = max(c.expires_at for c in claims)
    time.sleep(max(0.0, (latest - utcnow()).total_seconds()) + 0.05)


# -- claim and settle ------------------------------------------------------------------------


def test_a_claim_marks_its_contexts_processing_under_one_lease(store: ContextStore) -> None:
    submit(store, 5)
    claim = store.claim(3, "loop-a")
    assert len(claim) == 3
    for cid in claim.ids:
        context = store.get_context(cid)
        assert context["status"] == "processing"
        assert context["started_at"] is not None
    assert {store.contexts.find_one({"_id": cid})["lease"]["token"] for cid in claim.ids} == {claim.token}  # type: ignore[index]


def test_a_claim_takes_the_most_urgent_contexts_first(store: ContextStore) -> None:
    store.submit([{"payload": {"p": p}, "priority": p} for p in (70, 5, 50, 0, 100)])
    claim = store.claim(3, "loop")
    assert [store.get_context(cid)["priority"] for cid in claim.ids] == [0, 5, 50]


def test_a_claim_takes_the_oldest_first_within_a_priority(store: ContextStore) -> None:
    older = store.submit([{"payload": {"batch": "older"}}])
    store.submit([{"payload": {"batch": "newer"}}])
    assert store.claim(1, "loop").batch_ids == [older]


def test_a_queue_ordered_oldest_first_ignores_priority(store: ContextStore) -> None:
    store.order_queues(["default"], aging_seconds=0)  # what a loop with `priorities: {enabled: false}` does
    older = store.submit([{"payload": {}, "priority": 100}])
    store.submit([{"payload": {}, "priority": 0}])
    assert store.claim(1, "loop").batch_ids == [older]


def test_a_claim_on_an_empty_queue_is_empty(store: ContextStore) -> None:
    submit(store, 2)
    store.claim(2, "loop")
    assert len(store.claim(5, "loop")) == 0


def test_complete_stores_results_and_ends_the_lease(store: ContextStore) -> None:
    submit(store, 2)
    claim = store.claim(2, "loop")
    report = store.complete(claim, {cid: {"echo": cid} for cid in claim.ids})
    assert (report.written, report.lost, report.ok) == (2, [], True)
    for cid in claim.ids:
        context = store.get_context(cid)
        assert (context["status"], context["result"]) == ("completed", {"echo": cid})
        assert context["finished_at"] is not None
        assert "lease" not in context
    # The lease holds nothing any more: it cannot be renewed, and a second write changes nothing.
    assert store.renew(claim) == 0
    assert store.complete(claim, {cid: "again" for cid in claim.ids}).written == 0


def test_a_context_completed_at_the_first_try_has_one_attempt(store: ContextStore) -> None:
    submit(store, 1)
    claim = store.claim(1, "loop")
    store.complete(claim, {claim.ids[0]: "done"})
    assert store.get_context(claim.ids[0])["attempts"] == 1


def test_fail_without_retry_fails_the_context_for_good(store: ContextStore) -> None:
    submit(store, 1)
    claim = store.claim(1, "loop")
    report = store.fail(claim, {claim.ids[0]: ERROR})
    context = store.get_context(claim.ids[0])
    assert report.written == 1
    assert (context["status"], context["error"]) == ("failed", ERROR)
    assert len(store.claim(1, "loop")) == 0


def test_fail_with_a_retry_time_holds_the_context_back_until_then(store: ContextStore) -> None:
    submit(store, 1)
    claim = store.claim(1, "loop")
    retry_at = utcnow() + dt.timedelta(seconds=1)
    store.fail(claim, {claim.ids[0]: ERROR}, retry_at=retry_at)
    context = store.get_context(claim.ids[0])
    assert (context["status"], context["next_attempt_at"]) == ("pending", retry_at)
    assert len(store.claim(1, "loop")) == 0
    time.sleep(max(0.0, (retry_at - utcnow()).total_seconds()) + 0.05)
    again = store.claim(1, "loop")
    assert again.ids == claim.ids
    assert again.attempts[claim.ids[0]] == 2


def test_release_returns_contexts_unchanged_without_counting_the_try(store: ContextStore) -> None:
    submit(store, 2)
    claim = store.claim(2, "loop")
    report = store.release(claim)
    assert report.written == 2
    for cid in claim.ids:
        context = store.get_context(cid)
        assert (context["status"], context["attempts"]) == ("pending", 0)
    assert sorted(store.claim(2, "loop").ids) == sorted(claim.ids)


def test_a_partial_release_keeps_the_rest_of_the_claim(store: ContextStore) -> None:
    submit(store, 2)
    claim = store.claim(2, "loop")
    store.release(claim, [claim.ids[0]])
    assert store.get_context(claim.ids[1])["status"] == "processing"
    assert store.complete(claim, {claim.ids[1]: 1}).ok


def test_one_settle_completes_fails_and_releases_together(store: ContextStore) -> None:
    submit(store, 3)
    claim = store.claim(3, "loop")
    done, bad, back = claim.ids
    report = store.settle(claim, results={done: 1}, errors={bad: ERROR}, release=[back])
    assert report.written == 3
    assert [store.get_context(c)["status"] for c in claim.ids] == ["completed", "failed", "pending"]


def test_an_uncontended_claim_is_one_find_and_one_update(watched: ContextStore, commands: Commands) -> None:
    submit(watched, 1500)
    watched.wait_moved()
    commands.clear()
    claim = watched.claim(1000, "loop")
    assert len(claim) == 1000
    # The read back by lease token happens only when another loop took some in between. Besides, at
    # most every second, one seek for a named tenant with work (io/tenants.py): there is none.
    (find,) = [f for f in commands.on("find") if "sort" in f]
    assert find["sort"] == {"due": 1}
    assert all(f["filter"]["tenant"] == {"$gt": ""} and f["limit"] == 1 for f in commands.on("find") if f is not find)
    (update,) = commands.on("update")
    assert len(update["updates"]) == 1  # one conditional update_many over the ids found
    # Besides, at most once a second, one look for batches past their deadline, and every 0.2 s one
    # at the queue's document (whether a submission naming tenants arrived).
    others = [e.command for e in commands.events if e.command.get(e.command_name) != "contexts"]
    assert {(c.get("find"), tuple(c.get("filter", {}))) for c in others} <= {
        ("batches", ("deadline_ms",)),
        ("queues", ("_id",)),
    }


# -- leases: renew, reap, fence --------------------------------------------------------------


def test_renew_extends_the_lease_past_its_first_expiry(store: ContextStore) -> None:
    submit(store, 2)
    claim = store.claim(2, "loop", lease_seconds=0.3)
    assert store.renew(claim, lease_seconds=60) == 2
    time.sleep(0.4)
    assert store.reap_expired() == 0
    assert store.complete(claim, dict.fromkeys(claim.ids, 1)).ok


def test_the_lease_keeper_renews_only_claims_past_half_their_lease(store: ContextStore) -> None:
    # Given a loop's lease of 60 s, a claim just made with all of it and one with 20 s left
    submit(store, 4)
    fresh = store.claim(2, "loop", lease_seconds=60)
    late = store.claim(2, "loop", lease_seconds=20)
    keeper = LeaseKeeper(store, WorkerSettings(lease_seconds=60))

    def leases(claim: Claim) -> set[int]:
        return {d["lease"]["expires_ms"] for d in store.contexts.find({"_id": {"$in": claim.ids}})}

    before = leases(fresh)
    # When the keeper does its upkeep
    keeper.upkeep([fresh, late])
    # Then only the late claim was renewed (a renewal rewrites every context it holds), to a full lease
    assert leases(fresh) == before
    assert (late.expires_at - utcnow()).total_seconds() > 50
    assert leases(late) == {epoch_ms(late.expires_at)}


def test_reap_expired_returns_expired_contexts_to_the_queue(store: ContextStore) -> None:
    submit(store, 3)
    claim = store.claim(3, "loop", lease_seconds=0.2)
    expire(claim)
    assert store.reap_expired() == 3
    assert sorted(store.claim(3, "loop").ids) == sorted(claim.ids)


def test_reap_expired_leaves_live_leases_alone(store: ContextStore) -> None:
    submit(store, 2)
    store.claim(2, "loop", lease_seconds=60)
    assert store.reap_expired() == 0


def test_reap_expired_fails_contexts_out_of_attempts_with_lease_expired(store: ContextStore) -> None:
    submit(store, 2)
    claim = store.claim(2, "loop", lease_seconds=0.2)
    expire(claim)
    assert store.reap_expired(max_attempts=1) == 2
    for cid in claim.ids:
        context = store.get_context(cid)
        assert context["status"] == "failed"
        assert context["error"]["type"] == "LeaseExpired"
    assert len(store.claim(2, "loop")) == 0


@pytest.fixture
def stolen(store: ContextStore) -> tuple[Claim, Claim]:
    """Claim A's lease ran out and was reaped; claim B now holds the same contexts."""
    submit(store, 2)
    first = store.claim(2, "loop-a", lease_seconds=0.2)
    expire(first)
    store.reap_expired()
    second = store.claim(2, "loop-b")
    assert sorted(second.ids) == sorted(first.ids)
    return first, second


def snapshot(store: ContextStore, claim: Claim) -> list[dict[str, Any]]:
    return [store.contexts.find_one({"_id": cid}) for cid in sorted(claim.ids)]  # type: ignore[misc]


def test_a_late_complete_with_a_stolen_lease_changes_nothing(store: ContextStore, stolen: tuple[Claim, Claim]) -> None:
    late, _ = stolen
    before = snapshot(store, late)
    report = store.complete(late, dict.fromkeys(late.ids, "late"))
    assert (report.written, report.lost) == (0, sorted(late.ids))
    assert snapshot(store, late) == before


def test_a_late_fail_with_a_stolen_lease_changes_nothing(store: ContextStore, stolen: tuple[Claim, Claim]) -> None:
    late, _ = stolen
    before = snapshot(store, late)
    report = store.fail(late, dict.fromkeys(late.ids, ERROR))
    assert (report.written, report.lost) == (0, sorted(late.ids))
    assert snapshot(store, late) == before


def test_a_late_release_with_a_stolen_lease_changes_nothing(store: ContextStore, stolen: tuple[Claim, Claim]) -> None:
    late, _ = stolen
    before = snapshot(store, late)
    report = store.release(late)
    assert (report.written, report.lost) == (0, sorted(late.ids))
    assert snapshot(store, late) == before


def test_a_late_renew_with_a_stolen_lease_holds_nothing(store: ContextStore, stolen: tuple[Claim, Claim]) -> None:
    late, _ = stolen
    assert store.renew(late) == 0


def test_the_new_owner_writes_after_a_late_write(store: ContextStore, stolen: tuple[Claim, Claim]) -> None:
    late, current = stolen
    store.complete(late, dict.fromkeys(late.ids, "late"))
    report = store.complete(current, dict.fromkeys(current.ids, "current"))
    assert (report.written, report.lost) == (2, [])
    assert {store.get_context(cid)["result"] for cid in current.ids} == {"current"}


def test_a_late_release_of_reaped_contexts_reports_them_lost(store: ContextStore) -> None:
    # Reaped, the contexts are pending under no lease, as released ones are: the release must still tell
    submit(store, 2)
    claim = store.claim(2, "loop-a", lease_seconds=0.2)
    expire(claim)
    assert store.reap_expired() == 2
    report = store.release(claim)
    assert (report.written, sorted(report.lost)) == (0, sorted(claim.ids))


def test_a_reaped_context_counts_both_tries(store: ContextStore, stolen: tuple[Claim, Claim]) -> None:
    _, current = stolen
    assert set(current.attempts.values()) == {2}


# -- two claimers never share a context ------------------------------------------------------


def claim_until_empty(store: ContextStore, owner: str, size: int) -> list[str]:
    """Claim and complete until nothing is claimable (an empty claim may only have lost to the other claimer)."""
    taken: list[str] = []
    while True:
        claim = store.claim(size, owner)
        if claim:
            taken += claim.ids
            store.complete(claim, dict.fromkeys(claim.ids, owner))
        elif not store.claimable(1):
            return taken


def assert_partition(all_ids: set[str], first: list[str], second: list[str]) -> None:
    assert first and second, "both claimers should have won some contexts"
    assert set(first).isdisjoint(second)
    assert len(first) == len(set(first)) and len(second) == len(set(second))
    assert set(first) | set(second) == all_ids


def test_two_threads_never_claim_the_same_context(mongo_uri: str, store: ContextStore) -> None:
    all_ids = set(store.results(submit(store, 600))["id"])
    stores = [ContextStore(mongo_uri, store.database_name) for _ in range(2)]
    taken: dict[int, list[str]] = {}
    start = threading.Barrier(2)

    def run(i: int) -> None:
        start.wait()
        taken[i] = claim_until_empty(stores[i], f"thread-{i}", 7)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
    finally:
        for opened in stores:
            opened.close()
    assert_partition(all_ids, taken[0], taken[1])


# Run by each claimer process: wait for the go signal, claim until the queue is empty.
CLAIMER = """
import json, sys, time
from pathlib import Path
from ctxbatch.io import ContextStore
uri, database, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
store = ContextStore(uri, database)
store.ping()
Path(f"{out}.ready").touch()
while not (out.parent / "go").exists():
    time.sleep(0.01)
taken = []
while True:
    claim = store.claim(7, out.stem)
    if claim:
        taken += claim.ids
        store.complete(claim, dict.fromkeys(claim.ids, out.stem))
    elif not store.claimable(1):  # an empty claim may only have lost to the other claimer
        break
out.write_text(json.dumps(taken))
"""


def run_claimer_processes(uri: str, database: str, folder: Path) -> list[list[str]]:
    """Two claimer processes on one queue, let go together; each returns the ids it claimed."""
    outputs = [folder / f"claimer-{i}.json" for i in range(2)]
    processes = [subprocess.Popen([sys.executable, "-c", CLAIMER, uri, database, str(out)]) for out in outputs]
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{out}.ready").exists() for out in outputs):
            assert time.monotonic() < deadline, "the claimer processes did not start"
            assert all(p.poll() is None for p in processes), "a claimer process exited early"
            time.sleep(0.05)
        (folder / "go").touch()
        for process in processes:
            assert process.wait(timeout=90) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [json.loads(out.read_text()) for out in outputs]


def test_two_processes_never_claim_the_same_context(mongo_uri: str, store: ContextStore, tmp_path: Path) -> None:
    all_ids = set(store.results(submit(store, 600))["id"])
    first, second = run_claimer_processes(mongo_uri, store.database_name, tmp_path)
    assert_partition(all_ids, first, second)


# -- a claim whose answer was lost -----------------------------------------------------------


def test_a_claim_whose_reply_was_lost_is_given_back_by_the_next_claim(mongo_uri: str, database: str) -> None:
    # Given a store behind a connection that loses the reply to the claim's update
    with reply_losing_proxy(mongo_uri) as proxy:
        store = ContextStore(proxy.uri, database)
        batch_id = submit(store, 5)
        proxy.lose_reply_to(command("update", "contexts"))
        # When the claim's update is applied but its answer never comes
        with pytest.raises(AutoReconnect):
            store.claim(5, "loop-a", lease_seconds=300)
        assert proxy.lost.is_set()
        assert store.batch_status(batch_id)["counts"]["processing"] == 5
        # Then the next claim gives back what the lost one took, its try uncounted, and takes it again
        again = store.claim(5, "loop-a", lease_seconds=300)
        assert len(again) == 5
        assert set(again.attempts.values()) == {1}
        assert {store.get_context(cid)["attempts"] for cid in again.ids} == {1}
        store.client.drop_database(database)
        store.close()
