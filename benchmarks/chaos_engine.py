"""The engine of benchmarks/chaos.py: each call appended to a file as one JSON line [tag, i]."""

from __future__ import annotations

import json
import time
from typing import Any


def record(payload: dict[str, Any]) -> dict[str, Any]:
    if payload.get("sleep"):
        time.sleep(payload["sleep"])
    # One write per call in append mode, so concurrent workers' lines never interleave.
    with open(payload["calls_file"], "a") as calls:
        calls.write(json.dumps([payload["tag"], payload["i"]]) + "\n")
    return {"i": payload["i"]}
