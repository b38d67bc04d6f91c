"""`echo`: the trivial engine; the pipeline benchmark uses it to measure everything but the engine."""

from __future__ import annotations

from typing import Any


def echo(payload: dict[str, Any]) -> dict[str, Any]:
    """{"ok": True, "n": the number of keys in the payload}."""
    return {"ok": True, "n": len(payload)}
