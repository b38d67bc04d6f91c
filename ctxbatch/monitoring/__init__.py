"""Monitoring: metrics from the database and from every loop, alert rules, and a terminal view (issue 9)."""

from ctxbatch.monitoring.database import DatabaseCollector

__all__ = ["DatabaseCollector"]
