"""Monitoring: metrics from the database and from every loop, alert rules, a terminal view (issue 9);
the dashboard page and the sizing decisions every loop publishes for it (issue 10)."""

from ctxbatch.monitoring.database import DatabaseCollector
from ctxbatch.monitoring.decisions import DecisionLog, recent_decisions

__all__ = ["DatabaseCollector", "DecisionLog", "recent_decisions"]
