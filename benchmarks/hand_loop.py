"""The loop a user writes by hand (issue 22's baseline), as a function and as a whole command.

Find 1,000 pending ids by priority, `update_many` them to processing under an owner, find them back,
a list comprehension, one unordered `bulk_write` of `UpdateOne`; filters with explicit `$eq` (a bare
value scans on nx-27017). Its engine is ctxbatch's `echo`, written inline: a script of its own
imports pymongo and nothing of ctxbatch.

    python benchmarks/hand_loop.py MONGO_URI DATABASE   # prints the loop's seconds
"""

from __future__ import annotations

import sys
import time
from typing import Any

from pymongo import MongoClient, UpdateOne


def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "n": len(payload)}


def hand_loop(uri: str, database: str) -> float:
    """Process the database's pending contexts; the seconds it took."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    contexts = client[database]["contexts"]
    me = "hand"
    start = time.perf_counter()
    while True:
        pending = contexts.find({"status": {"$eq": "pending"}}, {"_id": 1}).sort("priority", 1).limit(1000)
        ids = [d["_id"] for d in pending]
        if not ids:
            break
        contexts.update_many(
            {"_id": {"$in": ids}, "status": {"$eq": "pending"}}, {"$set": {"status": "processing", "owner": me}}
        )
        claimed = contexts.find({"_id": {"$in": ids}, "owner": {"$eq": me}, "status": {"$eq": "processing"}})
        results = [(d["_id"], echo(d["payload"])) for d in claimed]
        contexts.bulk_write(
            [
                UpdateOne({"_id": cid, "owner": {"$eq": me}}, {"$set": {"status": "completed", "result": r}})
                for cid, r in results
            ],
            ordered=False,
        )
    took = time.perf_counter() - start
    client.close()
    return took


if __name__ == "__main__":
    print(f"{hand_loop(sys.argv[1], sys.argv[2]):.3f}")
