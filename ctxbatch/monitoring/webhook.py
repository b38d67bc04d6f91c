"""Alert notifications in Alertmanager's webhook format, POSTed from a thread of their own.

The loop only ever appends to a bounded queue: a receiver that is down or slow is logged and tried
again later with a growing pause, and never stops or slows the loop. When the queue is full the
oldest notification is dropped (and said so), since newer ones describe the present.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("ctxbatch.monitoring")

RECEIVER = "ctxbatch"
# Alertmanager's "not ended yet".
NO_END = "0001-01-01T00:00:00Z"
QUEUE_LIMIT = 100
POST_TIMEOUT_SECONDS = 5.0
RETRY_PAUSES = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
CLOSE_WAIT_SECONDS = 2.0


def alertmanager_payload(
    status: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    starts_at: str,
    ends_at: str | None,
) -> dict[str, Any]:
    """One alert's change as Alertmanager's webhook body (version 4), so its consumers read ours."""
    alert = {
        "status": status,
        "labels": dict(labels),
        "annotations": dict(annotations),
        "startsAt": starts_at,
        "endsAt": ends_at or NO_END,
        "generatorURL": "",
        "fingerprint": labels["alertname"],
    }
    return {
        "version": "4",
        "groupKey": f'{{}}:{{alertname="{labels["alertname"]}"}}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": RECEIVER,
        "groupLabels": {"alertname": labels["alertname"]},
        "commonLabels": dict(labels),
        "commonAnnotations": dict(annotations),
        "externalURL": "",
        "alerts": [alert],
    }


class WebhookSender:
    """POSTs queued payloads to `url` in order, from a daemon thread; `send` never blocks."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = POST_TIMEOUT_SECONDS,
        limit: int = QUEUE_LIMIT,
        pauses: tuple[float, ...] = RETRY_PAUSES,
    ) -> None:
        self.url = url
        self.pauses = pauses
        self.delivered = 0
        self._timeout = timeout
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._limit = limit
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._deliver, name="ctxbatch-webhook", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<WebhookSender {self.url} queued={len(self._queue)} delivered={self.delivered}>"

    def send(self, payload: dict[str, Any]) -> None:
        with self._wake:
            if len(self._queue) >= self._limit:
                dropped = self._queue.popleft()
                log.warning(
                    "alert webhook: %d notifications wait; dropped the oldest (%s)",
                    len(self._queue) + 1,
                    dropped.get("status"),
                )
            self._queue.append(payload)
            self._wake.notify()

    def close(self, wait: float = CLOSE_WAIT_SECONDS) -> None:
        """Deliver what is queued for at most `wait` seconds more, then give up on the rest (logged)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(wait)
        if self._queue:
            log.warning("alert webhook: %d notifications to %s were not delivered", len(self._queue), self.url)

    def _deliver(self) -> None:
        import httpx  # here: only a run with a webhook pays for the import

        failures = 0
        with httpx.Client(timeout=self._timeout) as client:
            while True:
                with self._wake:
                    while not self._queue and not self._closing:
                        self._wake.wait()
                    if not self._queue:
                        return
                    payload = self._queue[0]
                try:
                    answer = client.post(self.url, json=payload)
                    answer.raise_for_status()
                except httpx.HTTPError as exc:
                    pause = self.pauses[min(failures, len(self.pauses) - 1)]
                    failures += 1
                    log.warning("alert webhook %s failed (%s); trying again in %g s", self.url, exc, pause)
                    with self._wake:
                        if self._closing:
                            return
                        self._wake.wait(pause)
                    continue
                failures = 0
                with self._wake:
                    if self._queue and self._queue[0] is payload:
                        self._queue.popleft()
                    self.delivered += 1
