"""Fair and timely claims: tenants' shares, priority aging, and what a claim costs among many tenants.

One process, one embedded server (or --mongo-uri), one LocalCluster (1 worker process, 2 threads)
shared by every loop; each loop is `ctxbatch.Pipeline("echo", ...)` in a thread, on a fresh database,
with fixed batches of --batch contexts, two in flight. Times come from the contexts themselves
(`started_at`, `finished_ms`); a batch's duration is that of one lease (first start to last finish).

(a) Two tenants, same priority, submitted through a store of their own: tenant A submits --contexts,
    the loop runs ten of A's batches, then tenant B submits --small. B's time to finish (its submit
    acknowledged -> its last context finished) against B alone on an empty queue (target <= 1.5x +
    one batch), and Jain's fairness index of A's and B's throughputs from B's first claim to B's last
    finish (target >= 0.95).
(b) Aging, `aging_seconds: 1`: priority-0 work keeps the loop busy for --aging-minutes (topped up so
    that about ten batches always wait) while priority-90 contexts arrive every 10 s for the first
    half: the longest wait of a priority-90 context (created -> claimed; target <= 90 s + one batch's
    duration), beside the wait of the priority-0 work itself: a priority-90 context goes just before
    the priority-0 ones submitted 90 s after it, so it waits 90 s plus what they wait.
(c) A claim's cost (`store.claim(--claim-size)`, timed, then explained) with --claim-contexts pending
    spread over --tenants tenants, against the same number of one tenant's (target <= 2x): the median
    and the mean of --claims claims (the mean includes the census of tenants, counted every second or so).

    python benchmarks/fairness.py [--contexts 50000] [--small 500] [--repeat 3] [--aging-minutes 3]
        [--claim-contexts 100000] [--tenants 1000] [--claim-size 100] [--claims 100] [--batch 100]
        [--only a|b|c] [--mongo-uri URI]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _common import arguments, server  # benchmarks/ is on sys.path when run as a script
from distributed import Client, LocalCluster

from ctxbatch import ContextStore, Pipeline
from ctxbatch.io.schema import epoch_ms, utcnow

AGING_SECONDS = 1.0
URGENT, PATIENT = 0, 90
PATIENT_EVERY_SECONDS = 10.0


def settings(batch: int, **priorities: Any) -> dict[str, Any]:
    return {
        "worker": {
            "batch_size": batch,
            "dynamic_batch_sizing": False,
            "max_parallel_batches": 2,
            "batch_timeout_seconds": 0,
            "retry": {"context_retries": 0},
            "priorities": priorities,
        },
        "dask": {"dashboard_address": None},
    }


def records(n: int, **fields: Any) -> Iterator[dict[str, Any]]:
    return ({"payload": {"i": i, "text": "x" * 200}, **fields} for i in range(n))


@contextmanager
def running(store: ContextStore, client: Client, config: dict[str, Any]) -> Iterator[Pipeline]:
    """A loop on `store` in a thread until the block ends."""
    pipeline = Pipeline("echo", config, store, client)
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        yield pipeline
    finally:
        pipeline.stop(now=True)
        thread.join(60)


def wait_for(condition: Callable[[], bool], timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark's condition did not come true")
        time.sleep(0.05)


def loop_up(store: ContextStore) -> bool:
    """Whether the loop started: it records its queue's order first (io/ordering.py)."""
    return store.db["queues"].find_one({"_id": {"$eq": "default"}}) is not None


def completed_of(store: ContextStore, tenant: str) -> int:
    query = {"status": {"$eq": "completed"}, "tenant": {"$eq": tenant}}
    return int(store.db.command("count", "contexts", query=query)["n"])


def done(store: ContextStore, batch_id: str) -> bool:
    return store.counts(batch_id)["completed"] == store.counts(batch_id)["total"]


def finished_docs(store: ContextStore, match: dict[str, Any]) -> list[dict[str, Any]]:
    fields = {"started_at": 1, "finished_ms": 1, "lease": 1, "tenant": 1, "created_at": 1}
    return list(store.contexts.find({**match, "status": {"$eq": "completed"}}, fields))


def batch_seconds(docs: list[dict[str, Any]]) -> float:
    """The median duration of the batches (leases) these contexts ran in: first start to last finish."""
    spans: dict[str, list[int]] = {}
    for doc in docs:
        span = spans.setdefault(doc["lease"]["token"], [doc["finished_ms"], doc["finished_ms"]])
        span[0] = min(span[0], epoch_ms(doc["started_at"]))
        span[1] = max(span[1], doc["finished_ms"])
    return statistics.median((end - start) / 1000 for start, end in spans.values()) if spans else 0.0


def jain(*rates: float) -> float:
    """Jain's fairness index: 1 when every rate is equal, 1/n when one takes everything."""
    squares = sum(r * r for r in rates)
    return sum(rates) ** 2 / (len(rates) * squares) if squares else 1.0


# -- (a) two tenants -----------------------------------------------------------------------------


def small_alone(uri: str, database: str, client: Client, small: int, batch: int) -> dict[str, float]:
    store, submitter = ContextStore(uri, database), ContextStore(uri, database)
    with running(store, client, settings(batch)):
        wait_for(lambda: loop_up(store))
        start_ms = epoch_ms(utcnow())
        b = submitter.submit(records(small), tenant="B")
        acknowledged_ms = epoch_ms(utcnow())
        wait_for(lambda: done(store, b))
    docs = finished_docs(store, {"batch_id": {"$eq": b}})
    last = max(d["finished_ms"] for d in docs)
    store.client.drop_database(database)
    return {"b_seconds": (last - acknowledged_ms) / 1000, "submit_seconds": (acknowledged_ms - start_ms) / 1000}


def beside_large(uri: str, database: str, client: Client, large: int, small: int, batch: int) -> dict[str, float]:
    store, submitter = ContextStore(uri, database), ContextStore(uri, database)
    submitter.submit(records(large), tenant="A")
    with running(store, client, settings(batch)):
        # A runs alone for a few batches, so B arrives at a loop busy with A's batches.
        wait_for(lambda: completed_of(store, "A") >= 10 * batch)
        b = submitter.submit(records(small), tenant="B")
        acknowledged_ms = epoch_ms(utcnow())
        wait_for(lambda: done(store, b))
    b_docs = finished_docs(store, {"batch_id": {"$eq": b}})
    first_start = min(epoch_ms(d["started_at"]) for d in b_docs)
    last = max(d["finished_ms"] for d in b_docs)
    window = {"finished_ms": {"$gte": first_start, "$lte": last}}
    a_docs = finished_docs(store, {**window, "tenant": {"$eq": "A"}})
    seconds = (last - first_start) / 1000
    b_in_window = [d for d in b_docs if d["finished_ms"] >= first_start]
    figures = {
        "b_seconds": (last - acknowledged_ms) / 1000,
        "b_first_claim_seconds": (first_start - acknowledged_ms) / 1000,
        "a_rate": len(a_docs) / seconds,
        "b_rate": len(b_in_window) / seconds,
        "jain": jain(len(a_docs) / seconds, len(b_in_window) / seconds),
        "batch_seconds": batch_seconds(a_docs + b_docs),
    }
    store.client.drop_database(database)
    return figures


def two_tenants(uri: str, client: Client, args: Any) -> str:
    alone, mixed = [], []
    for round_ in range(args.repeat):
        alone.append(small_alone(uri, f"bench_fair_alone_{round_}", client, args.small, args.batch))
        mixed.append(beside_large(uri, f"bench_fair_mixed_{round_}", client, args.contexts, args.small, args.batch))
        print(f"(a) round {round_ + 1}: alone {alone[-1]}, beside A {mixed[-1]}", file=sys.stderr)
    b_alone = statistics.median(r["b_seconds"] for r in alone)
    b_mixed = statistics.median(r["b_seconds"] for r in mixed)
    one_batch = statistics.median(r["batch_seconds"] for r in mixed)
    fairness = statistics.median(r["jain"] for r in mixed)
    rows = [
        ("B alone: submit acknowledged -> last finished", f"{b_alone:.2f} s", runs(alone, "b_seconds")),
        ("B beside A: submit acknowledged -> last finished", f"{b_mixed:.2f} s", runs(mixed, "b_seconds")),
        ("B beside A: submit acknowledged -> first claimed", med(mixed, "b_first_claim_seconds"), ""),
        ("one batch of A's and B's (median)", f"{one_batch:.2f} s", runs(mixed, "batch_seconds")),
        (
            "B beside A / (1.5 x B alone + one batch) (target <= 1)",
            f"{b_mixed / (1.5 * b_alone + one_batch):.2f}",
            "",
        ),
        ("B beside A / B alone", f"{b_mixed / b_alone:.2f}x", ""),
        ("A's and B's contexts/s while both had work", f"{med(mixed, 'a_rate')} / {med(mixed, 'b_rate')}", ""),
        ("Jain's index of those (target >= 0.95)", f"{fairness:.3f}", runs(mixed, "jain", "{:.3f}")),
    ]
    title = (
        f"(a) tenant A {args.contexts:,} then tenant B {args.small:,}, batches of {args.batch}, "
        f"medians of {args.repeat}"
    )
    return table(title, rows)


# -- (b) aging -----------------------------------------------------------------------------------


def aging(uri: str, client: Client, args: Any) -> str:
    database = "bench_fair_aging"
    store, submitter = ContextStore(uri, database), ContextStore(uri, database)
    backlog = 10 * args.batch  # with less the loop ran dry between top-ups, and priority 90 went at once
    seconds = 60.0 * args.aging_minutes
    patient: list[str] = []
    with running(store, client, settings(args.batch, aging_seconds=AGING_SECONDS)):
        wait_for(lambda: store.queue_aging() == AGING_SECONDS)  # the loop recorded its aging
        start = time.monotonic()
        next_patient = start
        while time.monotonic() - start < seconds:
            now = time.monotonic()
            if now >= next_patient and now - start < seconds / 2:
                patient.append(submitter.submit(records(1, priority=PATIENT)))
                next_patient += PATIENT_EVERY_SECONDS
            waiting = submitter.claimable(backlog + 1)
            if waiting <= backlog:
                submitter.submit(records(backlog + args.batch - waiting, priority=URGENT))
            time.sleep(0.1)
    waits = []
    for batch_id in patient:
        (doc,) = store.contexts.find({"batch_id": {"$eq": batch_id}}, {"created_at": 1, "started_at": 1})
        started = doc.get("started_at")
        waits.append(None if started is None else (started - doc["created_at"]).total_seconds())
    urgent = finished_docs(store, {"priority": {"$eq": URGENT}})
    one_batch = batch_seconds(urgent)
    urgent_waits = sorted((d["started_at"] - d["created_at"]).total_seconds() for d in urgent)
    throughput = len(urgent) / seconds
    store.client.drop_database(database)
    claimed = [w for w in waits if w is not None]
    longest = max(claimed) if len(claimed) == len(waits) else float("inf")
    rows = [
        ("priority-90 contexts submitted / claimed", f"{len(waits)} / {len(claimed)}", ""),
        ("longest wait of a priority-90 context", f"{longest:.1f} s", ", ".join(f"{w:.1f}" for w in claimed)),
        ("median wait", f"{statistics.median(claimed):.1f} s" if claimed else "-", ""),
        ("one batch (median)", f"{one_batch:.2f} s", ""),
        (
            "a priority-0 context's wait, median / p95 / max",
            f"{statistics.median(urgent_waits):.2f} / {urgent_waits[int(0.95 * len(urgent_waits))]:.2f} / "
            f"{urgent_waits[-1]:.2f} s",
            "",
        ),
        (
            "longest wait / (90 s + one batch) (target <= 1)",
            f"{longest / (PATIENT * AGING_SECONDS + one_batch):.2f}",
            "",
        ),
        ("priority-0 contexts/s meanwhile", f"{throughput:,.0f}", ""),
        (
            "longest wait - 90 s, against a priority-0 context's median wait",
            f"{longest - PATIENT * AGING_SECONDS:.2f} s / {statistics.median(urgent_waits):.2f} s",
            "",
        ),
    ]
    title = (
        f"(b) aging_seconds {AGING_SECONDS:g}: priority 0 saturating the loop for {args.aging_minutes} min, "
        f"priority 90 every {PATIENT_EVERY_SECONDS:g} s for the first half, batches of {args.batch}"
    )
    return table(title, rows)


# -- (c) a claim's cost ----------------------------------------------------------------------------


def claim_costs(uri: str, database: str, contexts: int, tenants: int, size: int, claims: int) -> dict[str, Any]:
    store = ContextStore(uri, database)
    if tenants > 1:
        store.submit({"payload": {"i": i}, "tenant": f"t{i % tenants:04d}"} for i in range(contexts))
    else:
        store.submit(records(contexts))
    times = []
    for _ in range(claims):
        start = time.perf_counter()
        claim = store.claim(size, "bench")
        times.append(time.perf_counter() - start)
        assert len(claim) == size
    find = {
        "queue": {"$eq": "default"},
        "status": {"$eq": "pending"},
        "tenant": {"$eq": "t0001" if tenants > 1 else ""},
    }
    explained = store.db.command("explain", {"find": "contexts", "filter": find, "sort": {"due": 1}, "limit": size})
    plan = explained["queryPlanner"]["winningPlan"]
    store.client.drop_database(database)
    return {"times": times, "plan": plan}


def claim_cost(uri: str, args: Any) -> str:
    one = claim_costs(uri, "bench_fair_claim_one", args.claim_contexts, 1, args.claim_size, args.claims)
    many = claim_costs(uri, "bench_fair_claim_many", args.claim_contexts, args.tenants, args.claim_size, args.claims)
    print(f"(c) plans: one tenant {one['plan']}; {args.tenants} tenants {many['plan']}", file=sys.stderr)
    rows = []
    for name, found in (("1 tenant", one), (f"{args.tenants:,} tenants", many)):
        times = found["times"]
        rows.append(
            (
                f"claim of {args.claim_size} among {name}",
                f"{statistics.median(times) * 1000:.1f} ms median, {statistics.mean(times) * 1000:.1f} ms mean",
                f"p90 {sorted(times)[int(0.9 * len(times))] * 1000:.1f} ms",
            )
        )
    ratio = statistics.median(many["times"]) / statistics.median(one["times"])
    mean_ratio = statistics.mean(many["times"]) / statistics.mean(one["times"])
    rows.append(("ratio, many / one (target <= 2)", f"{ratio:.2f} median, {mean_ratio:.2f} mean", ""))
    title = f"(c) {args.claims} claims with {args.claim_contexts:,} contexts pending"
    return table(title, rows)


# -- the table -------------------------------------------------------------------------------------


def med(rows: list[dict[str, float]], key: str, form: str = "{:.2f}") -> str:
    return form.format(statistics.median(r[key] for r in rows))


def runs(rows: list[dict[str, float]], key: str, form: str = "{:.2f}") -> str:
    return ", ".join(form.format(r[key]) for r in rows)


def table(title: str, rows: list[tuple[str, str, str]]) -> str:
    lines = [title, "", "| figure | value | runs |", "| --- | ---: | --- |"]
    lines += [f"| {name} | {value} | {each} |" for name, value, each in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    given = list(sys.argv[1:] if argv is None else argv)
    only = given[given.index("--only") + 1] if "--only" in given else "abc"
    if "--only" in given:
        del given[given.index("--only") : given.index("--only") + 2]
    args = arguments(
        __doc__,
        contexts=50_000,
        repeat=3,
        argv=given,
        small=500,
        aging_minutes=3,
        claim_contexts=100_000,
        tenants=1000,
        claim_size=100,
        claims=100,
        batch=100,
    )
    with server(args.mongo_uri) as (uri, _):
        parts = []
        if "c" in only:
            parts.append(claim_cost(uri, args))
        if "a" in only or "b" in only:
            with (
                LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster,
                Client(cluster) as client,
            ):
                if "a" in only:
                    parts.append(two_tenants(uri, client, args))
                if "b" in only:
                    parts.append(aging(uri, client, args))
        print("\n\n".join(parts))


if __name__ == "__main__":
    main()
