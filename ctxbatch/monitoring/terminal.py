"""The stats as text: `ctxbatch stats` prints it once, `ctxbatch top` keeps it on screen.

On a terminal `top` redraws in place; into a pipe or a file it writes one line per refresh, so a
log of it reads as a time series.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any, TextIO

from ctxbatch.display import iso_time
from ctxbatch.io.stats import per_second, throughput_text

CLEAR_SCREEN = "\x1b[H\x1b[2J"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g} s" if value < 100 else f"{value:,.0f} s"


def _percentiles(values: dict[str, float | None]) -> str:
    return "  ".join(f"{name} {_seconds(v)}" for name, v in values.items())


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _rates(stats: dict[str, Any]) -> str:
    """The three throughputs as `key=value`: `rate_working=680/s working_seconds=4.41 rate_last_60s=...`."""
    seconds = stats["working_seconds"]
    return (
        f"rate_working={per_second(stats['working_throughput_per_second'])} "
        f"working_seconds={'-' if seconds is None else f'{seconds:g}'} "
        f"rate_last_{stats['recent_seconds']:g}s={per_second(stats['recent_throughput_per_second'])} "
        f"rate_window={per_second(stats['throughput_per_second'])}"
    )


def stats_lines(stats: dict[str, Any], title: str = "all batches") -> list[str]:
    """The stats JSON as a few aligned lines for a person."""
    queue = "  ".join(f"{level} {n}" for level, n in stats["queue_length"].items())
    queues = stats.get("queues") or {}
    by_queue = "  ".join(f"{name} {n['pending']}+{n['processing']}" for name, n in queues.items())
    tokens = stats["tokens"]
    return [
        f"{title}, last {stats['window_seconds']:g} s",
        f"  finished    completed {stats['completed']}  failed {stats['failed']}  retried {stats['retried']}"
        f"  expired {stats.get('expired', 0)}  (success {_rate(stats['success_rate'])})",
        f"  throughput  {throughput_text(stats)}",
        f"  tokens      input {tokens['input']}  output {tokens['output']}  total {tokens['total']}"
        f"  ({stats['tokens_per_second']:.1f}/s)",
        f"  latency     {_percentiles(stats['latency_seconds'])}",
        f"  processing  {_percentiles(stats['processing_seconds'])}",
        f"  queue       {queue}  (oldest {_seconds(stats['oldest_pending_seconds'])}, in flight {stats['in_flight']})",
        *([f"  queues      {by_queue}  (pending+processing)"] if len(queues) > 1 else []),
    ]


def stats_line(stats: dict[str, Any], now: dt.datetime | None = None) -> str:
    """The stats in one line, stamped with the time: what `top` writes when it is not on a terminal."""
    stamp = iso_time(now or dt.datetime.now(dt.UTC))
    queue = sum(stats["queue_length"].values())
    latency = stats["latency_seconds"]
    return (
        f"{stamp} completed={stats['completed']} failed={stats['failed']} retried={stats['retried']} "
        f"{_rates(stats)} tokens={stats['tokens_per_second']:.1f}/s "
        f"success={_rate(stats['success_rate'])} "
        f"p50={_seconds(latency['p50'])} p95={_seconds(latency['p95'])} "
        f"pending={queue} oldest={_seconds(stats['oldest_pending_seconds'])} in_flight={stats['in_flight']}"
    )


def top(
    read: Callable[[], dict[str, Any]],
    out: TextIO,
    interval: float,
    refreshes: int | None = None,
    title: str = "all batches",
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Show `read()` every `interval` seconds, `refreshes` times (None: until interrupted); returns how many."""
    on_terminal = out.isatty()
    shown = 0
    while refreshes is None or shown < refreshes:
        if shown:
            sleep(interval)
        stats = read()
        if on_terminal:
            stamp = iso_time(dt.datetime.now(dt.UTC))
            footer = f"\n{stamp}, every {interval:g} s; Ctrl-C to stop"
            out.write(CLEAR_SCREEN + "\n".join(stats_lines(stats, title)) + footer + "\n")
        else:
            out.write(stats_line(stats) + "\n")
        out.flush()
        shown += 1
    return shown
