"""Engines that simulate an external service: the shape of an engine that waits rather than computes.

- `call_service` (alias `service`): an async call per context taking `payload["latency_ms"]`, else
  `$CTXBATCH_SERVICE_LATENCY_MS`, else 20 ms; many run at once, up to `engine_concurrency`.
- `batched_call` (alias `batched-call`): a batch engine whose call costs a fixed
  `$CTXBATCH_CALL_FIXED_MS` (default 50) plus `$CTXBATCH_CALL_PER_CONTEXT_MS` (default 2) per context,
  so larger batches amortise the fixed cost; the sizing benchmark measures that trade-off. It sleeps,
  so several calls run in parallel in a worker's threads.

Both fail a payload with `"fail": true`, as a service refusing a request would. The environment is read
at each call, so a benchmark can change the costs between runs without restarting workers it started.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pandas as pd

from ctxbatch import CriticalError, batch_engine

DEFAULT_LATENCY_MS = 20.0
DEFAULT_CALL_FIXED_MS = 50.0
DEFAULT_CALL_PER_CONTEXT_MS = 2.0


def _env_ms(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        # Misconfiguration fails every row alike: stop the batch rather than blame each context.
        raise CriticalError(f"{name}={raw!r} is not a number of milliseconds >= 0")
    return value


class ServiceRefused(Exception):
    """Raised by the simulated service for a payload that asks to fail."""


async def call_service(payload: dict[str, Any]) -> dict[str, Any]:
    """Wait the service's latency, then answer as the service would."""
    latency = payload.get("latency_ms")
    if latency is None:
        latency = _env_ms("CTXBATCH_SERVICE_LATENCY_MS", DEFAULT_LATENCY_MS)
    if not isinstance(latency, int | float) or isinstance(latency, bool) or latency < 0:
        raise ValueError(f"'latency_ms' must be a number >= 0, got {latency!r}")
    await asyncio.sleep(latency / 1000)
    if payload.get("fail"):
        raise ServiceRefused("the service refused the request ('fail' is true)")
    return {"ok": True, "latency_ms": latency, "keys": sorted(payload)}


@batch_engine
def batched_call(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """One simulated call for the whole partition: a fixed cost plus a cost per context."""
    fixed = _env_ms("CTXBATCH_CALL_FIXED_MS", DEFAULT_CALL_FIXED_MS)
    per_context = _env_ms("CTXBATCH_CALL_PER_CONTEXT_MS", DEFAULT_CALL_PER_CONTEXT_MS)
    time.sleep((fixed + per_context * len(frame)) / 1000)
    refused = [i for i, payload in zip(frame["id"], frame["payload"], strict=True) if payload.get("fail")]
    if refused:
        # A whole call fails for one bad request, as batch APIs often do; bisection finds the culprits.
        raise ServiceRefused(f"the service refused {len(refused)} request(s), e.g. context {refused[0]}")
    return [{"ok": True, "batch_size": len(frame)} for _ in range(len(frame))]
