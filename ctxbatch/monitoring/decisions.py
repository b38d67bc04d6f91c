"""Every loop's sizing decisions, published to the database so the dashboard shows the whole cluster.

A loop's `report.decisions` lives in its own process; the dashboard page runs in the scheduler's and
reads the database, so each loop publishes its decisions as it makes them (the store keeps them:
io/decisions.py).
"""

from __future__ import annotations

from typing import Any

from ctxbatch.io import ContextStore
from ctxbatch.pipeline.events import RunStarted, SizingDecision, Subscriber
from ctxbatch.sizing import Decision


class DecisionLog(Subscriber):
    """Writes a loop's sizing decisions to the database (a built-in subscriber of every run)."""

    def __init__(self, store: ContextStore) -> None:
        self.store = store
        self.owner = ""

    def on_run_started(self, event: RunStarted) -> None:
        self.owner = event.owner

    def on_sizing_decision(self, event: SizingDecision) -> None:
        self.record(event.decision)

    def record(self, decision: Decision) -> None:
        self.store.record_decision(self.owner, decision.as_row())


def recent_decisions(store: ContextStore, window_seconds: float, limit: int = 500) -> list[dict[str, Any]]:
    """The newest decisions of every loop within the window, oldest first (at most `limit`)."""
    return store.recent_decisions(window_seconds, limit)
