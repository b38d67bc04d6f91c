"""Watching a run: the dashboard page, the sizing decisions every loop publishes to the database."""

from ctxbatch.monitoring.decisions import DecisionLog, recent_decisions

__all__ = ["DecisionLog", "recent_decisions"]
