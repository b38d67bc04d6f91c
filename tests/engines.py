"""Test engines at module level, so Dask can pickle them by reference (STYLE.md: Tests).

Engines that must remember something across worker processes (a first attempt, a critical error
raised once) keep it in marker files, created with O_EXCL so exactly one call wins.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import pandas as pd

from ctxbatch.errors import CriticalError
from ctxbatch.pipeline.engine import batch_engine


def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return {"echo": payload}


def fail_when_flagged(payload: dict[str, Any]) -> dict[str, Any]:
    if payload.get("bad"):
        raise ValueError(f"bad row {payload.get('i')}")
    return {"i": payload.get("i")}


async def async_fail_when_flagged(payload: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(0.001)
    if payload.get("bad"):
        raise ValueError(f"bad row {payload.get('i')}")
    return {"i": payload.get("i")}


@batch_engine
def batch_fail_when_flagged(frame: pd.DataFrame) -> list[dict[str, Any]]:
    bad = [p.get("i") for p in frame.payload if p.get("bad")]
    if bad:
        raise ValueError(f"bad rows {bad}")
    return [{"i": p.get("i")} for p in frame.payload]


def record_call(payload: dict[str, Any]) -> dict[str, Any]:
    if payload.get("sleep"):
        time.sleep(payload["sleep"])
    # One write per call in append mode, so concurrent workers' lines never interleave.
    with open(payload["calls_file"], "a") as calls:
        calls.write(f"{payload['i']}\n")
    return {"i": payload["i"]}


def _first_time(marker_dir: str, name: str) -> bool:
    """True exactly once per marker, across threads and processes."""
    try:
        fd = os.open(os.path.join(marker_dir, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def fail_first_attempt(payload: dict[str, Any]) -> dict[str, Any]:
    if _first_time(payload["marker_dir"], f"attempt-{payload['i']}"):
        raise RuntimeError(f"first attempt at row {payload['i']} fails")
    return {"i": payload["i"]}


def critical_first_time(payload: dict[str, Any]) -> dict[str, Any]:
    if _first_time(payload["marker_dir"], "critical"):
        raise CriticalError("the engine lost its backend (first time only)")
    return {"i": payload.get("i")}


def unstorable(payload: dict[str, Any]) -> Any:
    return {"i": payload.get("i"), "tags": {"a", "b"}}


def nap(payload: dict[str, Any]) -> dict[str, Any]:
    """Sleeps payload["sleep"] seconds: a row with a known cost."""
    time.sleep(payload.get("sleep", 0))
    return {"i": payload.get("i")}


def always_critical(payload: dict[str, Any]) -> dict[str, Any]:
    raise CriticalError("the service is down")


def _mark(kind: str) -> None:
    """A file per call in $CTXBATCH_TEST_MARKERS: evidence that survives the worker process."""
    name = f"{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    open(os.path.join(os.environ["CTXBATCH_TEST_MARKERS"], name), "x").close()


def with_setup(payload: dict[str, Any]) -> dict[str, Any]:
    """An engine with per-worker setup() and teardown() that leave marker files."""
    return {"i": payload.get("i")}


with_setup.setup = lambda: _mark("setup")  # type: ignore[attr-defined]
with_setup.teardown = lambda: _mark("teardown")  # type: ignore[attr-defined]


def wait_for_release(payload: dict[str, Any]) -> dict[str, Any]:
    """Blocks until the file payload["release"] exists (at most 60 s): a stalled engine, on demand."""
    deadline = time.monotonic() + 60
    while not os.path.exists(payload["release"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"i": payload.get("i")}


def nap_then_fail_when_flagged(payload: dict[str, Any]) -> dict[str, Any]:
    """nap(), then fail_when_flagged(): slow enough rows for several loops to share them."""
    nap(payload)
    return fail_when_flagged(payload)
