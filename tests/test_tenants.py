"""Tenants: a claim shares its batch among the tenants with work, by weight, within a priority level,
and no tenant holds more than `limits.tenant_in_flight` contexts processing across every loop."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Commands, Invoke, Loop, json_lines, small_run, until
from distributed import Client

from ctxbatch import Pipeline
from ctxbatch.errors import SubmitError
from ctxbatch.io import ContextStore, TenantShares
from ctxbatch.io.tenants import MIN_SHARE, TENANTS_PER_CLAIM
from ctxbatch.monitoring.database import OTHER_TENANTS, TENANT_LABELS

CLUSTER = {"n_workers": 1, "threads_per_worker": 2}


def payloads(n: int, **fields: Any) -> list[dict[str, Any]]:
    return [{"payload": {"i": i}, **fields} for i in range(n)]


def tenants_of(store: ContextStore, ids: list[str]) -> Counter[str]:
    return Counter(store.get_context(i)["tenant"] for i in ids)


# -- sharing a claim -------------------------------------------------------------------------


def test_a_claim_shares_its_batch_equally_among_the_tenants_with_work(store: ContextStore) -> None:
    store.submit(payloads(200), tenant="big")
    store.submit(payloads(200), tenant="other")
    assert tenants_of(store, store.claim(20, "loop").ids) == {"big": 10, "other": 10}


def test_a_small_tenant_is_done_within_its_share_beside_a_large_one(store: ContextStore) -> None:
    # Given a tenant with a thousand contexts waiting, then one with thirty
    store.submit(payloads(1000), tenant="large")
    small = store.submit(payloads(30), tenant="small")
    # When claims of 20 run one after another
    claims = 0
    while store.counts(small)["pending"]:
        claim = store.claim(20, "loop")
        store.complete(claim, dict.fromkeys(claim.ids, 1))
        claims += 1
    # Then the small tenant took half of each batch: done in 3 claims, not after the large one's 50
    assert claims == 3
    assert store.counts(small)["completed"] == 30


def test_weights_share_a_claim_in_proportion(store: ContextStore) -> None:
    store.submit(payloads(100), tenant="gold")
    store.submit(payloads(100), tenant="basic")
    shares = TenantShares(weights={"gold": 3})
    assert tenants_of(store, store.claim(20, "loop", shares=shares).ids) == {"gold": 15, "basic": 5}


def test_what_a_tenant_cannot_use_goes_to_the_others(store: ContextStore) -> None:
    store.submit(payloads(100), tenant="busy")
    store.submit(payloads(3), tenant="quiet")
    assert tenants_of(store, store.claim(20, "loop").ids) == {"busy": 17, "quiet": 3}


def test_contexts_of_no_tenant_share_like_a_tenant(store: ContextStore) -> None:
    store.submit(payloads(100))
    store.submit(payloads(100), tenant="named")
    assert tenants_of(store, store.claim(10, "loop").ids) == {None: 5, "named": 5}


def test_a_more_urgent_level_goes_first_whoever_holds_it(store: ContextStore) -> None:
    store.submit(payloads(50, priority=0), tenant="urgent")
    store.submit(payloads(50, priority=90), tenant="patient")
    claim = store.claim(20, "loop")
    assert tenants_of(store, claim.ids) == {"urgent": 20}


def test_every_tenant_gets_its_turn_when_more_wait_than_a_claim_visits(store: ContextStore) -> None:
    names = [f"t{n:02d}" for n in range(3 * TENANTS_PER_CLAIM)]
    for name in names:
        store.submit(payloads(2 * MIN_SHARE), tenant=name)
    seen: Counter[str] = Counter()
    for _ in range(3):
        seen += tenants_of(store, store.claim(TENANTS_PER_CLAIM * MIN_SHARE, "loop").ids)
    assert seen == dict.fromkeys(names, MIN_SHARE)


def test_a_small_claim_visits_fewer_tenants(watched: ContextStore, commands: Commands) -> None:
    for n in range(20):
        watched.submit(payloads(10), tenant=f"t{n:02d}")
    watched.claim(8, "loop")  # the first claim counts the tenants
    commands.clear()
    assert tenants_of(watched, watched.claim(8, "loop").ids) == {"t02": 4, "t03": 4}
    assert len([f for f in commands.on("find") if "sort" in f]) == 2


def test_a_claim_among_many_tenants_costs_a_bounded_number_of_finds(watched: ContextStore, commands: Commands) -> None:
    for n in range(50):
        watched.submit(payloads(4), tenant=f"t{n:02d}")
    watched.claim(40, "loop")  # the first claim counts the tenants
    commands.clear()
    assert len(watched.claim(40, "loop")) == 40
    # One find per tenant visited, and once more for those that may have more: never one per tenant.
    assert len(commands.on("find")) <= 2 * TENANTS_PER_CLAIM


def test_the_first_tenant_of_a_queue_is_claimed_soon(store: ContextStore) -> None:
    store.submit(payloads(5))
    assert len(store.claim(5, "loop")) == 5  # the census saw no tenant
    store.submit(payloads(5), tenant="newcomer")
    # The census counts again soon after a claim came back short.
    until(lambda: len(store.claim(5, "loop")) == 5, "the new tenant's contexts claimed", timeout=10)


# -- the cap ---------------------------------------------------------------------------------


def test_each_tenant_holds_at_most_the_cap_processing(store: ContextStore) -> None:
    store.submit(payloads(50), tenant="a")
    store.submit(payloads(50), tenant="b")
    store.submit(payloads(50))  # of no tenant: not capped
    shares = TenantShares(in_flight=3)
    first = tenants_of(store, store.claim(20, "loop", shares=shares).ids)
    assert first == {"a": 3, "b": 3, None: 14}
    second = tenants_of(store, store.claim(20, "loop", shares=shares).ids)
    assert second == {None: 20}


def test_tenants_at_their_cap_do_not_hold_the_others_back(store: ContextStore) -> None:
    names = [f"t{n:02d}" for n in range(TENANTS_PER_CLAIM + 4)]
    for name in names:
        store.submit(payloads(3), tenant=name)
    shares = TenantShares(in_flight=1)
    first = tenants_of(store, store.claim(100, "loop", shares=shares).ids)
    second = tenants_of(store, store.claim(100, "loop", shares=shares).ids)
    assert first + second == dict.fromkeys(names, 1)
    assert len(store.claim(100, "loop", shares=shares)) == 0


def test_a_tenant_under_its_cap_again_is_claimed_again(store: ContextStore) -> None:
    store.submit(payloads(10), tenant="capped")
    shares = TenantShares(in_flight=2)
    claim = store.claim(10, "loop", shares=shares)
    assert len(claim) == 2
    store.complete(claim, dict.fromkeys(claim.ids, 1))
    assert len(store.claim(10, "loop", shares=shares)) == 2


CAPPED_RUN = {
    **small_run(batch_size=4, max_parallel_batches=3),
    "limits": {"tenant_in_flight": 2},
    "dask": {"dashboard_address": None, "n_workers": 1, "threads_per_worker": 4, "processes": False},
}


def overlap(calls: list[dict[str, float]]) -> int:
    """The most calls that ran at the same time."""
    edges = sorted([(c["start"], 1) for c in calls] + [(c["end"], -1) for c in calls])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_a_tenant_cap_holds_across_two_loops(store: ContextStore, loops: Callable[..., Loop], tmp_path: Path) -> None:
    # Given a capped tenant's contexts and another's, each call taking a while and noting when it ran
    calls = tmp_path / "calls.jsonl"

    def timed(n: int, who: str | None) -> list[dict[str, Any]]:
        return [{"payload": {"i": i, "who": who, "sleep": 0.2, "calls_file": str(calls)}} for i in range(n)]

    store.submit(timed(16, "capped"), tenant="capped")
    other = store.submit(timed(16, None))
    # When two `ctxbatch run` processes, each able to run several at once, work the queue
    started = [loops(CAPPED_RUN, "tests.engines:timed_call", "--until-empty") for _ in range(2)]
    for loop in started:
        _, err = loop.communicate(timeout=120)
        assert loop.returncode == 0, err
    # Then never more than two of the capped tenant's contexts ran at once, while the other's ran beside them
    ran = [json.loads(line) for line in calls.read_text().splitlines()]
    capped = [c for c in ran if c["who"] == "capped"]
    assert len(capped) == 16 and overlap(capped) <= 2
    assert store.counts(other)["completed"] == 16
    assert overlap([c for c in ran if c["who"] is None]) > 2


# -- where a tenant is given -------------------------------------------------------------------


def test_a_record_names_its_tenant_and_the_submission_the_others(store: ContextStore) -> None:
    batch = store.submit([{"payload": {}, "tenant": "own"}, {"payload": {}}], tenant="default-one")
    assert sorted(row["tenant"] for row in store.iter_results(batch)) == ["default-one", "own"]


@pytest.mark.parametrize("tenant", ["", "x" * 65, 7])
def test_a_bad_tenant_is_refused_naming_the_record(store: ContextStore, tenant: Any) -> None:
    with pytest.raises(SubmitError) as refused:
        store.submit([{"payload": {}}, {"payload": {}, "tenant": tenant}])
    assert (refused.value.index, refused.value.field) == (1, "tenant")
    assert store.batches.count_documents({}) == 0


def test_submit_takes_a_tenant_on_the_command_line(ctxbatch: Invoke, store: ContextStore, tmp_path: Path) -> None:
    result = ctxbatch("submit", "--tenant", "acme", json_lines(tmp_path / "in.jsonl", payloads(2)))
    assert result.exit_code == 0, result.stderr
    assert [row["tenant"] for row in store.iter_results(result.stdout.strip())] == ["acme", "acme"]
    too_long = ctxbatch("submit", "--tenant", "x" * 65, json_lines(tmp_path / "in.jsonl", payloads(2)))
    assert too_long.exit_code != 0 and "tenant" in too_long.stderr and "Traceback" not in too_long.stderr


def test_the_bulk_route_takes_a_tenant(api: httpx.Client, store: ContextStore) -> None:
    accepted = api.post("/api/contexts/bulk?tenant=acme", json=[{"payload": {}}, {"payload": {}, "tenant": "own"}])
    assert accepted.status_code == 202, accepted.text
    batch_id = accepted.json()["batch_id"]
    assert sorted(row["tenant"] for row in store.iter_results(batch_id)) == ["acme", "own"]
    status = api.get(f"/api/batches/{batch_id}").json()
    assert status["tenants"]["acme"]["pending"] == 1 and status["tenants"]["own"]["total"] == 1
    assert api.get("/api/stats?tenant=own").json()["queue_length"]["medium"] == 1
    refused = api.post("/api/contexts/bulk", json=[{"payload": {}, "tenant": "x" * 65}])
    assert refused.status_code == 422
    assert refused.json()["problems"][0]["field"] == "tenant"


# -- seeing tenants ----------------------------------------------------------------------------


def test_a_batch_status_counts_its_contexts_per_tenant(store: ContextStore, ctxbatch: Invoke) -> None:
    batch = store.submit([{"payload": {}, "tenant": "a"}, {"payload": {}, "tenant": "b"}, {"payload": {}}])
    claim = store.claim(3, "loop")
    store.complete(claim, {i: {} for i in claim.ids if store.get_context(i)["tenant"] == "a"})
    tenants = store.batch_status(batch)["tenants"]
    assert tenants["a"]["completed"] == 1 and tenants["b"]["processing"] == 1 and tenants[""]["total"] == 1
    assert "tenants" not in store.batch_status(store.submit(payloads(1)))
    shown = ctxbatch("status", batch)
    assert "tenant a: total 1  completed 1" in shown.stdout and "tenant (none): total 1" in shown.stdout


def test_stats_of_one_tenant(store: ContextStore, ctxbatch: Invoke) -> None:
    store.submit(payloads(3, priority=0), tenant="a")
    store.submit(payloads(5, priority=0), tenant="b")
    claim = store.claim(8, "loop")
    store.complete(claim, {i: {} for i in claim.ids if store.get_context(i)["tenant"] == "a"})
    found = store.stats(tenant="a")
    assert (found["completed"], sum(found["queue_length"].values()), found["in_flight"]) == (3, 0, 0)
    assert store.stats(tenant="b")["in_flight"] == 5
    shown = ctxbatch("stats", "--tenant", "b", "--json")
    assert shown.exit_code == 0, shown.stderr
    assert json.loads(shown.stdout)["in_flight"] == 5


def test_a_pipeline_runs_a_small_tenant_beside_a_large_one(store: ContextStore, client: Client) -> None:
    store.submit(payloads(300), tenant="large")
    small = store.submit(payloads(30), tenant="small")
    report = Pipeline("echo", small_run(batch_size=20), store, client).run(max_contexts=60)
    assert report.completed == 60
    assert store.counts(small)["completed"] == 30


def test_metrics_label_tenants_only_when_they_are_in_use(api: httpx.Client, store: ContextStore) -> None:
    store.submit(payloads(2))
    assert "ctxbatch_tenant_queue_length" not in api.get("/metrics").text
    for n in range(TENANT_LABELS + 2):
        store.submit(payloads(n + 1), tenant=f"t{n:02d}")
    text = api.get("/metrics").text
    labelled = [line for line in text.splitlines() if line.startswith("ctxbatch_tenant_queue_length{")]
    # The TENANT_LABELS tenants with the most waiting, the two smallest summed: bounded, whatever their number.
    assert len({line.split('tenant="')[1].split('"')[0] for line in labelled}) == TENANT_LABELS + 1
    assert 'ctxbatch_tenant_queue_length{status="pending",tenant="t11"} 12.0' in text
    assert 'ctxbatch_tenant_queue_length{status="processing",tenant="t11"} 0.0' in text
    assert f'ctxbatch_tenant_queue_length{{status="pending",tenant="{OTHER_TENANTS}"}} 3.0' in text
