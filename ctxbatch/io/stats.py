"""Cluster-wide statistics read from the database: what every loop did, not what one loop saw.

A part of ContextStore, over its views. Every figure comes from the documents, so it is the same
whichever (and however many) loops did the work.

Cost on nx-27017 (measured in benchmarks/monitoring.py), which decides the shape of each query:
- a context finished for good carries `finished_ms`, the moment as epoch milliseconds: nx-27017
  compares a date in Python row by row, a number in SQL; and a window is a closed range (`$gte`
  and `$lte`), since a bare `$gte` falls back to Python there;
- reading any field of a document costs ~10 us a row there (SQLite parses its JSON), while a count
  over an index range reads the index alone; and every aggregate first counts the whole
  collection. So the counts are `count` commands (Views.count) over the `finished` index
  (status, finished_ms, attempts): one per status, and for `retried` one per attempt number
  k >= 2 (the contexts tried at least k times), until none is;
- the percentiles come from a `$sample` of at most SAMPLE_SIZE completed contexts of the window
  (exact below that), so their cost does not grow with the window; the sample is not projected
  (a projection after `$sample` runs in Python there);
- the tokens come from that same sample, at no further read: each sampled result's `usage`
  (io/usage.py), summed, exact up to SAMPLE_SIZE completed contexts and scaled to their count
  past it. A batch's exact total is its `usage`, summed at settle (batch_status()).

Throughput, three ways, each labelled (issue 21: a 680/s run read as 6.67/s over a 300 s window):
- `throughput_per_second`: finished / the whole window, idle time included (kept as it was: alert
  rules and users read it);
- `working_throughput_per_second` over `working_seconds`: from when the work that finished first in
  the window started (no earlier than the window) to the last finish. Not from the first finish:
  contexts finish a partition at a time, so that span leaves out the first write's work (a demo of
  3,000 read 455/s for 434/s), and a burst written at once would have none. Two reads of the
  `finished` index per status;
- `recent_throughput_per_second`: finished in the last `recent_seconds` (60), whatever the window.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING, DESCENDING

from ctxbatch.config import STATS_WINDOW_SECONDS
from ctxbatch.display import html_table
from ctxbatch.io.connection import Connection
from ctxbatch.io.schema import Status, epoch_ms, utcnow
from ctxbatch.io.schema import eq as _eq
from ctxbatch.io.usage import summed, usage_of
from ctxbatch.io.views import Views

if TYPE_CHECKING:
    import pandas as pd

# A float, as every window is once checked: the CLI and the HTTP API show it as 300.0.
DEFAULT_WINDOW_SECONDS = float(STATS_WINDOW_SECONDS)
# A timeline's default span and bucket: the last hour, by the minute.
TIMELINE_WINDOW_SECONDS = 3600.0
TIMELINE_BUCKET_SECONDS = 60.0
# The span of `recent_throughput_per_second`: the pace now, whatever the window.
RECENT_SECONDS = 60.0
# Contexts behind each window's percentiles: past this, a uniform sample of the window.
SAMPLE_SIZE = 1000
# retried counts tries up to this many per context (a bound on its queries, far past any retry setting).
MAX_ATTEMPTS_COUNTED = 100
# A timeline's percentiles come from one sample of the whole window, spread over its buckets.
TIMELINE_SAMPLE_SIZE = 5000
MAX_BUCKETS = 1000
PERCENTILES = {"p50": 50, "p95": 95, "p99": 99}
TIMELINE_COLUMNS = ["completed", "failed", "throughput", "tokens_per_second", "latency_p50", "latency_p95"]


class Stats(dict[str, Any]):
    """The stats JSON (see ContextStore.stats): a plain dict, JSON-serialisable as it is; a table in Jupyter."""

    def __repr__(self) -> str:
        rate, latency = self["success_rate"], self["latency_seconds"]
        tokens = f"{self['tokens_per_second']:.1f} tokens/s, " if self["tokens"]["total"] else ""
        return (
            f"<Stats last {self['window_seconds']:g}s: {self['completed']} completed, {self['failed']} failed, "
            f"{throughput_text(self)}, {tokens}success {'-' if rate is None else f'{rate:.1%}'}, "
            f"latency p50 {latency['p50']} s p95 {latency['p95']} s, "
            f"pending {sum(self['queue_length'].values())}, in flight {self['in_flight']}>"
        )

    def _repr_html_(self) -> str:
        rate, tokens = self["success_rate"], self["tokens"]
        rows: list[tuple[str, Any]] = [
            ("window seconds", self["window_seconds"]),
            ("completed", self["completed"]),
            ("failed", self["failed"]),
            ("retried", self["retried"]),
            ("expired", self["expired"]),
            ("throughput /s, working", self["working_throughput_per_second"]),
            ("working seconds", self["working_seconds"]),
            (f"throughput /s, last {self['recent_seconds']:g} s", self["recent_throughput_per_second"]),
            ("throughput /s, whole window", self["throughput_per_second"]),
            ("tokens /s", self["tokens_per_second"]),
            ("tokens", f"{tokens['total']:,} ({tokens['input']:,} input, {tokens['output']:,} output)"),
            ("success rate", None if rate is None else f"{rate:.1%}"),
        ]
        for name in ("latency_seconds", "processing_seconds"):
            rows += [(f"{name.split('_')[0]} {p} s", v) for p, v in self[name].items()]
        rows += [(f"pending {level}", n) for level, n in self["queue_length"].items()]
        rows += [("oldest pending s", self["oldest_pending_seconds"]), ("in flight", self["in_flight"])]
        return html_table("Stats", rows)


def per_second(value: float | None) -> str:
    """A rate as people read it: `0.333/s`, `12.5/s`, `680/s`; `-/s` when there is none."""
    if value is None:
        return "-/s"
    if value >= 100:
        return f"{value:.0f}/s"
    return f"{value:.3g}/s" if value >= 1 else f"{value:.3f}/s" if value else "0/s"


def throughput_text(stats: dict[str, Any]) -> str:
    """`680/s working (2.94 s), 12/s last 60 s, 6.67/s over 300 s`: the three throughputs, each labelled."""
    seconds = stats["working_seconds"]
    span = "" if seconds is None else f" ({seconds:g} s)"
    return (
        f"{per_second(stats['working_throughput_per_second'])} working{span}, "
        f"{per_second(stats['recent_throughput_per_second'])} last {stats['recent_seconds']:g} s, "
        f"{per_second(stats['throughput_per_second'])} over {stats['window_seconds']:g} s"
    )


def _seconds(value: float) -> float:
    return round(float(value), 3)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50/p95/p99 of these seconds (linear interpolation, numpy's default); None for each when empty."""
    if not values:
        return dict.fromkeys(PERCENTILES)
    ordered = sorted(values)
    return {name: _seconds(_linear(ordered, q)) for name, q in PERCENTILES.items()}


def _linear(ordered: list[float], q: float) -> float:
    """The q-th percentile of sorted values, between the two nearest ranks (numpy's "linear", without numpy)."""
    # numpy's own arithmetic, step for step: (n - 1) * (q / 100), and the lerp from the nearer end.
    # Another order of the same sums rounds differently, and a percentile of milliseconds then lands
    # on the other side of a rounding to 3 places (one sample in 50 did).
    position = (len(ordered) - 1) * (q / 100)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    a, b, t = ordered[low], ordered[high], position - low
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t)


def _elapsed(doc: dict[str, Any], since_field: str) -> float | None:
    start, end = doc.get(since_field), doc.get("finished_at")
    if not isinstance(start, dt.datetime) or not isinstance(end, dt.datetime):
        return None
    return max((end - start).total_seconds(), 0.0)


def sampled_tokens(sample: list[dict[str, Any]], completed: int, full: bool) -> dict[str, int]:
    """The tokens of `completed` contexts, from the usage of a uniform sample of them.

    A sample that is not `full` (it held fewer than it could take) is every one of them: its sum
    is exact. A full one is scaled up to `completed`.
    """
    tokens = summed(usage_of(doc.get("result")) for doc in sample)
    if not (full and sample):
        return tokens
    return {kind: round(n * completed / len(sample)) for kind, n in tokens.items()}


def _checked_window(window_seconds: float, name: str = "window_seconds") -> float:
    if not (isinstance(window_seconds, int | float) and math.isfinite(window_seconds) and window_seconds > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {window_seconds!r}")
    return float(window_seconds)


class Statistics:
    """stats(), timeline() and what they read: throughput, success, latency (ContextStore documents each)."""

    def __init__(self, connection: Connection, views: Views) -> None:
        self.connection = connection
        self.views = views

    def _finished_between(
        self, after_ms: int, until_ms: int, batch_id: str | None, tenant: str | None = None
    ) -> dict[str, Any]:
        """Contexts finished in (after, until], in ms: a closed range (see the module's note)."""
        match: dict[str, Any] = {"finished_ms": {"$gte": after_ms + 1, "$lte": until_ms}}
        if batch_id is not None:
            match["batch_id"] = _eq(batch_id)
        if tenant is not None:
            match["tenant"] = _eq(tenant)  # read from the documents of the window
        return match

    def _outcomes(self, match: dict[str, Any], retried: bool = True) -> dict[str, int]:
        """completed, failed, and retried: the tries of those contexts beyond their first."""
        found = {"completed": 0, "failed": 0, "retried": 0}
        for status in (Status.COMPLETED.value, Status.FAILED.value):
            tried = found[status] = self.views.count({**match, "status": _eq(status)})
            attempts = 2
            # sum(attempts - 1) = the number tried at least twice + at least three times + ...
            while retried and tried and attempts <= MAX_ATTEMPTS_COUNTED:
                tried = self.views.count({**match, "status": _eq(status), "attempts": {"$gte": attempts}})
                found["retried"] += tried
                attempts += 1
        return found

    def _sample(self, match: dict[str, Any], size: int) -> list[dict[str, Any]]:
        """Up to `size` of the completed contexts matched, a uniform sample when there are more."""
        pipeline = [{"$match": {**match, "status": _eq(Status.COMPLETED.value)}}, {"$sample": {"size": size}}]
        return list(self.connection.contexts.aggregate(pipeline, batchSize=size))

    def stats(
        self, batch_id: str | None = None, window_seconds: float = DEFAULT_WINDOW_SECONDS, tenant: str | None = None
    ) -> Stats:
        window = _checked_window(window_seconds)
        if batch_id is not None:
            self.views.batch_document(batch_id)
        now = utcnow()
        after_ms = epoch_ms(now - dt.timedelta(seconds=window))
        match = self._finished_between(after_ms, epoch_ms(now), batch_id, tenant)
        outcomes = self._outcomes(match)
        expired = self.views.count({**match, "status": _eq(Status.EXPIRED.value)})
        finished = outcomes["completed"] + outcomes["failed"]
        sample = self._sample(match, SAMPLE_SIZE) if outcomes["completed"] else []
        latency = [s for s in (_elapsed(d, "created_at") for d in sample) if s is not None]
        processing = [s for s in (_elapsed(d, "started_at") for d in sample) if s is not None]
        oldest = self._first_created(Status.PENDING, batch_id, None, tenant)
        tokens = sampled_tokens(sample, outcomes["completed"], full=len(sample) >= SAMPLE_SIZE)
        working = self._working_seconds(match, after_ms, outcomes) if finished else None
        recent_after = epoch_ms(now - dt.timedelta(seconds=RECENT_SECONDS))
        recent = self._outcomes(self._finished_between(recent_after, epoch_ms(now), batch_id, tenant), retried=False)
        return Stats(
            window_seconds=window,
            completed=outcomes["completed"],
            failed=outcomes["failed"],
            retried=outcomes["retried"],
            expired=expired,
            throughput_per_second=finished / window,
            working_seconds=working,
            working_throughput_per_second=finished / working if working else None,
            recent_seconds=RECENT_SECONDS,
            recent_throughput_per_second=(recent["completed"] + recent["failed"]) / RECENT_SECONDS,
            tokens_per_second=tokens["total"] / window,
            tokens=tokens,
            success_rate=outcomes["completed"] / finished if finished else None,
            latency_seconds=percentiles(latency),
            processing_seconds=percentiles(processing),
            queue_length=self.views.queue_length(Status.PENDING, batch_id, tenant),
            oldest_pending_seconds=None if oldest is None else _seconds(max((now - oldest).total_seconds(), 0.0)),
            in_flight=sum(self.views.queue_length(Status.PROCESSING, batch_id, tenant).values()),
            queues=self.views.by_queue(batch_id, tenant),
        )

    def _working_seconds(self, match: dict[str, Any], after_ms: int, outcomes: dict[str, int]) -> float | None:
        """From when the work that finished first in the window started (not before the window) to the
        last finish; None when that is no time at all. Each end is one entry of the `finished` index."""
        contexts = self.connection.contexts
        firsts, lasts = [], []
        for status in (Status.COMPLETED.value, Status.FAILED.value):
            if outcomes[status]:
                where = {**match, "status": _eq(status)}
                times = {"finished_ms": 1, "started_at": 1, "finished_at": 1}
                firsts.append(contexts.find_one(where, times, sort=[("finished_ms", ASCENDING)]))
                lasts.append(contexts.find_one(where, {"finished_ms": 1}, sort=[("finished_ms", DESCENDING)]))
        found = [doc for doc in firsts if doc is not None]
        ends = [int(doc["finished_ms"]) for doc in lasts if doc is not None]
        if not found or not ends:  # gone from the window since it was counted (sent back by a retry)
            return None
        first = min(found, key=lambda doc: int(doc["finished_ms"]))
        # Its work's length from the server's two stamps, back from `finished_ms` (a worker's clock,
        # as every end is): no span mixes two clocks.
        worked = _elapsed(first, "started_at") or 0.0
        start_ms = max(int(first["finished_ms"]) - round(worked * 1000), after_ms)
        span = (max(ends) - start_ms) / 1000
        return _seconds(span) if span > 0 else None

    def finished_counts(self, window_seconds: float = DEFAULT_WINDOW_SECONDS) -> dict[str, int]:
        now = utcnow()
        window = _checked_window(window_seconds)
        return self._outcomes(self._finished_between(epoch_ms(now - dt.timedelta(seconds=window)), epoch_ms(now), None))

    def oldest_pending(self, batch_id: str | None = None, level: str | None = None) -> dt.datetime | None:
        return self._first_created(Status.PENDING, batch_id, level)

    def _first_created(
        self, status: Status, batch_id: str | None = None, level: str | None = None, tenant: str | None = None
    ) -> dt.datetime | None:
        query: dict[str, Any] = {"status": _eq(status.value)}
        if level is not None:
            low, high = self.views.levels[level]
            query["priority"] = {"$gte": low, "$lte": high}
        # Per queue, each from the entries of the `queue_order` index (queue, status, ..., priority,
        # created_at) alone; the oldest of the queues' firsts.
        within = self.views.within(batch_id, tenant)
        firsts = [
            self.connection.contexts.find_one({**where, **query}, {"created_at": 1}, sort=[("created_at", ASCENDING)])
            for where in within
        ]
        found = [first["created_at"] for first in firsts if first is not None]
        return min(found) if found else None

    def seconds_since_progress(self) -> float:
        now = utcnow()
        waiting = [self._first_created(status) for status in (Status.PENDING, Status.PROCESSING)]
        arrived = [when for when in waiting if when is not None]
        if not arrived:
            return 0.0
        since = epoch_ms(min(arrived))
        for status in (Status.COMPLETED, Status.FAILED):
            # The `finished` index, walked backwards from now: one entry read.
            last = self.connection.contexts.find_one(
                {"status": _eq(status.value), "finished_ms": {"$gte": since, "$lte": epoch_ms(now)}},
                {"finished_ms": 1},
                sort=[("finished_ms", DESCENDING)],
            )
            if last is not None:
                since = max(since, int(last["finished_ms"]))
        return max(epoch_ms(now) - since, 0) / 1000

    def timeline(
        self,
        batch_id: str | None = None,
        window_seconds: float = TIMELINE_WINDOW_SECONDS,
        bucket_seconds: float = TIMELINE_BUCKET_SECONDS,
    ) -> pd.DataFrame:
        window = _checked_window(window_seconds)
        bucket = _checked_window(bucket_seconds, "bucket_seconds")
        buckets = math.ceil(window / bucket)
        if buckets > MAX_BUCKETS:
            raise ValueError(f"{buckets} buckets of {bucket:g} s in {window:g} s; at most {MAX_BUCKETS}")
        if batch_id is not None:
            self.views.batch_document(batch_id)
        end_ms = epoch_ms(utcnow())
        bucket_ms = int(bucket * 1000)
        starts = [end_ms - (buckets - i) * bucket_ms for i in range(buckets)]
        # Counts per bucket: a computed group key runs in Python on nx-27017, a range count in SQL.
        rows = [self._outcomes(self._finished_between(s, s + bucket_ms, batch_id), retried=False) for s in starts]
        whole = self._finished_between(starts[0], end_ms, batch_id)
        latencies: list[list[float]] = [[] for _ in starts]
        sampled: list[list[dict[str, Any]]] = [[] for _ in starts]
        full = False
        if any(r["completed"] for r in rows):
            sample = self._sample(whole, TIMELINE_SAMPLE_SIZE)
            full = len(sample) >= TIMELINE_SAMPLE_SIZE
            for doc in sample:
                if "finished_ms" not in doc:
                    continue
                index = int(min(max((doc["finished_ms"] - starts[0] - 1) // bucket_ms, 0), buckets - 1))
                sampled[index].append(doc)
                seconds = _elapsed(doc, "created_at")
                if seconds is not None:
                    latencies[index].append(seconds)
        # A bucket's share of a full sample stands for its completed contexts.
        tokens = [sampled_tokens(docs, r["completed"], full)["total"] for docs, r in zip(sampled, rows, strict=True)]
        import pandas as pd  # here: only a timeline makes a DataFrame (see io/columns.py)

        table = pd.DataFrame(
            {
                "completed": [r["completed"] for r in rows],
                "failed": [r["failed"] for r in rows],
                "throughput": [(r["completed"] + r["failed"]) / bucket for r in rows],
                "tokens_per_second": [n / bucket for n in tokens],
                "latency_p50": [percentiles(v)["p50"] for v in latencies],
                "latency_p95": [percentiles(v)["p95"] for v in latencies],
            },
            index=pd.DatetimeIndex(pd.to_datetime(starts, unit="ms", utc=True), name="bucket"),
            columns=TIMELINE_COLUMNS,
        )
        return table.astype({"latency_p50": float, "latency_p95": float})
