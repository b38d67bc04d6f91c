"""Monitoring: metrics from the database and from every loop, alert rules, and a terminal view (issue 9);
the dashboard page (`dashboard.py`) and the sizing decisions every loop publishes for it (issue 10)."""

from ctxbatch.monitoring.alerts import AlertEvaluator, AlertMonitor, AlertsCollector
from ctxbatch.monitoring.database import DatabaseCollector
from ctxbatch.monitoring.metrics import METRIC_NAMES, LoopMetrics, LoopMonitor
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
