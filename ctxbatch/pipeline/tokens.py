"""A call's token cost: estimated before it is sent, corrected from the `usage` its answer reports.

Under `limits.tokens_per_minute` each call is charged its estimate before it starts: the engine's
optional `tokens(payload) -> int` (looked up on the engine as `setup` is), else `estimate_tokens`
of the payload. The answer's `usage.total_tokens` (OpenAI's shape, at the top or in its `body`) then
corrects the charge: the difference is charged or given back. Without usage the estimate stands.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ctxbatch.io.usage import usage_of

CHARS_PER_TOKEN = 4  # OpenAI's rule of thumb for English text
TEXT_FIELDS = ("messages", "prompt", "input")


def estimate_tokens(body: Any) -> int:
    """Tokens a completion request may cost: its `max_tokens` (or `max_completion_tokens`) plus its text / 4.

    The text is what `messages` (each message's `content`: a string or a list of parts with `text`),
    `prompt` and `input` (a string or a list of strings) hold. At least 1, rounded up; a body that is
    no mapping costs its length in characters / 4.
    """
    if not isinstance(body, dict):
        return max(1, math.ceil(_chars(body) / CHARS_PER_TOKEN))
    completion = body.get("max_tokens", body.get("max_completion_tokens"))
    answer = completion if isinstance(completion, int | float) and not isinstance(completion, bool) else 0
    chars = sum(_chars(body.get(name)) for name in TEXT_FIELDS)
    return max(1, math.ceil(answer + chars / CHARS_PER_TOKEN))


def _chars(value: Any) -> int:
    """Characters of text in a field: strings, lists of them, messages' `content`, parts' `text`."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(item) for item in value)
    if isinstance(value, dict):
        return _chars(value.get("content")) + _chars(value.get("text"))
    return 0


def token_estimator(engine_fn: Any) -> Callable[[Any], int]:
    """The engine's own `tokens(payload)` when it has one, else `estimate_tokens`."""
    own = getattr(engine_fn, "tokens", None)
    return own if callable(own) else estimate_tokens


def used_tokens(result: Any) -> int | None:
    """The total tokens a call's answer reports (`usage_of`); None when it reports none."""
    usage = usage_of(result)
    return None if usage is None else usage["total"]
