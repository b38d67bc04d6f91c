"""What the dashboard page shows, read from the database in one go: every loop's work, not one loop's.

`read_snapshot` makes a few cheap, index-backed reads (the stats and timeline of the monitoring
readers, the sizing decisions the loops publish, the leases in flight, the alerts' state) and
returns plain data; the page turns it into plots and a notebook may use it as it is.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ctxbatch.io import ContextStore, utcnow
from ctxbatch.io.alert_state import FIRING
from ctxbatch.io.views import InFlight
from ctxbatch.monitoring.decisions import recent_decisions


@dataclass
class Snapshot:
    at: dt.datetime
    stats: dict[str, Any]
    timeline: pd.DataFrame
    decisions: list[dict[str, Any]]
    in_flight: InFlight
    alerts: list[dict[str, Any]] = field(default_factory=list)
    # (at, batches, contexts) of the earlier snapshots of the same source, oldest first, this one last
    in_flight_history: list[tuple[dt.datetime, int, int]] = field(default_factory=list)


def batches_in_flight(store: ContextStore) -> InFlight:
    """The batches under a lease now, across every loop (ContextStore.in_flight)."""
    return store.in_flight()


def read_snapshot(
    store: ContextStore, window_seconds: float, bucket_seconds: float, timeline: pd.DataFrame | None = None
) -> Snapshot:
    """The dashboard's data over the last `window_seconds` (the timeline in buckets of `bucket_seconds`).

    Pass the `timeline` of an earlier snapshot to keep it: it is the costliest read (a sample of
    the window for its percentiles) and changes little between two refreshes.
    """
    if timeline is None:
        timeline = store.timeline(window_seconds=window_seconds, bucket_seconds=bucket_seconds)
    return Snapshot(
        at=utcnow(),
        stats=dict(store.stats(window_seconds=window_seconds)),
        timeline=timeline,
        decisions=recent_decisions(store, window_seconds),
        in_flight=batches_in_flight(store),
        alerts=firing_alerts(store),
    )


def firing_alerts(store: ContextStore) -> list[dict[str, Any]]:
    """The alerts firing now, from the state the loops that evaluate the rules keep in the database."""
    firing = [state for state in store.alert_book.states().values() if state.status == FIRING]
    return [
        {"alertname": s.name, "since": s.starts_at, "value": s.value, "loop": s.owner}
        for s in sorted(firing, key=lambda s: s.starts_at)
    ]
