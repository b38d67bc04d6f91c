"""The embedded server's CPU for each operation of a context's life, per 1,000 contexts.

One embedded nx-27017 server of its own; its CPU read from /proc/<pid>/task/*/schedstat (ns) just
before and just after each command, from a pymongo command listener in this one thread, so every
command is measured alone and named by the step that sent it. The contexts are issue 22's shape
(~450-byte payloads, priority i % 101), claimed, loaded and settled in batches of --batch through
the store, as a loop and its partitions do, one step at a time:

  (1) the life of a context: claim (find, update), load, settle (contexts, batch touch), a lease
      renewal, a sizing decision; the hand-written loop of benchmarks/pipeline.py beside it;
  (2) each index's upkeep: the claim and settle again with that index dropped (the difference);
  (3) the reads a run and its monitoring make now and then (a /metrics scrape, an alerts
      evaluation, stats), per call, with half the contexts done.

    python benchmarks/server_cost.py [--contexts 20000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _common import server  # benchmarks/ is on sys.path when run as a script
from pymongo import ASCENDING, MongoClient, UpdateOne, monitoring

from ctxbatch.config import Settings
from ctxbatch.engines.trivial import echo
from ctxbatch.io import ContextStore, embedded
from ctxbatch.io.schema import CONTEXT_INDEXES
from ctxbatch.monitoring.alerts import AlertEvaluator
from ctxbatch.monitoring.database import DatabaseCollector

CONTEXT_KEYS = {index.document["name"]: index.document["key"] for index in CONTEXT_INDEXES}
TEXT = "lorem ipsum dolor sit amet " * 16


def records(count: int) -> list[dict[str, Any]]:
    """Issue 22's contexts: ~450-byte payloads, every priority."""
    return [{"payload": {"text": TEXT, "n": i}, "priority": i % 101} for i in range(count)]


Spent = dict[tuple[str, str, str], int]  # server CPU ns by (step, command, collection)


class ServerClock:
    """The server process's CPU nanoseconds so far, summed over its threads."""

    def __init__(self, pid: int) -> None:
        self.tasks = Path(f"/proc/{pid}/task")

    def __call__(self) -> int:
        total = 0
        for task in self.tasks.iterdir():
            with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
                total += int((task / "schedstat").read_text().split()[0])
        return total


class Meter(monitoring.CommandListener):
    """Server CPU per (step, command, collection), each command measured alone."""

    def __init__(self, clock: ServerClock) -> None:
        self.clock = clock
        self.step = ""
        self.spent: dict[tuple[str, str, str], int] = defaultdict(int)
        self._at: dict[int, tuple[tuple[str, str, str], int]] = {}

    @contextlib.contextmanager
    def measuring(self, step: str) -> Iterator[None]:
        self.step = step
        try:
            yield
        finally:
            self.step = ""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        key = (self.step, event.command_name, target if isinstance(target, str) else "")
        self._at[event.request_id] = (key, self.clock())

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        key, at = self._at.pop(event.request_id, (("", "", ""), 0))
        if key[0]:
            self.spent[key] += self.clock() - at

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._at.pop(event.request_id, None)

    def take(self) -> dict[tuple[str, str, str], int]:
        spent, self.spent = dict(self.spent), defaultdict(int)
        return spent


def life(store: ContextStore, meter: Meter, batch: int) -> Spent:
    """Claim, load and settle every context, as a loop and its partitions do, a step at a time."""
    store.wait_moved()
    meter.take()
    while True:
        with meter.measuring("claim"):
            claim = store.claim(batch, "bench")
        if not claim.ids:
            break
        with meter.measuring("load"):
            rows = store.load(claim)
        with meter.measuring("renew (when due: none in a short run)"):
            store.renew(claim)
        with meter.measuring("settle"):
            store.settle(claim, results={row["_id"]: echo(row["payload"]) for row in rows})
        with meter.measuring("sizing decision"):
            store.record_decision("bench", {"size": batch, "reason": "fixed"})
    return meter.take()


def hand_loop(uri: str, database: str, meter: Meter, count: int, batch: int) -> Spent:
    """benchmarks/pipeline.py's hand-written loop on the same documents, one index (status, priority)."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, event_listeners=[meter])
    contexts = client[database]["contexts"]
    contexts.create_index([("status", ASCENDING), ("priority", ASCENDING)])
    contexts.insert_many(
        [{"_id": f"c{i}", "status": "pending", **r} for i, r in enumerate(records(count))], ordered=False
    )
    meter.take()
    while True:
        with meter.measuring("claim"):
            pending = contexts.find({"status": {"$eq": "pending"}}, {"_id": 1}).sort("priority", 1).limit(batch)
            ids = [d["_id"] for d in pending]
            if not ids:
                break
            contexts.update_many(
                {"_id": {"$in": ids}, "status": {"$eq": "pending"}}, {"$set": {"status": "processing", "owner": "h"}}
            )
        with meter.measuring("load"):
            claimed = list(contexts.find({"_id": {"$in": ids}, "owner": {"$eq": "h"}, "status": {"$eq": "processing"}}))
        with meter.measuring("settle"):
            contexts.bulk_write(
                [
                    UpdateOne(
                        {"_id": d["_id"], "owner": {"$eq": "h"}},
                        {"$set": {"status": "completed", "result": echo(d["payload"])}},
                    )
                    for d in claimed
                ],
                ordered=False,
            )
    client.close()
    return meter.take()


def reads(store: ContextStore, meter: Meter, calls: int) -> dict[str, float]:
    """Server ms per call of what monitoring reads while a run goes on."""
    collector = DatabaseCollector(store)
    alerts = Settings().monitoring
    evaluator = AlertEvaluator(store, alerts.rules(), alerts.window_seconds, "bench")
    each: dict[str, Callable[[], object]] = {
        "a /metrics scrape (database gauges)": lambda: list(collector.collect()),
        "an alerts evaluation": evaluator.evaluate,
        "stats (300 s window)": store.stats,
    }
    spent = {}
    for name, call in each.items():
        with meter.measuring(name):
            for _ in range(calls):
                call()
        spent[name] = sum(meter.take().values()) / calls / 1e6
    return spent


Fresh = Callable[..., ContextStore]


def table_of_life(rows: Spent, hand: Spent, per: float) -> None:
    print("| step | command | ctxbatch | hand-written loop |\n| --- | --- | ---: | ---: |")
    for key in sorted({*rows, *hand}, key=lambda k: -rows.get(k, 0)):
        ours, theirs = rows.get(key, 0) * per / 1e6, hand.get(key, 0) * per / 1e6
        print(f"| {key[0]} | {key[1]} {key[2]} | {ours:.1f} | {theirs:.1f} |")
    # A renewal is measured for what it costs when one happens; a run of batches shorter than half a
    # lease makes none (pipeline/leases.py), so the life's total leaves it out.
    total = sum(v for k, v in rows.items() if not k[0].startswith("renew")) * per / 1e6
    hand_total = sum(hand.values()) * per / 1e6
    print(f"| **a life, no renewal** | | **{total:.1f}** | **{hand_total:.1f}** ({total / hand_total:.2f}x) |")


def table_of_indexes(rows: Spent, fresh: Fresh, meter: Meter, args: argparse.Namespace, per: float) -> None:
    print("| index | claim + settle | without it | its upkeep |\n| --- | ---: | ---: | ---: |")
    steps = ("claim", "settle")
    base = sum(v for k, v in rows.items() if k[0] in steps) * per / 1e6
    for name in CONTEXT_KEYS:
        without = life(fresh(f"cost_no_{name}", dropped=name), meter, args.batch)
        cost = sum(v for k, v in without.items() if k[0] in steps) * per / 1e6
        print(f"| {name} | {base:.1f} | {cost:.1f} | {base - cost:.1f} |")


def table_of_reads(fresh: Fresh, meter: Meter, args: argparse.Namespace) -> None:
    store = fresh("cost_reads")
    store.wait_moved()
    for _ in range(args.contexts // 2 // args.batch):
        claim = store.claim(args.batch, "bench")
        store.settle(claim, results={cid: {} for cid in claim.ids})
    print("| read | ms per call |\n| --- | ---: |")
    for name, ms in reads(store, meter, 5).items():
        print(f"| {name} | {ms:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--sections", default="123", help="which of the tables (1), (2) and (3) to measure")
    args = parser.parse_args()
    per = 1_000 / args.contexts
    with server(None) as (uri, _):
        pid = embedded.status().pid
        assert pid is not None, "the embedded server is not running"
        meter = Meter(ServerClock(pid))
        monitoring.register(meter)

        def fresh(database: str, dropped: str | None = None) -> ContextStore:
            store = ContextStore(uri, database)
            store.ensure_indexes()
            if dropped is not None:
                # Found by its keys: nx-27017 names an index after its fields, whatever name it was given.
                keys = list(CONTEXT_KEYS[dropped].items())
                found = [name for name, ix in store.contexts.index_information().items() if ix["key"] == keys]
                store.contexts.drop_index(found[0])
                assert len(store.contexts.index_information()) == len(CONTEXT_KEYS), "the index was not dropped"
            store.submit(records(args.contexts))
            return store

        rows = life(fresh("cost_life"), meter, args.batch)
        if "1" in args.sections:
            hand = hand_loop(uri, "cost_hand", meter, args.contexts, args.batch)
            print(f"\n(1) server CPU ms per 1,000 contexts, {args.contexts:,} contexts in batches of {args.batch:,}\n")
            table_of_life(rows, hand, per)
        if "2" in args.sections:
            print("\n(2) each index's upkeep: claim + settle with it dropped, server CPU ms per 1,000 contexts\n")
            table_of_indexes(rows, fresh, meter, args, per)
        if "3" in args.sections:
            print("\n(3) reads now and then, server CPU ms per call, half of the contexts done\n")
            table_of_reads(fresh, meter, args)


if __name__ == "__main__":
    main()
