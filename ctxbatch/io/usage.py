"""The tokens a result reports it used (OpenAI's `usage`), read in one place for the store and the loop.

In `io/` so that the store (which sums usage per batch at settle) and the pipeline (the loop's token
metrics, the budget's correction) read it the same way without `io/` importing the pipeline.
Shapes read:
- a plain answer with `usage`: chat completions and completions (`prompt_tokens`,
  `completion_tokens`, `total_tokens`), embeddings (`prompt_tokens`, `total_tokens`), the
  Responses API (`input_tokens`, `output_tokens`, `total_tokens`);
- a batch-line response, `{"status_code", "request_id", "body": <one of those answers>}`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

KINDS = ("input", "output", "total")
# OpenAI's names for each kind: chat/completions/embeddings first, then the Responses API's.
_NAMES = {"input": ("prompt_tokens", "input_tokens"), "output": ("completion_tokens", "output_tokens")}


def no_usage() -> dict[str, int]:
    """Zero of each kind: what a batch or a window without usage shows."""
    return dict.fromkeys(KINDS, 0)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _first(usage: Mapping[str, Any], names: Iterable[str]) -> int | None:
    return next((n for n in (_count(usage.get(name)) for name in names) if n is not None), None)


def usage_of(result: Any) -> dict[str, int] | None:
    """`{"input", "output", "total"}` tokens of a result in one of the module's shapes; None without usage.

    A kind the answer leaves out counts 0 (embeddings have no output); a missing total is input +
    output. Counts that are not non-negative integers are no usage.
    """
    if not isinstance(result, Mapping):
        return None
    usage = result.get("usage")
    if usage is None and "status_code" in result and isinstance(result.get("body"), Mapping):
        usage = result["body"].get("usage")
    if not isinstance(usage, Mapping):
        return None
    found = {kind: _first(usage, names) for kind, names in _NAMES.items()}
    total = _count(usage.get("total_tokens"))
    if total is None and all(n is None for n in found.values()):
        return None
    counted = {kind: n or 0 for kind, n in found.items()}
    return {**counted, "total": counted["input"] + counted["output"] if total is None else total}


def summed(usages: Iterable[Mapping[str, int] | None]) -> dict[str, int]:
    """Each kind summed over these usages (None counts nothing)."""
    total = no_usage()
    for usage in usages:
        for kind in KINDS:
            total[kind] += usage.get(kind, 0) if usage else 0
    return total


def usage_by_batch(results: Mapping[str, Any], batch_of: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """The usage of these results (context id -> result) summed per batch; batches without usage left out."""
    found: dict[str, list[dict[str, int]]] = {}
    for cid, result in results.items():
        usage = usage_of(result)
        if usage is not None and cid in batch_of:
            found.setdefault(batch_of[cid], []).append(usage)
    return {batch_id: summed(usages) for batch_id, usages in found.items()}
