"""The embedded server's CPU for a claim's update of 1,000 contexts, by how its filter spells the status.

`{"_id": {"$in": ids}, "status": S}` with S as `{"$in": ["pending"]}` (what the claim sent before),
`{"$gte": "pending", "$lte": "pending"}` (`io/schema.py`'s `of_status`, now) and `{"$eq": "pending"}`,
in turn over fresh chunks of 1,000 pending contexts in a store with ctxbatch's indexes; the server's
CPU (utime + stime from /proc) around each `update_many`. Medians per spelling.

    python benchmarks/status_filters.py [--contexts 30000] [--mongo-uri URI]
"""

from __future__ import annotations

import statistics
from typing import Any

from _common import arguments, cpu_seconds, server  # benchmarks/ is on sys.path when run as a script
from pipeline import fill
from pymongo import MongoClient

from ctxbatch.io import embedded

SPELLINGS: dict[str, dict[str, Any]] = {
    "$in: [pending] (before)": {"$in": ["pending"]},
    "[pending, pending] (of_status, now)": {"$gte": "pending", "$lte": "pending"},
    "$eq: pending": {"$eq": "pending"},
}


def main() -> None:
    args = arguments(__doc__, contexts=30_000, repeat=1)
    with server(args.mongo_uri) as (uri, _):
        pid = embedded.status().pid if uri == embedded.status().uri else None
        fill(uri, "bench_status_filters", args.contexts)
        client: MongoClient[dict[str, Any]] = MongoClient(uri)
        contexts = client["bench_status_filters"]["contexts"]
        ids = [d["_id"] for d in contexts.find({}, {"_id": 1})]
        costs: dict[str, list[float]] = {name: [] for name in SPELLINGS}
        names = list(SPELLINGS)
        for n, start in enumerate(range(0, len(ids) - 999, 1000)):
            name = names[n % len(names)]
            before = cpu_seconds(pid)
            changed = contexts.update_many(
                {"_id": {"$in": ids[start : start + 1000]}, "status": SPELLINGS[name]},
                {"$set": {"status": "processing"}},
            ).modified_count
            costs[name].append(cpu_seconds(pid) - before)
            assert changed == 1000, (name, changed)
        client.drop_database("bench_status_filters")
        client.close()
    print(f"{args.contexts:,} contexts, updates of 1,000; server CPU ms, median (each update)\n")
    print("| status filter | server CPU ms | each |\n| --- | ---: | --- |")
    for name, seconds in costs.items():
        each = ", ".join(f"{s * 1000:.0f}" for s in seconds)
        print(f"| `{name}` | {statistics.median(seconds) * 1000:.0f} | {each} |")


if __name__ == "__main__":
    main()
