"""Monitoring: metrics from the database and from every loop, alert rules, and a terminal view (issue 9)."""

from ctxbatch.monitoring.alerts import AlertEvaluator, AlertMonitor, AlertsCollector
from ctxbatch.monitoring.database import DatabaseCollector
from ctxbatch.monitoring.loop import METRIC_NAMES, LoopMetrics, LoopMonitor
from ctxbatch.monitoring.webhook import WebhookSender, alertmanager_payload

__all__ = [
    # Metrics
    "METRIC_NAMES",
    "DatabaseCollector",
    "LoopMetrics",
    "LoopMonitor",
    # Alerts
    "AlertEvaluator",
    "AlertMonitor",
    "AlertsCollector",
    "WebhookSender",
    "alertmanager_payload",
]
