"""`ctxbatch demo`: a few thousand sample contexts of mixed priority, some bound to fail."""

from __future__ import annotations

import random
from typing import Any

WORDS = [
    "batch", "context", "priority", "lease", "partition", "worker", "engine", "result", "retry", "queue",
    "dask", "mongo", "throughput", "latency", "payload", "schedule", "drain", "fence", "claim", "bulk",
]  # fmt: skip

DEMO_CONFIG: dict[str, Any] = {
    "engine": "text",
    "worker": {
        "batch_size": 250,
        "dynamic_batch_sizing": True,
        "min_batch_size": 50,
        "max_batch_size": 1000,
        "max_parallel_batches": 3,
        "lease_seconds": 60,
        "target_batch_seconds": 2,
        "retry": {"batch_retries": 2, "backoff_seconds": [0.5, 1], "context_retries": 1},
    },
    "dask": {"n_workers": 2, "threads_per_worker": 1},
}


def sample_contexts(count: int = 3000, fail_share: float = 0.02, seed: int = 27017) -> list[dict[str, Any]]:
    """Texts of mixed priority; `fail_share` of them carry `"fail": true`, which the text engine refuses."""
    rng = random.Random(seed)
    contexts = []
    for i in range(count):
        payload: dict[str, Any] = {"doc": i, "text": " ".join(rng.choices(WORDS, k=rng.randint(20, 120)))}
        if rng.random() < fail_share:
            payload["fail"] = True
        contexts.append({"payload": payload, "priority": rng.choice((0, 5, 10, 30, 50, 80, 100))})
    return contexts
