"""Dynamic batch sizing against fixed sizes, on the real loop (issue 4).

One process, one embedded server (or --mongo-uri), one shared LocalCluster (1 worker, 2 threads, in
process), every configuration through `ctxbatch.Pipeline(...).run(until_empty=True)`, each into a
fresh database of the same size.

(1) Best size not known in advance: the `batched-call` engine, one simulated external call per
    partition costing 50 ms plus 2 ms per context. Fixed sizes 10, 50, 200, 1,000 and the dynamic
    sizer (bounds 10..2,000, starting at the seed's 10); throughput is contexts / the run's wall
    seconds, the median of --repeat runs. The dynamic sizer processes --contexts contexts, so its
    search is paid for inside the figure; a fixed size, whose rate is the same from its first batch,
    processes 100 batches' worth (at least 2,000, at most --contexts). The dynamic sizer runs three
    ways (issue 22): with `sizing_history: false` (as before history existed); with history on in a
    fresh database (nothing to start from yet: it searches from 10 and keeps what it learns); and
    right after that, in the same database with fresh contexts, starting from what it kept.
(2) Cost jump: the same 50 ms per call, and a per-context cost (read from the payload) of 1 ms for
    the first --jump-contexts contexts (claimed first: they are more urgent) and 10 ms for the next
    as many. The durations of the dynamic sizer's batches before and after the jump are compared
    with `target_batch_seconds`.

    python benchmarks/sizing.py [--contexts 20000] [--jump-contexts 8000] [--repeat 3] [--mongo-uri URI]
                                [--only best|jump]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from _common import server  # benchmarks/ is on sys.path when run as a script
from distributed import Client, LocalCluster
from pymongo import MongoClient

from ctxbatch import ContextStore, Pipeline
from ctxbatch.config import load_config
from ctxbatch.pipeline.engine import batch_engine
from ctxbatch.sizing import Decision, DynamicSizer, Observation, Plan, Readings

FIXED_SIZES = (10, 50, 200, 1000)
CALL_FIXED_MS = 50.0
CALL_PER_CONTEXT_MS = 2.0
JUMP_MS = (1.0, 10.0)  # per-context cost before and after the jump
# A few seconds per batch: short enough that a lease, a cancel or an urgent submission waits little,
# long enough not to cap (1) below the best fixed size. A batch's wall time (claim to written) includes
# its wait for the threads the other batch in flight holds: a batch of 1,000 takes ~2.8 s here.
TARGET_SECONDS = 3.0
# Two batches in flight for every configuration: one claims and writes while the other computes.
PARALLEL = 2
THREADS = 2  # the machine's cores; the engine sleeps, so threads are what bounds it
LAST_BATCHES = 10  # the batches after the jump whose durations are reported
MIN_FIXED_CONTEXTS = 2000

WORKER: dict[str, Any] = {
    "max_parallel_batches": PARALLEL,
    "batch_timeout_seconds": 0,
    "lease_seconds": 120,
    "target_batch_seconds": TARGET_SECONDS,
    "retry": {"context_retries": 0},
}


def fixed(size: int) -> dict[str, Any]:
    return {"worker": {**WORKER, "dynamic_batch_sizing": False, "batch_size": size}}


def dynamic(history: bool = True) -> dict[str, Any]:
    bounds = {"batch_size": 10, "min_batch_size": 10, "max_batch_size": 2000}
    return {"worker": {**WORKER, "dynamic_batch_sizing": True, "sizing_history": history, **bounds}}


# The dynamic sizer's three ways in (1); the last runs in the database the one before it left.
NO_HISTORY = "dynamic 10..2000, history off"
FIRST_HISTORY = "dynamic 10..2000, no history yet"
WITH_HISTORY = "dynamic 10..2000, history from the run above"
DYNAMIC_WAYS = {NO_HISTORY: dynamic(history=False), FIRST_HISTORY: dynamic(), WITH_HISTORY: dynamic()}


@batch_engine
def jump_call(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """One simulated call per partition: CALL_FIXED_MS plus each payload's own `ms`."""
    time.sleep((CALL_FIXED_MS + sum(p["ms"] for p in frame["payload"])) / 1000)
    return [{"ok": True} for _ in range(len(frame))]


@dataclass
class Batch:
    """One batch as the sizer saw it: planned (in claim order) and observed."""

    seq: int
    size: int
    known: int  # batches the sizer had observed when it planned this one
    observed: int = 0  # ... and when this one was observed (itself included)
    contexts: int = 0
    wall_seconds: float = 0.0
    first: int = 0  # position of its first context in claim order


class RecordingSizer(DynamicSizer):
    """The dynamic sizer, noting which plan each observation belongs to (the loop passes the plan's
    Readings object back in the Observation), so batches can be put in claim order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[Batch] = []
        self._by_readings: dict[int, tuple[Readings, Batch]] = {}

    def plan(self, readings: Readings) -> Plan:
        plan = super().plan(readings)
        batch = Batch(len(self.batches) + 1, plan.size, self.batches_observed)
        self.batches.append(batch)
        self._by_readings[id(readings)] = (readings, batch)  # the object is kept, so its id stays unique
        return plan

    def observe(self, observation: Observation) -> None:
        super().observe(observation)
        found = self._by_readings.get(id(observation.readings))
        if found is not None:
            batch = found[1]
            batch.contexts, batch.wall_seconds = observation.contexts, observation.wall_seconds
            batch.observed = self.batches_observed

    def observed(self) -> list[Batch]:
        """The batches that ran, in claim order, each with its first context's position."""
        ran = [b for b in self.batches if b.contexts]
        for batch, start in zip(ran, itertools.accumulate((b.contexts for b in ran), initial=0), strict=False):
            batch.first = start
        return ran


@dataclass
class Run:
    contexts: int
    seconds: float
    decisions: list[Decision]
    batches: list[Batch] = field(default_factory=list)  # the dynamic sizer's, in claim order

    @property
    def rate(self) -> float:
        return self.contexts / self.seconds

    @property
    def sizes(self) -> list[int]:
        return [d.size for d in self.decisions]


def run_once(
    uri: str,
    database: str,
    client: Client,
    engine: Any,
    config: dict[str, Any],
    records: list[dict[str, Any]],
    *,
    fresh: bool = True,
    keep_history: bool = False,
) -> Run:
    """One run into `database`: dropped first unless not `fresh`; dropped after, but for the sizer's
    history when `keep_history` (the next run then starts from it, with fresh contexts)."""
    admin: MongoClient[dict[str, Any]] = MongoClient(uri)
    if fresh:
        admin.drop_database(database)
    store = ContextStore(uri, database)
    try:
        store.submit(records)
        sizer = RecordingSizer(load_config(config).worker) if _is_dynamic(config) else None
        report = Pipeline(engine, config, store, client, sizer=sizer).run(until_empty=True)
        if report.completed != len(records):
            raise SystemExit(f"{database}: {report.completed} of {len(records)} contexts completed")
        return Run(len(records), report.wall_seconds, list(report.decisions), sizer.observed() if sizer else [])
    finally:
        if keep_history:
            for name in admin[database].list_collection_names():
                if name != "sizing_history":
                    admin[database].drop_collection(name)
        else:
            admin.drop_database(database)
        store.close()
        admin.close()


def _is_dynamic(config: dict[str, Any]) -> bool:
    return bool(config["worker"]["dynamic_batch_sizing"])


# -- (1) fixed sizes against the dynamic sizer ------------------------------------------------


def best_size(uri: str, client: Client, count: int, repeat: int) -> dict[str, list[Run]]:
    os.environ["CTXBATCH_CALL_FIXED_MS"] = str(CALL_FIXED_MS)
    os.environ["CTXBATCH_CALL_PER_CONTEXT_MS"] = str(CALL_PER_CONTEXT_MS)
    configs = {f"fixed {n}": fixed(n) for n in FIXED_SIZES} | DYNAMIC_WAYS
    counts = {f"fixed {n}": fixed_count(n, count) for n in FIXED_SIZES} | dict.fromkeys(DYNAMIC_WAYS, count)
    runs: dict[str, list[Run]] = {name: [] for name in configs}
    for round_ in range(repeat):
        # History off goes before the pair with history in even rounds, after it in odd ones.
        order = list(configs) if round_ % 2 == 0 else [n for n in configs if n != NO_HISTORY] + [NO_HISTORY]
        for i, name in enumerate(order):
            config = configs[name]
            records = [{"payload": {"i": i}} for i in range(counts[name])]
            shared = name in (FIRST_HISTORY, WITH_HISTORY)  # the second starts from what the first kept
            database = f"bench_sizing_{round_}_{'history' if shared else i}"
            run = run_once(
                uri,
                database,
                client,
                "batched-call",
                config,
                records,
                fresh=name != WITH_HISTORY,
                keep_history=name == FIRST_HISTORY,
            )
            runs[name].append(run)
            sizes = f" ({trajectory(run.sizes)})" if name in DYNAMIC_WAYS else ""
            print(f"round {round_ + 1}: {name}: {run.seconds:.2f} s, {run.rate:.0f}/s{sizes}", file=sys.stderr)
    return runs


def fixed_count(size: int, count: int) -> int:
    """A fixed size's rate is the same from its first batch to its last: 100 batches (at least
    MIN_FIXED_CONTEXTS contexts) measure it, and spare the small sizes minutes of run."""
    return min(count, max(MIN_FIXED_CONTEXTS, 100 * size))


def best_size_table(runs: dict[str, list[Run]]) -> str:
    rate = {name: statistics.median(r.rate for r in rs) for name, rs in runs.items()}
    fixed_names = [name for name in runs if name.startswith("fixed")]
    best = max(fixed_names, key=rate.__getitem__)
    dyn = NO_HISTORY
    lines = [
        f"(1) `batched-call` ({CALL_FIXED_MS:g} ms per call + {CALL_PER_CONTEXT_MS:g} ms per "
        f"context), {PARALLEL} batches in flight, {THREADS} threads, target {TARGET_SECONDS:g} s; "
        f"medians of {len(runs[dyn])} runs",
        "",
        "| sizing | contexts | contexts/s | runs contexts/s | batches | sizes used (median run) |",
        "| --- | ---: | ---: | --- | ---: | --- |",
    ]
    for name, rs in runs.items():
        middle = sorted(rs, key=lambda r: r.rate)[len(rs) // 2]
        every = ", ".join(f"{r.rate:.0f}" for r in rs)
        lines.append(
            f"| {name} | {middle.contexts:,} | {rate[name]:.0f} | {every} | {len(middle.sizes)} "
            f"| {trajectory(middle.sizes)} |"
        )
    lines += [
        "",
        f"dynamic, history off vs best fixed ({best}): {rate[dyn] / rate[best]:.2f}x (target >= 0.9x)",
        f"dynamic, history off vs fixed 10: {rate[dyn] / rate['fixed 10']:.2f}x (target >= 3x)",
        f"dynamic, no history yet vs history off: {rate[FIRST_HISTORY] / rate[dyn]:.2f}x (target: no worse); "
        f"median of the rounds' ratios {_round_ratio(runs[FIRST_HISTORY], runs[dyn]):.2f}x",
        f"dynamic, history from the run above vs best fixed ({best}): {rate[WITH_HISTORY] / rate[best]:.2f}x "
        f"(target >= 0.95x); median of the rounds' ratios {_round_ratio(runs[WITH_HISTORY], runs[best]):.2f}x",
    ]
    return "\n".join(lines)


def _round_ratio(these: list[Run], those: list[Run]) -> float:
    """The median over rounds of these' rate / those' rate in the same round (steadier under load)."""
    return statistics.median(a.rate / b.rate for a, b in zip(these, those, strict=True))


def trajectory(sizes: list[int]) -> str:
    """'10 x8, 20 x2, 80 x2, ...': each run of one size and its length."""
    return ", ".join(f"{size} x{len(list(group))}" for size, group in itertools.groupby(sizes))


# -- (2) the per-context cost jumps 10x -------------------------------------------------------


def cost_jump(uri: str, client: Client, count: int, repeat: int) -> list[Run]:
    # The cheap half is more urgent, so every loop claims it first; no context runs twice.
    records = [{"payload": {"i": i, "ms": JUMP_MS[0]}, "priority": 10} for i in range(count)]
    records += [{"payload": {"i": i, "ms": JUMP_MS[1]}, "priority": 60} for i in range(count)]
    runs = []
    for round_ in range(repeat):
        run = run_once(uri, f"bench_sizing_jump_{round_}", client, jump_call, dynamic(), records)
        runs.append(run)
        print(f"round {round_ + 1}: cost jump: {run.seconds:.2f} s", file=sys.stderr)
    return runs


def phases(run: Run, jump_at: int) -> dict[str, list[Batch]]:
    """Full batches of cheap contexts only; of expensive ones planned once the sizer had seen one
    (after); and the rest (transition: holding the jump, or planned before the sizer could know)."""
    full = [b for b in run.batches if b.contexts >= 0.9 * b.size]
    before = [b for b in full if b.first + b.contexts <= jump_at]
    seen = min((b.observed for b in run.batches if b.first + b.contexts > jump_at), default=None)
    after = [b for b in full if b.first >= jump_at and seen is not None and b.known >= seen]
    transition = [b for b in full if b not in before and b not in after]
    return {"before": before, "transition": transition, "after": after}


def cost_jump_table(runs: list[Run], count: int) -> str:
    n = LAST_BATCHES
    lines = [
        f"(2) {count:,} contexts at {JUMP_MS[0]:g} ms then {count:,} at {JUMP_MS[1]:g} ms per context, "
        f"{CALL_FIXED_MS:g} ms per call, dynamic 10..2000, target {TARGET_SECONDS:g} s; "
        "wall s = a batch's claim-to-written seconds as the sizer observed them",
        "",
        f"| run | s | batches before / transition / after | before, last {n}: size; wall s median (min..max) "
        f"| transition: sizes; wall s | after, last {n}: size; wall s median (min..max) |",
        "| ---: | ---: | --- | --- | --- | --- |",
    ]
    for i, run in enumerate(runs, 1):
        parts = phases(run, count)
        before, middle, after = parts["before"][-n:], parts["transition"], parts["after"][-n:]
        sizes = ", ".join(str(b.size) for b in middle)
        walls = ", ".join(f"{b.wall_seconds:.1f}" for b in middle)
        counts = " / ".join(str(len(parts[name])) for name in ("before", "transition", "after"))
        lines.append(
            f"| {i} | {run.seconds:.1f} | {counts} | {_summary(before)} | {sizes}; {walls} | {_summary(after)} |"
        )
    return "\n".join(lines)


def _summary(batches: list[Batch]) -> str:
    """'295; 3.09 (2.88..4.15)': the median size, and the median and range of the wall seconds."""
    if not batches:
        return "-"
    walls = [b.wall_seconds for b in batches]
    size = statistics.median(b.size for b in batches)
    return f"{size:.0f}; {statistics.median(walls):.2f} ({min(walls):.2f}..{max(walls):.2f})"


def jump_log(run: Run, count: int) -> str:
    """The decisions around the jump, for the reader who wants to see the controller react."""
    parts = phases(run, count)
    start = max(1, (parts["transition"][0].seq if parts["transition"] else 1) - 2)
    by_seq = {b.seq: b for b in run.batches}
    lines = [f"decisions of run 1 from batch {start} (wall s as observed; * holds expensive contexts):"]
    for decision in run.decisions[start - 1 : start + 14]:
        batch = by_seq.get(decision.batch)
        wall = f"{batch.wall_seconds:5.2f} s" if batch and batch.contexts else "   -   "
        mark = "*" if batch and batch.first + batch.contexts > count else " "
        lines.append(f"  {decision.batch:3d} {decision.size:5d} {wall} {mark} {decision.reason}")
    counts = Counter(run.sizes)
    lines.append(f"sizes used: {len(counts)}; most used: {counts.most_common(3)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, default=20_000, help="contexts for the dynamic sizer in (1)")
    parser.add_argument("--jump-contexts", type=int, default=8000, help="contexts on each side of the jump in (2)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mongo-uri", help="Measure against this server instead of a private embedded one.")
    parser.add_argument("--only", choices=("best", "jump"), help="run one of the two workloads")
    args = parser.parse_args(argv)
    with (
        server(args.mongo_uri) as (uri, _),
        LocalCluster(n_workers=1, threads_per_worker=THREADS, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        if args.only != "jump":
            print(best_size_table(best_size(uri, client, args.contexts, args.repeat)), flush=True)
            print()
        if args.only != "best":
            jumps = cost_jump(uri, client, args.jump_contexts, args.repeat)
            print(cost_jump_table(jumps, args.jump_contexts))
            print()
            print(jump_log(jumps[0], args.jump_contexts))


if __name__ == "__main__":
    main()
