"""Monitoring: metrics from the database and from every loop, alert rules, and a terminal view (issue 9);
the dashboard page (`dashboard.py`) and the sizing decisions every loop publishes for it (issue 10)."""

from ctxbatch.monitoring.database import DatabaseCollector

__all__ = ["DatabaseCollector"]
