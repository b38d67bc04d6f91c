"""How the queue's reads grow with its size: claim, batch_status, queue_length and results pages.

For each size, one batch of that many contexts (~0.5 KB) is inserted directly (the documents a
submission stores, `sort_id` included), then on the same server:
  claim p95: `claim(1000)` then `complete` of it, repeated --claims times (claim time should stay flat);
  batch_status and queue_length: the monitoring reads, medians;
  results page: the first page of 1,000 against the last (a deep page; a key range, not a skip).
The loop's own RSS is ctxbatch's process's peak (ru_maxrss) after the size is done.

    python benchmarks/scale.py [--sizes 20000,200000] [--claims 20] [--mongo-uri URI]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from typing import Any

from _common import server  # benchmarks/ is on sys.path when run as a script
from bson import ObjectId

from ctxbatch.io import ContextStore
from ctxbatch.io.schema import context_document, utcnow, validate_requests
from ctxbatch.io.views import page_cursor

PAGE = 1000
CHUNK = 10_000


def fill(store: ContextStore, size: int) -> str:
    """One batch of `size` pending contexts, inserted in chunks as submit stores them."""
    store.ensure_indexes()
    batch_id, now = str(ObjectId()), utcnow()
    for start in range(0, size, CHUNK):
        records = [{"payload": {"i": i, "text": "x" * 450}} for i in range(start, min(size, start + CHUNK))]
        requests = validate_requests(records)
        documents = [context_document(r, str(ObjectId()), batch_id, now, start + i) for i, r in enumerate(requests)]
        store.contexts.insert_many(documents, ordered=False)
    store.batches.insert_one({"_id": batch_id, "name": None, "total": size, "created_at": now, "updated_at": now})
    return batch_id


def timed(action: Callable[[], Any], times: int = 5) -> list[float]:
    seconds = []
    for _ in range(times):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return seconds


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def measure(uri: str, size: int, claims: int) -> dict[str, float]:
    store = ContextStore(uri, f"bench_scale_{size}")
    store.client.drop_database(store.db.name)
    start = time.perf_counter()
    batch_id = fill(store, size)
    figures = {"fill_s": time.perf_counter() - start}
    claim_times: list[float] = []
    for _ in range(claims):
        began = time.perf_counter()
        claim = store.claim(PAGE, "bench")
        claim_times.append(time.perf_counter() - began)
        store.complete(claim, dict.fromkeys(claim.ids, 1))
    figures["claim_p95_ms"] = p95(claim_times) * 1000
    figures["claim_median_ms"] = statistics.median(claim_times) * 1000
    figures["batch_status_ms"] = statistics.median(timed(lambda: store.batch_status(batch_id))) * 1000
    figures["queue_length_ms"] = statistics.median(timed(store.queue_length)) * 1000
    first = timed(lambda: store.results_page(batch_id, limit=PAGE))
    deep_cursor = page_cursor(size - PAGE)
    deep = timed(lambda: store.results_page(batch_id, limit=PAGE, cursor=deep_cursor))
    figures["first_page_ms"] = statistics.median(first) * 1000
    figures["deep_page_ms"] = statistics.median(deep) * 1000
    figures["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    store.client.drop_database(store.db.name)
    store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,200000", help="Comma-separated queue sizes.")
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--mongo-uri")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with server(args.mongo_uri) as (uri, _):
        rows = [(size, measure(uri, size, args.claims)) for size in sizes]
    keys = list(rows[0][1])
    print("| contexts | " + " | ".join(keys) + " |")
    print("| ---: |" + " ---: |" * len(keys))
    for size, figures in rows:
        print(f"| {size:,} | " + " | ".join(f"{figures[k]:.1f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
